"""The self-contained HTML report, and the ``_repr_html_`` fragments for Jupyter.

One file: CSS and JS inlined (:mod:`~initscope.report.assets`), charts as SVG
(:mod:`~initscope.report.svg`), the raw data as JSON in a ``<script type="application/json">``
with ``<``, ``>`` and ``&`` written as ``\\u003c`` etc., so no ``</script>`` can close it early.
Nothing is fetched; the page opens from ``file://``. Every model-provided string is escaped.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> from initscope.probe import probe
    >>> net = nn.Sequential()
    >>> net.add_module("<script>alert(1)</script>", nn.Linear(4, 4))
    >>> page = report_html("probe", [Run("as built", probe(net, torch.randn(8, 4)))])
    >>> "<script>alert(1)" in page, page.count("<svg")
    (False, 4)
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from initscope._render import register_html
from initscope.report.assets import CSS, JS
from initscope.report.experiment import experiment_block
from initscope.report.rows import METRICS, metric_points, severity_counts
from initscope.report.svg import PALETTE, Series, log_chart
from initscope.report.tables import esc, findings_list, layer_table, lsuv_table, num, pct, plan_table, table

if TYPE_CHECKING:
    from initscope.initplan import InitPlan
    from initscope.lsuv import LsuvReport
    from initscope.probe import Trace

__all__ = ["Run", "report_html", "write_report", "trace_html", "plan_html", "lsuv_html", "result_html", "data_json",
           "jsonable"]


@dataclass(frozen=True)
class Run:
    """One probed model state: a label (the init), its trace, and the init record if any."""

    label: str
    trace: Trace
    plan: InitPlan | None = None
    lsuv: LsuvReport | None = None


def data_json(obj: Any) -> str:
    """Strict, compact JSON safe inside a ``<script>``: NaN/inf become null, floats keep 7
    significant digits, arrays become lists, histograms ``{"start": i, "counts": [...]}`` (the
    nonzero span of the 258 bins).

    Examples:
        >>> data_json({"a": float("nan"), "b": "</script>", "hist": [0, 0, 3, 1, 0]})
        '{"a":null,"b":"\\\\u003c/script\\\\u003e","hist":{"start":2,"counts":[3,1]}}'
    """
    text = json.dumps(jsonable(obj, compact=True), separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def jsonable(obj: Any, compact: bool = False, key: str = "") -> Any:
    """Plain JSON types: arrays to lists, NaN/inf to None; ``compact`` also rounds floats to 7
    significant digits and keeps the nonzero span of histograms (see :func:`data_json`).

    Examples:
        >>> jsonable({"x": (1.0, float("inf"))})
        {'x': [1.0, None]}
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v, compact, str(k)) for k, v in obj.items()}
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
    if isinstance(obj, (list, tuple)):
        if compact and key == "hist" and obj and all(isinstance(v, int) for v in obj):
            nz = [i for i, v in enumerate(obj) if v]
            return {"start": nz[0], "counts": list(obj[nz[0]:nz[-1] + 1])} if nz else {"start": 0, "counts": []}
        return [jsonable(v, compact) for v in obj]
    if isinstance(obj, float):
        return (float(f"{obj:.7g}") if compact else obj) if math.isfinite(obj) else None
    return obj


def _toggles(keys: Sequence[tuple[str, str, str]], label: str) -> str:
    buttons = "".join(f'<button class="tog" data-k="{esc(k)}" aria-pressed="true"><span class="sw" '
                      f'style="background:{c}"></span>{esc(text)}</button>' for k, text, c in keys)
    return f'<div class="toggles"><span class="lbl">{esc(label)}</span>{buttons}</div>'


def _charts(runs: Sequence[Run]) -> str:
    figs = []
    for metric, (title, y_label, unit, floor, which) in METRICS.items():
        series = []
        for i, run in enumerate(runs):
            color = PALETTE[i % len(PALETTE)]
            for j, pts in enumerate(metric_points(run.trace, metric)):  # j = 1: the gradients' line, dashed
                series.append(Series(f"run{i}", run.label + " (gradient)" * j, color, tuple(pts), dash=bool(j)))
        x_label = "weight layer, in execution order" if which == "weight" else "activation layer, in execution order"
        figs.append(log_chart(title, series, x_label=x_label, y_label=y_label, unit=unit, floor=floor))
    return f'<div class="charts">{"".join(figs)}</div>'


def _ends(trace: Trace, source: str) -> tuple[float, float]:
    stds = [getattr(r, source).std for r in trace.layers if r.weight_layer and getattr(r, source) is not None
            and getattr(r, source).count]
    return (stds[0], stds[-1]) if stds else (math.nan, math.nan)


def _comparison(runs: Sequence[Run]) -> str:
    head = (("init", "text"), ("loss", "num"), ("fwd std, first", "num"), ("fwd std, last", "num"),
            ("grad std, first", "num"), ("grad std, last", "num"), ("worst dead", "num"), ("errors", "num"),
            ("warnings", "num"), ("notes", "num"))
    rows = []
    for run in runs:
        (f0, f1), (g0, g1) = _ends(run.trace, "forward"), _ends(run.trace, "backward")
        dead = [r.forward.dead_frac * 100 for r in run.trace.layers if r.forward is not None
                and not math.isnan(r.forward.dead_frac)]
        c = severity_counts(run.trace.findings)
        rows.append(f"<tr><td>{esc(run.label)}</td>{num(run.trace.loss)}{num(f0)}{num(f1)}{num(g0)}{num(g1)}"
                    f"{pct(max(dead) if dead else None)}{num(c['error'], 'd')}{num(c['warning'], 'd')}"
                    f"{num(c['info'], 'd')}</tr>")
    return table(head, rows, "compare")


