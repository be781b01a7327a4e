"""HTML tables and the findings list: the layer table, InitPlan and LSUV tables, findings.

Every string that comes from a model (layer names, types, messages) goes through
:func:`esc`. Numeric cells carry their raw value in ``data-v`` so the script sorts them as
numbers; headers with ``data-sort`` are clickable.
"""
from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from initscope.report.explain import explain
from initscope.report.rows import layer_rows, split

if TYPE_CHECKING:
    from initscope.diagnose import Finding
    from initscope.initplan import InitPlan
    from initscope.lsuv import LsuvReport
    from initscope.probe import Trace

__all__ = ["esc", "num", "pct", "table", "layer_table", "plan_table", "lsuv_table", "findings_list"]


def esc(value: object) -> str:
    """HTML-escape ``str(value)``, quotes included.

    Examples:
        >>> esc("<script>alert('x')</script>")
        '&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;'
    """
    return html.escape(str(value), quote=True)


def num(value: float | None, spec: str = ".3g", unit: str = "") -> str:
    """A numeric cell: the formatted value, and in ``data-v`` the value to 7 significant digits
    (for sorting); "-" for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td class="num" data-v="">-</td>'
    return f'<td class="num" data-v="{float(value):.7g}">{format(value, spec)}{unit}</td>'


def pct(value: float | None) -> str:
    """A percentage cell: whole percents from 10%, one decimal from 1%, two digits below.

    Examples:
        >>> [pct(v).split(">")[1].split("<")[0] for v in (100.0, 4.3, 0.0123, 0.0)]
        ['100%', '4.3%', '0.012%', '0%']
    """
    if value is None or math.isnan(value):
        return num(None)
    spec = ".0f" if value >= 10 or value == 0 else ".1f" if value >= 1 else ".2g"
    return num(value, spec, "%")


def table(head: Sequence[tuple[str, str]], rows: Sequence[str], cls: str = "", scroll: bool = False) -> str:
    """A sortable table. ``head``: (label, "num" | "text" | "") pairs; ``rows``: ``<tr>`` markup."""
    ths = "".join(f'<th{" class=num" if kind == "num" else ""}{f" data-sort={kind}" if kind else ""}>{esc(label)}</th>'
                  for label, kind in head)
    out = f'<table{f" class={cls}" if cls else ""}><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    return f'<div class="scroll">{out}</div>' if scroll else out


def _text(value: object, cls: str = "") -> str:
    return f'<td{f" class={cls}" if cls else ""}>{esc(value)}</td>'


_LAYER_HEAD = (("#", "num"), ("layer", "text"), ("type", "text"), ("shape", "text"), ("mean", "num"),
               ("std", "num"), ("zeros", "num"), ("dead", "num"), ("grad std", "num"),
               ("fp16 under", "num"), ("grad fp16 under", "num"), ("flags", "text"))


def layer_table(trace: Trace) -> str:
    """One sortable row per layer call; rows a finding names are tinted by its severity."""
    rows = []
    for r in layer_rows(trace):
        flags = "".join(f'<span class="flag">{esc(f)}</span>' for f in r.flags)
        cls = f' class="sev-{r.severity}"' if r.severity in ("error", "warning") else ""
        rows.append(f"<tr{cls}>{num(r.index, 'd')}{_text(r.label)}{_text(r.type)}{_text(r.shape)}"
                    f"{num(r.mean)}{num(r.std)}{pct(r.zero_pct)}{pct(r.dead_pct)}"
                    f"{num(r.grad_std)}{pct(r.under_pct)}{pct(r.grad_under_pct)}"
                    f"<td>{flags}</td></tr>")
    return table(_LAYER_HEAD, rows, "layers", scroll=True)


def findings_list(findings: Sequence[Finding], trace: Trace | None = None) -> str:
    """The findings in plain words: severity, where, what was seen, the fix, and why (folded)."""
    if not findings:
        return '<p class="ok">No findings: activations and gradients look healthy.</p>'
    items = []
    for f in findings:
        seen, fix = split(f)
        why = explain(f, trace)
        where = "whole network" if f.layer is None else f.layer
        items.append(
            f'<li class="finding {esc(f.severity)}"><span class="badge {esc(f.severity)}">'
            f'{"note" if f.severity == "info" else esc(f.severity)}</span>'
            f'<code>{esc(f.kind)}</code> at <code>{esc(where)}</code><div>{esc(seen)}</div>'
            + (f'<div class="fix"><b>Fix:</b> {esc(fix)}</div>' if fix else "")
            + (f"<details><summary>Why</summary><p>{esc(why)}</p></details>" if why else "") + "</li>")
    return f'<ul class="findings">{"".join(items)}</ul>'


_PLAN_HEAD = (("parameter", "text"), ("layer type", "text"), ("shape", "text"), ("fan", "num"), ("before", "text"),
              ("after", "text"), ("gain", "num"), ("std", "num"), ("distribution", "text"), ("residual", "num"),
              ("reason", ""))


def _side(items: tuple[str, ...]) -> str:
    return "; ".join(items) if items else "-"


def plan_table(plan: InitPlan) -> str:
    """The InitPlan: one row per parameter block, then what was left untouched and the notes."""
    rows = []
    for r in plan.rows:
        block = f"[{r.block}]" if r.block != r.name.rsplit(".", 1)[-1] else ""
        std = num(r.std, ".4g") if r.bound is None else num(r.bound, ".4g").replace('">', '">b=', 1)
        rows.append(f"<tr>{_text(r.name + block)}{_text(r.layer_type)}{_text('x'.join(map(str, r.shape)))}"
                    f"{num(r.fan, '.4g')}{_text(_side(r.before))}{_text(_side(r.after))}{num(r.gain, '.4g')}{std}"
                    f"{_text(r.distribution)}{num(r.residual, '.4g')}{_text(r.reason, 'wrap')}</tr>")
    opts = (f"scheme={plan.scheme}, mode={plan.mode}, distribution={plan.distribution}, residual={plan.residual}, "
            f"bias={plan.bias}, convention={plan.convention}, seed={plan.seed}, discovery={plan.discovery}")
    left = "".join(f"<li><code>{esc(u.name)}</code>: {esc(u.reason)}</li>" for u in plan.untouched)
    notes = "".join(f"<li>{esc(n)}</li>" for n in plan.notes)
    return (f"<p><code>{esc(opts)}</code></p>" + table(_PLAN_HEAD, rows, scroll=True)
            + (f"<p>Left untouched:</p><ul>{left}</ul>" if left else "")
            + (f"<p>Notes:</p><ul>{notes}</ul>" if notes else ""))


_LSUV_HEAD = (("layer", "text"), ("type", "text"), ("calls", "num"), ("std before", "num"), ("mean before", "num"),
              ("scale", "num"), ("bias shift", "num"), ("std after", "num"), ("mean after", "num"), ("note", ""))


def lsuv_table(report: LsuvReport) -> str:
    """What LSUV measured and did at each scaled weight."""
    rows = [f"<tr>{_text(r.name)}{_text(r.layer_type)}{num(r.calls, 'd')}{num(r.std_before, '.4g')}"
            f"{num(r.mean_before, '.4g')}{num(r.scale, '.4g')}{num(r.bias_shift, '.4g')}{num(r.std_after, '.4g')}"
            f"{num(r.mean_after, '.4g')}{_text(r.note, 'wrap')}</tr>" for r in report.layers]
    return f"<p>{esc(report.summary())}</p>" + table(_LSUV_HEAD, rows, "lsuv", scroll=True)
