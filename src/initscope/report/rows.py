"""What every renderer shows about a trace, computed once: per-layer rows with flags, the
per-layer series the plots draw, and findings split into what was seen and the fix.

Pure functions of a :class:`~initscope.probe.Trace`; no rich, matplotlib or HTML here.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> from initscope.probe import probe
    >>> _ = torch.manual_seed(0)
    >>> rows = layer_rows(probe(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), torch.randn(32, 4)))
    >>> [(r.label, r.type, r.shape) for r in rows]
    [('0', 'Linear', '32x8'), ('1', 'ReLU', '32x8')]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from initscope.diagnose import Finding, Thresholds

if TYPE_CHECKING:
    from initscope.probe import LayerRecord, Trace
    from initscope.stats import Stats

__all__ = ["LayerRow", "layer_rows", "split", "METRICS", "metric_points", "ACTIVATIONS", "severity_counts"]

#: Module types whose outputs the dead-unit plot follows.
ACTIVATIONS = frozenset({"ReLU", "LeakyReLU", "PReLU", "RReLU", "ELU", "CELU", "SELU", "GELU", "SiLU", "Mish",
                         "Softplus", "Tanh", "Sigmoid", "Hardtanh", "ReLU6", "Hardswish", "Hardsigmoid",
                         "Softsign", "GeneralRelu"})
_RANK = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class LayerRow:
    """One layer call as the tables show it. Fractions are percentages; NaN where not measured."""

    index: int
    label: str
    type: str
    shape: str
    mean: float
    std: float
    zero_pct: float
    dead_pct: float
    grad_std: float
    under_pct: float       # forward values below fp16's smallest normal
    grad_under_pct: float  # gradient values below fp16's smallest normal
    flags: tuple[str, ...]
    severity: str | None   # the worst finding that names this layer
    weight: bool


def _get(s: Stats | None, attr: str, scale: float = 1.0) -> float:
    if s is None or not s.count:
        return math.nan
    return getattr(s, attr) * scale


def _under(s: Stats | None) -> float:
    return math.nan if s is None or not s.count else 100 * s.underflow_frac["fp16"]


def _flags(r: LayerRecord, th: Thresholds) -> tuple[str, ...]:
    f, b, out = r.forward, r.backward, []
    if any(s is not None and s.nonfinite for s in (f, b)):
        out.append("nan/inf")
    if f is not None and f.count:
        if f.unit_nonzero is not None and len(f.unit_nonzero) and f.dead_frac >= th.dead_frac \
                and f.count // len(f.unit_nonzero) >= th.min_unit_values:
            out.append("dead")
        if f.saturated is not None and f.saturation_frac >= th.saturation_frac:
            out.append("saturated")
        if f.count and f.std == 0:
            out.append("zero")
        if f.underflow_frac["fp16"] >= th.underflow_frac:
            out.append("fp16 under")
        if f.formats[0, 2]:
            out.append("fp16 over")
    if b is not None and b.count and b.underflow_frac["fp16"] >= th.underflow_frac:
        out.append("grad fp16 under")
    return tuple(out)


def layer_rows(trace: Trace, thresholds: Thresholds | None = None) -> list[LayerRow]:
    """One :class:`LayerRow` per layer call, in execution order.

    Flags apply ``thresholds`` (default :class:`~initscope.diagnose.Thresholds`) to each row on
    its own: dead, saturated, zero, nan/inf, fp16 under/over, grad fp16 under.
    """
    th = thresholds or Thresholds()
    worst: dict[str, str] = {}
    for f in trace.findings:
        if f.layer is not None and _RANK[f.severity] < _RANK.get(worst.get(f.layer, "none"), 9):
            worst[f.layer] = f.severity
    rows = []
    for i, r in enumerate(trace.layers):
        f, b = r.forward, r.backward
        rows.append(LayerRow(i, r.label, r.type, "x".join(map(str, r.shape or ())) or "-",
                             _get(f, "mean"), _get(f, "std"), _get(f, "zero_frac", 100), _get(f, "dead_frac", 100),
                             _get(b, "std"), _under(f), _under(b), _flags(r, th), worst.get(r.label), r.weight_layer))
    return rows


def split(finding: Finding) -> tuple[str, str]:
    """(what was seen, the fix): a finding's message without its trailing suggestion.

    Examples:
        >>> split(Finding("info", None, "mean_drift", "it drifts; centre it", "centre it"))
        ('it drifts', 'centre it')
    """
    tail = "; " + finding.suggestion
    text = finding.message[:-len(tail)] if finding.suggestion and finding.message.endswith(tail) else finding.message
    return text, finding.suggestion


def severity_counts(findings: list[Finding]) -> dict[str, int]:
    """How many errors, warnings and notes (info)."""
    return {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")}


#: The four per-layer plots: key -> (title, y label, unit, floor for zeros, which layers).
METRICS = {
    "std": ("Forward std, weight layers", "std of the layer's output", "", None, "weight"),
    "grad": ("Gradient std, weight layers", "std of dL/d(output)", "", None, "weight"),
    "dead": ("Dead units, activation layers", "% of units zero for the whole batch", "%", 0.1, "activation"),
    "under": ("fp16 underflow, weight layers (dashed: gradients)", "% of nonzero values < 6.1e-5", "%", 0.01,
              "weight"),
}


def _chosen(trace: Trace, which: str) -> list[tuple[int, LayerRecord]]:
    if which == "weight":
        picked = [r for r in trace.layers if r.weight_layer]
    else:
        picked = [r for r in trace.layers if r.type in ACTIVATIONS]
        if not picked:  # functional activations: every layer with units
            picked = [r for r in trace.layers if r.forward is not None and r.forward.unit_nonzero is not None]
    return list(enumerate(picked or list(trace.layers), start=1))


def metric_points(trace: Trace, metric: str) -> list[list[tuple[int, float | None, str]]]:
    """The (x, y, layer tip) lines of one plot in :data:`METRICS`; "under" has two (values, gradients)."""
    def tip(r: LayerRecord) -> str:
        return f"{r.label} ({r.type})"

    def val(v: float) -> float | None:
        return v if math.isfinite(v) else None

    layers = _chosen(trace, METRICS[metric][4])
    if metric == "under":
        return [[(i, val(_under(r.forward)), tip(r)) for i, r in layers],
                [(i, val(_under(r.backward)), tip(r)) for i, r in layers]]
    attr, source, scale = {"std": ("std", "forward", 1.0), "grad": ("std", "backward", 1.0),
                           "dead": ("dead_frac", "forward", 100.0)}[metric]
    return [[(i, val(_get(getattr(r, source), attr, scale)), tip(r)) for i, r in layers]]