def _panel(run: Run, pid: str, on: bool) -> str:
    parts = [f"<h3>Findings</h3>{findings_list(run.trace.findings, run.trace)}"]
    if run.plan is not None:
        parts.append(f"<details><summary>InitPlan ({len(run.plan.rows)} rows)</summary>{plan_table(run.plan)}</details>")
    if run.lsuv is not None:
        parts.append(f"<details><summary>LSUV ({len(run.lsuv.layers)} layers)</summary>{lsuv_table(run.lsuv)}</details>")
    parts.append(f"<h3>Layers ({len(run.trace.layers)} calls)</h3>{layer_table(run.trace)}")
    parts += [f"<p><i>note:</i> {esc(n)}</p>" for n in run.trace.notes]
    return f'<div class="panel{" on" if on else ""}" id="{pid}">{"".join(parts)}</div>'


def runs_block(runs: Sequence[Run], prefix: str = "r") -> str:
    """Charts of every run (toggled together by run), a comparison table, and a tab per run."""
    keys = [(f"run{i}", r.label, PALETTE[i % len(PALETTE)]) for i, r in enumerate(runs)]
    head = _toggles(keys, "Show:") if len(runs) > 1 else ""
    compare = _comparison(runs) if len(runs) > 1 else ""
    tabs = "".join(f'<button data-tab="{prefix}-{i}"{" class=on" if i == 0 else ""}>{esc(r.label)}</button>'
                   for i, r in enumerate(runs))
    panels = "".join(_panel(r, f"{prefix}-{i}", i == 0) for i, r in enumerate(runs))
    bar = f'<div class="tabs">{tabs}</div>' if len(runs) > 1 else ""
    return f'<div data-toggles>{head}{_charts(runs)}</div>{compare}<div class="runs">{bar}{panels}</div>'


def _fragment(body: str) -> str:
    """A notebook fragment: styles, no script (notebooks rarely run one), so every panel shows
    and points keep the browser's own tooltips."""
    return f'<div class="initscope"><style>{CSS}</style>{body}</div>'


def report_html(title: str, runs: Sequence[Run] = (), *, experiments: Sequence[Any] = (),
                summary: Sequence[str] = (), subtitle: str = "", sections: Sequence[tuple[str, str, str]] = (),
                runs_heading: str = "Layers", runs_lead: str = "") -> str:
    """The whole report page.

    Args:
        title: the page title. runs: probed states to compare (toggles and tabs when several).
        experiments: experiment results; ``udl`` gets interactive charts with theory, any other a
            summary table and its PNG. summary: lines under the title. subtitle: a line under it.
        sections: extra (id, heading, html) sections, placed after the runs. The contents bar
            shows each heading up to its first colon.
        runs_heading, runs_lead: the heading and introduction of the runs section.
    """
    blocks = [(f"exp{i}", *experiment_block(r)) for i, r in enumerate(experiments)]
    if runs:
        lead = f'<p class="lead">{esc(runs_lead)}</p>' if runs_lead else ""
        blocks.append(("runs", runs_heading, lead + runs_block(runs)))
    blocks += list(sections)
    data = {"title": title, "runs": [{"label": r.label, "trace": r.trace.to_dict(),
                                      "plan": r.plan and r.plan.to_dict(), "lsuv": r.lsuv and r.lsuv.to_dict()}
                                     for r in runs],
            "experiments": [r.to_dict() for r in experiments]}
    blocks.append(("data", "Raw data", '<p class="lead">Everything above, as JSON: numbers to 7 significant digits, '
                   'histograms as the nonzero span of their 258 log2 bins, <code>{"start", "counts"}</code>. '
                   '<code>initscope probe --json</code> writes the full-precision form.</p>'
                   '<button id="is-download">Download initscope-data.json</button>'))
    toc = "".join(f'<a href="#{bid}">{esc(h.split(":")[0])}</a>' for bid, h, _ in blocks)
    lines = "".join(f"<li>{esc(s)}</li>" for s in summary)
    from initscope import __version__

    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><title>{esc(title)}</title><style>{CSS}</style></head>'
            f'<body class="initscope"><header class="top"><div><h1>{esc(title)}</h1>'
            + (f"<p>{esc(subtitle)}</p>" if subtitle else "")
            + (f'<ul class="summary">{lines}</ul>' if lines else "") + f'<nav class="toc">{toc}</nav></div></header><main>'
            + "".join(f'<section class="card" id="{bid}"><h2>{esc(h)}</h2>{body}</section>' for bid, h, body in blocks)
            + f'<footer>initscope {esc(__version__)}: one self-contained file; nothing is fetched.</footer></main>'
            f'<script type="application/json" id="initscope-data">{data_json(data)}</script>'
            f"<script>{JS}</script></body></html>")


def write_report(path: str | os.PathLike, page: str) -> Path:
    """Write ``page`` to ``path`` (parent directories created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def trace_html(trace: Trace) -> str:
    """``Trace._repr_html_``: the four charts, findings and the layer table."""
    return _fragment(runs_block([Run("trace", trace)], prefix=f"t{id(trace):x}"))


def plan_html(plan: InitPlan) -> str:
    """``InitPlan._repr_html_``."""
    return _fragment(plan_table(plan))


def lsuv_html(report: LsuvReport) -> str:
    """``LsuvReport._repr_html_``."""
    return _fragment(lsuv_table(report))


def result_html(result: Any) -> str:
    """An experiment result's ``_repr_html_``: its heading, charts or figure, and summary."""
    heading, body = experiment_block(result)
    return _fragment(f"<h3>{esc(heading)}</h3>{body}")


register_html("trace", trace_html)
register_html("plan", plan_html)
register_html("lsuv", lsuv_html)
register_html("experiment", result_html)
