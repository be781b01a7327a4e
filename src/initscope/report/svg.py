"""Hand-written SVG line charts on log axes, for the HTML report and ``_repr_html_``.

Why not plotly: its bundle would add about 3.5 MB to every report, and it is not installed.
These charts are plain SVG, so they render without any script (in Jupyter too): each point
carries a ``<title>`` (the browser's own tooltip) and each element a ``data-k`` naming the
run or series it belongs to. The report's small script (:mod:`initscope.report.assets`)
turns titles into a styled tooltip and uses ``data-k`` to toggle series.

Examples:
    >>> s = Series("a", "run a", "#4063d8", ((0, 1.0, "layer 0"), (1, 0.01, "layer 1")))
    >>> svg = log_chart("forward std", [s], x_label="layer", y_label="std")
    >>> svg.count('class="pt"'), "1e-2" in svg or "0.01" in svg
    (2, True)
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Series", "log_chart", "PALETTE", "fmt"]

#: Colour-blind-friendly categorical colours, one per run or series.
PALETTE = ("#d1495b", "#2e86ab", "#3b8b5a", "#8e5cb5", "#e09f3e", "#00798c", "#7a5c3c", "#666666")
_W, _H = 640, 300
_L, _R, _T, _B = 62, 14, 12, 40  # margins
_LE = "\u2264"  # the axis floor's label: zeros sit there too


@dataclass(frozen=True)
class Series:
    """One line of a chart.

    Attributes:
        key: the toggle group (a run or a weight variance); the same key across charts toggles together.
        label: shown in tooltips.
        color: CSS colour.
        points: (x, y or None, tip) triples; None breaks the line; tip names the layer.
        dash: a dashed line. markers: hoverable points (theory lines have none).
        band: (x, lower, upper) triples drawn as a shaded area (a theory band).
    """

    key: str
    label: str
    color: str
    points: tuple[tuple[float, float | None, str], ...]
    dash: bool = False
    markers: bool = True
    band: tuple[tuple[float, float, float], ...] = ()


def fmt(value: float, unit: str = "") -> str:
    """Six significant digits (what a tooltip shows), and the unit.

    Examples:
        >>> fmt(0.000123456789), fmt(12.5, "%"), fmt(float("nan"))
        ('0.000123457', '12.5%', 'nan')
    """
    return f"{value:.6g}{unit}"


def _ok(y: float | None) -> bool:
    return y is not None and math.isfinite(y) and y > 0


def _range(series: Sequence[Series], floor: float | None) -> tuple[int, int]:
    ys = [y for s in series for _, y, _ in s.points if _ok(y)]
    ys += [v for s in series for _, lo, hi in s.band for v in (lo, hi) if _ok(v)]
    if floor is not None:
        ys = [max(y, floor) for y in ys] + [floor]
    if not ys:
        return 0, 1
    lo, hi = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    return (lo, hi) if hi > lo else (lo, lo + 1)


def _decade(k: int) -> str:
    return f"{10.0 ** k:g}" if -3 <= k <= 3 else f"1e{k}"


def _x_ticks(x0: float, x1: float) -> list[int]:
    span = max(x1 - x0, 1)
    step = next(s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000, 10**9) if span / s <= 10)
    return list(range(int(math.ceil(x0 / step) * step), int(x1) + 1, step))


class _Frame:
    """Maps data to pixels: linear x, log10 y between decades lo and hi."""

    def __init__(self, x0: float, x1: float, lo: int, hi: int, floor: float | None):
        self.x0, self.x1 = x0, (x1 if x1 > x0 else x0 + 1)
        self.lo, self.hi, self.floor = lo, hi, floor

    def px(self, x: float) -> float:
        return _L + (x - self.x0) / (self.x1 - self.x0) * (_W - _L - _R)

    def py(self, y: float) -> float:
        y = max(y, self.floor) if self.floor is not None else y
        return _T + (self.hi - math.log10(y)) / (self.hi - self.lo) * (_H - _T - _B)


def _axes(f: _Frame, x_label: str, y_label: str) -> list[str]:
    out = []
    step = max(1, math.ceil((f.hi - f.lo) / 7))
    for k in range(f.lo, f.hi + 1, step):
        y = f.py(10.0**k)
        at_floor = f.floor is not None and 10.0**k <= f.floor  # zeros sit here too
        out.append(f'<line class="grid" x1="{_L}" x2="{_W - _R}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{_L - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{_LE if at_floor else ""}{_decade(k)}</text>')
    for x in _x_ticks(f.x0, f.x1):
        px = f.px(x)
        out.append(f'<line class="tk" x1="{px:.1f}" x2="{px:.1f}" y1="{_H - _B}" y2="{_H - _B + 4}"/>'
                   f'<text class="tick" x="{px:.1f}" y="{_H - _B + 16}" text-anchor="middle">{x}</text>')
    out.append(f'<rect class="frame" x="{_L}" y="{_T}" width="{_W - _L - _R}" height="{_H - _T - _B}"/>')
    out.append(f'<text class="lab" x="{(_L + _W - _R) / 2}" y="{_H - 6}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text class="lab" transform="translate(14 {(_T + _H - _B) / 2}) rotate(-90)" '
               f'text-anchor="middle">{escape(y_label)}</text>')
    return out


def _line(f: _Frame, s: Series) -> str:
    parts, pen = [], "M"
    for x, y, _ in s.points:
        if _ok(y) or (f.floor is not None and y is not None and y == 0):
            parts.append(f"{pen}{f.px(x):.1f} {f.py(y if y else f.floor):.1f}")
            pen = "L"
        else:
            pen = "M"
    dash = ' stroke-dasharray="6 4"' if s.dash else ""
    return (f'<path class="ln" data-k="{escape(s.key)}" d="{" ".join(parts)}" stroke="{s.color}"{dash}/>'
            if parts else "")


def _band(f: _Frame, s: Series) -> str:
    pts = [(x, lo, hi) for x, lo, hi in s.band if _ok(lo) and _ok(hi)]
    if not pts:
        return ""
    upper = " ".join(f"{f.px(x):.1f} {f.py(hi):.1f}" for x, _, hi in pts)
    lower = " ".join(f"{f.px(x):.1f} {f.py(lo):.1f}" for x, lo, _ in reversed(pts))
    return f'<path class="band" data-k="{escape(s.key)}" d="M{upper} L{lower} Z" fill="{s.color}"/>'


def _points(f: _Frame, s: Series, unit: str) -> list[str]:
    out = []
    for x, y, tip in s.points:
        if y is None or not math.isfinite(y) or (y <= 0 and f.floor is None) or y < 0:
            continue
        zero = y == 0 or (f.floor is not None and y < f.floor)
        cls = "pt zero" if zero else "pt"
        text = escape(f"{s.label} · {tip}: {fmt(y, unit)}")
        fill = "#fff" if zero else s.color
        out.append(f'<circle class="{cls}" data-k="{escape(s.key)}" cx="{f.px(x):.1f}" cy="{f.py(y or f.floor):.1f}" '
                   f'r="3.4" fill="{fill}" stroke="{s.color}"><title>{text}</title></circle>')
    return out


def log_chart(title: str, series: Sequence[Series], *, x_label: str, y_label: str, unit: str = "",
              floor: float | None = None, note: str = "") -> str:
    """A ``<figure>`` holding one SVG chart: x linear, y on decades (log10).

    Args:
        title: the caption. series: the lines. x_label, y_label: axis titles. unit: appended
            to values in tooltips. floor: for quantities that can be 0 (percentages): the
            bottom of the axis; zeros and values below it sit there as hollow markers.
        note: a line under the chart.

    Returns:
        HTML (every string escaped). A chart without any positive value says "no data".
    """
    xs = [x for s in series for x, _, _ in s.points] or [0.0, 1.0]
    frame = _Frame(min(xs), max(xs), *_range(series, floor), floor)
    body = _axes(frame, x_label, y_label)
    body += [_band(frame, s) for s in series if s.band]
    body += [_line(frame, s) for s in series]
    body += [p for s in series if s.markers for p in _points(frame, s, unit)]
    if not any(_ok(y) or y == 0 for s in series for _, y, _ in s.points):
        body.append(f'<text class="lab" x="{_W / 2}" y="{_H / 2}" text-anchor="middle">no data</text>')
    caption = escape(title) + (f'<span class="note">{escape(note)}</span>' if note else "")
    return (f'<figure class="chart"><figcaption>{caption}</figcaption>'
            f'<svg viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(title)}">{"".join(body)}</svg></figure>')
