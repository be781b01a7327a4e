"""Terminal output with rich: the layer table, findings, the InitPlan and LSUV tables, progress.

Width, colour and TTY detection are arguments of :func:`console`, so tests render at a
fixed width with colour off and get byte-stable text. Progress bars animate only on an
interactive terminal outside CI. Model-provided strings are passed as ``Text``, never
parsed as rich markup.

Examples:
    >>> import io, torch
    >>> from torch import nn
    >>> from initscope.probe import probe
    >>> buf = io.StringIO()
    >>> c = console(buf, width=80, color=False)
    >>> c.print(layer_table(probe(nn.Sequential(nn.Linear(3, 2)), torch.ones(4, 3))))
    >>> "Linear" in buf.getvalue()
    True
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from initscope.report.rows import layer_rows, severity_counts, split

if TYPE_CHECKING:
    from initscope.diagnose import Finding
    from initscope.initplan import InitPlan
    from initscope.lsuv import LsuvReport
    from initscope.probe import Trace

__all__ = ["console", "in_ci", "table", "layer_table", "findings_block", "plan_table", "lsuv_table", "progress", "g"]

_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to anything but 0/false/no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def console(file: TextIO | None = None, *, width: int | None = None, color: bool | None = None,
            tty: bool | None = None) -> Any:
    """A rich Console writing to ``file``.

    Args:
        file: the stream (default stdout).
        width: columns; None asks the terminal (or ``COLUMNS``); 120 for a file or pipe.
        color: True, False, or None for automatic (terminals only; ``NO_COLOR`` turns it off).
        tty: whether ``file`` is an interactive terminal (progress bars animate); None detects it.
    """
    from rich.console import Console

    force = tty if tty is not None else (True if color else None)
    stream = file or sys.stdout
    if width is None and "COLUMNS" not in os.environ and not (tty or getattr(stream, "isatty", lambda: False)()):
        width = 120  # logs and pipes do not wrap: rich would assume 80
    return Console(file=file, width=width, color_system=None if color is False else ("standard" if color else "auto"),
                   force_terminal=force, force_interactive=tty, highlight=False, markup=False, emoji=False,
                   no_color=False if color else None)


def g(value: float | None, spec: str = ".3g", unit: str = "") -> str:
    """A number for a table cell; "-" for None or NaN.

    Examples:
        >>> g(0.000123456), g(float("nan")), g(45.6, ".0f", "%")
        ('0.000123', '-', '46%')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{format(value, spec)}{unit}"


def table(title: str | None, columns: Sequence[tuple[str, str]], wrap: Sequence[str] = (),
          min_width: dict[str, int] | None = None) -> Any:
    """An empty rich Table in the house style: (name, justify) columns; only those named in
    ``wrap`` break long text over lines, the others keep their width (``min_width`` per name)."""
    from rich import box
    from rich.table import Table

    out = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False, header_style="bold")
    for name, justify in columns:
        out.add_column(name, justify=justify, overflow="fold", no_wrap=name not in wrap,
                       min_width=(min_width or {}).get(name))
    return out


def _cells(values: Sequence[str]) -> list[Any]:
    from rich.text import Text

    return [Text(str(v)) for v in values]


def layer_table(trace: Trace, title: str | None = None) -> Any:
    """One row per layer call: name, type, shape, forward mean and std, dead %, gradient std, flags."""
    t = table(title, [("layer", "left"), ("type", "left"), ("shape", "left"), ("mean", "right"),
                           ("std", "right"), ("dead", "right"), ("grad std", "right"), ("flags", "left")],
              wrap=("layer", "flags"))
    for r in layer_rows(trace):
        t.add_row(*_cells([r.label, r.type, r.shape, g(r.mean), g(r.std), g(r.dead_pct, ".0f", "%"),
                               g(r.grad_std), ", ".join(r.flags)]), style=_STYLE.get(r.severity or "", ""))
    return t


def findings_block(findings: Sequence[Finding], title: str = "Findings") -> Any:
    """The findings in plain words: severity, where, what was seen, then the fix."""
    from rich.console import Group
    from rich.padding import Padding
    from rich.text import Text

    counts = severity_counts(list(findings))
    parts = [f"{n} {'note' if s == 'info' else s}{'s' * (n != 1)}" for s, n in counts.items() if n]
    head = Text(f"{title}: {', '.join(parts)}" if parts else f"{title}: none; activations and gradients look healthy",
                style="bold")
    items: list[Any] = [head]
    for f in findings:
        seen, fix = split(f)
        label = "note" if f.severity == "info" else f.severity
        line = Text(f"{label.upper():8}", style=_STYLE[f.severity])
        line.append(f" {'whole network' if f.layer is None else f.layer}: {f.kind}")
        items.append(Padding(line, (0, 0, 0, 2), expand=False))
        items.append(Padding(Text(seen), (0, 0, 0, 4), expand=False))
        if fix:
            items.append(Padding(Text(f"fix: {fix}", style="green"), (0, 0, 0, 4), expand=False))
    return Group(*items)


def plan_table(plan: InitPlan) -> Any:
    """The InitPlan: one row per parameter block, with the reason (which names the activation
    the gain came from; ``repr(plan)`` and the HTML report also list what runs before and after)."""
    t = table(f"InitPlan: scheme={plan.scheme}, mode={plan.mode}, distribution={plan.distribution}, "
              f"residual={plan.residual}, seed={plan.seed}, discovery={plan.discovery}",
              [("parameter", "left"), ("type", "left"), ("shape", "left"), ("fan", "right"), ("gain", "right"),
               ("std", "right"), ("dist", "left"), ("reason", "left")], wrap=("type", "reason"), min_width={"reason": 20})
    for r in plan.rows:
        block = f"[{r.block}]" if r.block != r.name.rsplit(".", 1)[-1] else ""
        std = g(r.std, ".4g") if r.bound is None else f"b={g(r.bound, '.4g')}"
        t.add_row(*_cells([r.name + block, r.layer_type, "x".join(map(str, r.shape)), g(r.fan, ".4g"),
                           g(r.gain, ".4g"), std, r.distribution, r.reason]))
    for u in plan.untouched:
        t.add_row(*_cells([u.name, "", "x".join(map(str, u.shape)), "", "", "", "untouched", u.reason]))
    return t


def lsuv_table(report: LsuvReport) -> Any:
    """What LSUV measured and did at each scaled weight."""
    t = table(report.summary(), [("layer", "left"), ("type", "left"), ("std before", "right"),
                                      ("scale", "right"), ("std after", "right"), ("mean after", "right"),
                                      ("note", "left")], wrap=("layer", "note"))
    for r in report.layers:
        t.add_row(*_cells([r.name, r.layer_type, g(r.std_before), g(r.scale), g(r.std_after), g(r.mean_after),
                               r.note]))
    return t


@contextlib.contextmanager
def progress(con: Any, total: int, label: str, enabled: bool | None = None) -> Iterator[Callable[[str], None]]:
    """Yield ``advance(description)``, called once per finished step.

    A rich bar on ``con`` while ``enabled`` (default: ``con`` is interactive and not in CI);
    anything printed to ``con`` meanwhile appears above the bar, which vanishes at the end.
    Otherwise ``advance`` does nothing: no animation in logs.
    """
    if enabled is None:
        enabled = con.is_interactive and not in_ci()
    if not enabled:
        yield lambda description="": None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=con, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda description="": bar.update(task, advance=1, description=description or label)
