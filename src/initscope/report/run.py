"""The HTML report of a recorded run (:class:`initscope.runs.Run`): how it evolved over steps.

Sections: the findings about the run (step and layer in plain words); per-layer lines over
steps (forward and gradient std, forward |mean|, fraction at zero, fp16 and bf16 underflow,
gradient norms), coloured by depth; and the "colorful dimension" heatmaps (fastai's name):
for each layer, the histogram of log2|x| at every recorded step, counts on a log colour
scale, forward and backward. Long runs are thinned to at most ``_MAX_STEPS`` evenly spaced
recorded steps per line and heatmap, so a run of 1000 steps x 50 layers stays a few MB.

Registered as the renderer of kinds "run_page" ((run, title) -> page) and "run" (a notebook
fragment) in :mod:`initscope._render`, which :meth:`Run.report` and ``Run._repr_html_`` read.
"""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import numpy as np

from initscope._render import register_html
from initscope.report.html import _fragment, report_html
from initscope.report.png import data_uri, heatmap_png
from initscope.report.svg import Series, log_chart
from initscope.report.tables import esc, findings_list

if TYPE_CHECKING:
    from initscope.runs import Run

__all__ = ["run_page", "run_body"]

_MAX_STEPS = 240  # points per line and columns per heatmap
_MAX_MARKERS = 3000  # hoverable points per chart; above it, lines only (their own tooltip names the layer)
_STYLE = """<style>.initscope .heat{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:10px}
.initscope .heat figure{margin:0;border:1px solid var(--line);border-radius:6px;padding:6px;background:#fff}
.initscope .heat img{width:100%;height:90px;image-rendering:pixelated;display:block;border:1px solid #eee}
.initscope .heat figcaption{font-size:12px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.initscope .heat .ax{font-size:11px;color:var(--muted)}</style>"""


def _thin(n: int, k: int = _MAX_STEPS) -> np.ndarray:
    return np.arange(n) if n <= k else np.unique(np.linspace(0, n - 1, k).round().astype(int))


def _depth_color(i: int, n: int) -> str:
    hue = 220 - 220 * (i / max(n - 1, 1))  # blue (first layer) to red (last)
    return f"hsl({hue:.0f},70%,45%)"


def _series(run: Run, phase: str, value, markers: bool, dash: bool = False, tag: str = "") -> list[Series]:
    out = []
    names = run.layers(phase)
    for i, name in enumerate(names):
        steps, v = value(run, name, phase)
        keep = _thin(len(steps))
        pts = tuple((int(s), None if not math.isfinite(y) else float(y), f"{name}{tag}, step {int(s)}")
                    for s, y in zip(steps[keep], v[keep]))
        out.append(Series(f"L{i}", name + tag, _depth_color(i, len(names)), pts, dash=dash, markers=markers))
    return out


def _stat(stat: str, scale: float = 1.0, absolute: bool = False):
    def value(run: Run, name: str, phase: str):
        steps, v = run.series(name, phase, stat)
        return steps, (np.abs(v) if absolute else v) * scale
    return value


def _grad_norm(run: Run, name: str, phase: str):
    return run.norm(name, phase)


def _chart(run: Run, title: str, parts: list[tuple[str, object, bool]], y_label: str, unit: str = "",
           floor: float | None = None) -> str:
    total = sum(len(run.layers(p)) * min(len(run.steps), _MAX_STEPS) for p, _, _ in parts)
    series = [s for phase, value, dash in parts
              for s in _series(run, phase, value, total <= _MAX_MARKERS, dash, " (backward)" if dash else "")]
    svg = log_chart(title, series, x_label="training step", y_label=y_label, unit=unit, floor=floor,
                    note="colour: depth, blue first layer to red last" + ("; dashed: backward" if len(parts) > 1 else ""))
    for s in series:  # a line's own tooltip (the browser's), for charts too dense for markers
        svg = re.sub(f'(<path class="ln" data-k="{s.key}" [^>]*)/>', lambda m: f"{m.group(1)}><title>"
                     f"{esc(s.label)}</title></path>", svg, count=1)
    return svg


