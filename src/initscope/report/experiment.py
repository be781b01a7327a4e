"""Experiment results in the HTML report: the textbook experiment as interactive charts with
theory beside it, any other result as its summary and its matplotlib figure.

The textbook charts follow ``UdlResult.plot()``: per weight variance s2, the measured mean
square per layer (geometric mean over seeds), the mean-field line (dashed) and, for ReLU,
the 90% finite-width band; backward bands are relative to the last layer, so they are
scaled by its theory value.
"""
from __future__ import annotations

import base64
from typing import Any

import numpy as np

from initscope.report.svg import PALETTE, Series, log_chart
from initscope.report.tables import esc

__all__ = ["experiment_block", "DERIVATION"]

DERIVATION = ("Each hidden unit sums D_h inputs h_j through weights of variance s2, so with zero biases "
              "Var[f'] = s2 \u03a3 E[h_j\u00b2]; ReLU keeps half of a symmetric input, E[h\u00b2] = Var[f]/2. Every "
              "layer multiplies the variance by D_h s2 / 2, and after 50 layers by (D_h s2 / 2)^50. "
              "Backward, the gradients obey the same law with fan_out. Only s2 = 2 / D_h (He/Kaiming) keeps "
              "both constant.")


def _geo(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.exp(np.log(values).mean(axis=0))


def _series(result: Any, direction: str) -> list[Series]:
    measured, theory = getattr(result, direction), getattr(result, f"theory_{direction}")
    bands = getattr(result, f"band_{direction}", ()) or ()
    layers = range(1, measured.shape[-1] + 1)
    out = []
    for v, s2 in enumerate(result.variances):
        key, color = f"s2={s2:g}", PALETTE[(v + 1) % len(PALETTE)]
        geo = _geo(measured[v])
        band = ()
        if v < len(bands):
            scale = theory[v, -1] if direction == "backward" else 1.0
            band = tuple((float(x), float(lo * scale), float(hi * scale))
                         for x, lo, hi in zip(layers, bands[v].lower, bands[v].upper))
        out.append(Series(key, f"s2 = {s2:g}, theory", color, tuple((x, float(t), "") for x, t in
                                                                      zip(layers, theory[v])), dash=True,
                          markers=False, band=band))
        out.append(Series(key, f"s2 = {s2:g}", color, tuple((x, float(y), f"layer {x}")
                                                            for x, y in zip(layers, geo))))
    return out


def _udl(result: Any) -> str:
    width = result.settings.get("width", "D_h")
    keys = "".join(f'<button class="tog" data-k="s2={s2:g}" aria-pressed="true"><span class="sw" style="background:'
                   f'{PALETTE[(v + 1) % len(PALETTE)]}"></span>s2 = {s2:g} (factor {width * s2 / 2:g})</button>'
                   for v, s2 in enumerate(result.variances))
    dtype = esc(result.settings.get("dtype", ""))
    charts = (log_chart(f"(a) forward: Var[f_l] [{dtype}]", _series(result, "forward"), x_label="layer l",
                        y_label="Var[f_l]", note="solid: measured; dashed: theory; shaded: 90% finite-width band")
              + log_chart(f"(b) backward: Var[dL/df_l] [{dtype}]", _series(result, "backward"), x_label="layer l",
                          y_label="Var[dL/df_l]", note="theory anchored at the last layer"))
    return (f'<p class="lead">{esc(DERIVATION)}</p><div class="formula">Var[f\u2032] = D_h \u00b7 s2 \u00b7 Var[f] / 2'
            f'</div><div data-toggles><div class="toggles"><span class="lbl">Weight variance:</span>{keys}</div>'
            f'<div class="charts">{charts}</div></div>{_summary(result)}')


def _summary(result: Any) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in result.summary())
    return f'<table class="kv">{rows}</table>'


def experiment_block(result: Any) -> tuple[str, str]:
    """(heading, HTML body) for one experiment result."""
    settings = getattr(result, "settings", {}) or {}
    if getattr(result, "name", "") == "udl" and hasattr(result, "theory_forward"):
        head = (f"The textbook experiment: {settings.get('depth')} ReLU layers of width {settings.get('width')} "
                "(Prince, Understanding Deep Learning, fig. 7.7)")
        return head, _udl(result)
    image = base64.b64encode(result.png()).decode("ascii")
    alt = esc(f"{getattr(result, 'name', 'experiment')} figure")
    return (f"Experiment: {getattr(result, 'name', 'experiment')}",
            f'{_summary(result)}<img class="figure" alt="{alt}" src="data:image/png;base64,{image}">')