def _charts(run: Run) -> str:
    pct = 100.0
    figs = [_chart(run, "Forward std over steps", [("forward", _stat("std"), False)], "std"),
            _chart(run, "Gradient std over steps (w.r.t. each layer's output)", [("backward", _stat("std"), False)], "std"),
            _chart(run, "Forward |mean| over steps", [("forward", _stat("mean", absolute=True), False)], "|mean|"),
            _chart(run, "Fraction of activations at zero over steps", [("forward", _stat("zero_frac", pct), False)],
                   "% exactly zero", "%", 0.01),
            _chart(run, "fp16 underflow over steps", [("forward", _stat("fp16_underflow", pct), False),
                                                       ("backward", _stat("fp16_underflow", pct), True)],
                   "% below fp16's smallest normal", "%", 0.01),
            _chart(run, "bf16 underflow over steps", [("forward", _stat("bf16_underflow", pct), False),
                                                       ("backward", _stat("bf16_underflow", pct), True)],
                   "% below bf16's smallest normal", "%", 0.01),
            _chart(run, "Gradient norm of each parameter over steps", [("grad", _grad_norm, False)], "norm")]
    return f'<div class="charts">{"".join(figs)}</div>'


def _heatmaps(run: Run, phase: str) -> str:
    names = run.layers(phase)
    if not names:
        return '<p class="lead">No histograms of this phase were recorded.</p>'
    hists = {n: run.histograms(n, phase) for n in names}
    octaves = np.stack([h[:, 1:257].sum(0) for _, h in hists.values()]).sum(0)
    nz = np.flatnonzero(octaves)
    lo, hi = (nz[0], nz[-1] + 1) if len(nz) else (0, 1)
    exp = lambda b: "<2^-126" if b == 0 else f"2^{b - 127}"  # noqa: E731 - bin b of 1..256, lower edge
    figs = []
    for name in names:
        steps, h = hists[name]
        keep = _thin(len(steps))
        counts = h[keep][:, 1 + lo:1 + hi].T[::-1].astype(np.float64)  # rows: largest |x| on top
        scale = math.log1p(counts.max()) or 1.0
        img = data_uri(heatmap_png(np.log1p(counts) / scale))
        figs.append(f'<figure><figcaption title="{esc(name)}">{esc(name)}</figcaption>'
                    f'<img alt="{esc(phase)} histogram of {esc(name)} over steps" src="{img}">'
                    f'<div class="ax">steps {int(steps[0])} to {int(steps[-1])}, |x| from {exp(lo)} (bottom) '
                    f'to {exp(hi)} (top)</div></figure>')
    return f'<div class="heat">{"".join(figs)}</div>'


def run_body(run: Run, findings: list) -> list[tuple[str, str, str]]:
    """The report's sections as (id, heading, html), with ``findings`` (``run.findings``)."""
    lead = ('<p class="lead">Each image is one layer: x is the training step, y is log2|x| (one row per '
            'octave), and the colour is the number of values in that octave on a log scale (dark = many). '
            'A band drifting down means the layer\'s values shrink; a band that empties means it went dead.</p>')
    return [("findings", f"Findings: {len(findings)}", findings_list(findings)),
            ("steps", "Over steps", _charts(run)),
            ("heat-fwd", "Colorful dimension: activations", _STYLE + lead + _heatmaps(run, "forward")),
            ("heat-bwd", "Colorful dimension: gradients", lead + _heatmaps(run, "backward"))]


def run_page(run: Run, title: str) -> str:
    """The whole page of a run."""
    steps = run.steps
    s = run.summary
    subtitle = (f"{len(steps)} recorded steps ({int(steps[0]) if len(steps) else '-'} to "
                f"{int(steps[-1]) if len(steps) else '-'}), {len(run.layers('forward'))} layers; "
                f"initscope {s.get('initscope')}, torch {s.get('torch')}")
    findings = run.findings
    return report_html(title, subtitle=subtitle, summary=[f.message for f in findings[:5]],
                       sections=run_body(run, findings))


register_html("run_page", lambda args: run_page(*args))
register_html("run", lambda run: _fragment("".join(f"<h3>{esc(h)}</h3>{b}"
                                                  for _, h, b in run_body(run, run.findings)[:2])))
