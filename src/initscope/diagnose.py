"""Findings: pure rules over a :class:`~initscope.probe.Trace`, in plain words with numbers.

Each rule reads statistics that probe already collected and returns :class:`Finding` records;
nothing here touches a model or a tensor. Thresholds are named fields of the frozen
:class:`Thresholds`; ``trace.findings`` uses the defaults, :func:`diagnose` takes others.

The forward rule fits log(std) against depth over the weight layers (Linear, Conv), with
the input as layer 0, by least squares: exp(slope) is the per-layer factor and
exp(slope)^depth the total. With zero-mean weights of variance s2 a ReLU layer multiplies
the variance by fan_in * s2 / 2 (He et al., 2015), so a factor away from 1 names the fix.

Examples:
    Weights of variance 1/fan_in, half of He's 2/fan_in, halve the variance at each ReLU
    layer, so the std falls by about sqrt(1/2) = 0.71 per layer (0.69 in this sample):

    >>> import torch
    >>> from torch import nn
    >>> from initscope.probe import probe
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(*[m for _ in range(20) for m in (nn.Linear(64, 64, bias=False), nn.ReLU())])
    >>> for layer in net[::2]:
    ...     _ = nn.init.normal_(layer.weight, std=(1 / 64) ** 0.5)
    >>> f = diagnose(probe(net, torch.randn(256, 64)))[0]
    >>> f.kind
    'vanishing_forward'
    >>> print(f.message)  # doctest: +ELLIPSIS
    forward std falls by 0...x per layer over 20 layers (total 0.000...): weights are too small for ReLU; use initscope.initialize(model, 'kaiming') ...
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from initscope.probe import LayerRecord, Trace
    from initscope.stats import Stats

__all__ = ["Finding", "Thresholds", "diagnose", "diagnose_run", "Severity", "Kind"]

Severity = Literal["error", "warning", "info"]
Kind = Literal["nonfinite", "vanishing_forward", "exploding_forward", "vanishing_gradient",
               "exploding_gradient", "dead_units", "saturation", "mean_drift", "fp16_underflow",
               "fp16_overflow", "bf16_underflow", "bf16_overflow", "signal_trend", "dead_trend"]
_ORDER = {"error": 0, "warning": 1, "info": 2}
_ACTIVATIONS = {"ReLU", "LeakyReLU", "PReLU", "RReLU", "ELU", "CELU", "SELU", "GELU", "SiLU", "Mish",
                "Softplus", "Tanh", "Sigmoid", "Hardtanh", "ReLU6", "Hardswish", "Hardsigmoid", "Softsign"}
_OFF_CENTRE = {"Sigmoid", "Hardsigmoid", "Softmax", "LogSoftmax", "Softmin", "LogSigmoid"}
_INIT = "use initscope.initialize(model, 'kaiming') (or initscope.lsuv(model, batch))"


@dataclass(frozen=True)
class Finding:
    """One judgement: how bad, where (a layer label or None for the whole network), what, fix."""

    severity: Severity
    layer: str | None
    kind: Kind
    message: str
    suggestion: str


@dataclass(frozen=True)
class Thresholds:
    """When a rule fires. Override any field: ``Thresholds(dead_frac=0.25)``.

    Attributes:
        min_layers: weight layers needed before a per-layer rate is fitted.
        vanishing_rate, exploding_rate: per-layer std factor outside which the signal is judged...
        vanishing_total, exploding_total: ...when the total factor across depth is also beyond these.
        dead_frac: fraction of units zero for the whole batch.
        min_unit_values: values per unit needed to call a unit dead (a batch of 2 is zero by chance).
        saturation_frac: fraction of a bounded activation's outputs in its saturated band.
        mean_drift: |mean| / std of a layer's output.
        underflow_frac: fraction of nonzero values below fp16's (bf16's) smallest normal.
        overflow_frac: fraction of values above fp16's (bf16's) max; any by default.
        trend_factor: over a run, the change in median std (first to last recorded step) that
            counts as collapse or blow-up.
    """

    min_layers: int = 3
    vanishing_rate: float = 0.9
    exploding_rate: float = 1.1
    vanishing_total: float = 0.1
    exploding_total: float = 10.0
    dead_frac: float = 0.1
    min_unit_values: int = 16
    saturation_frac: float = 0.1
    mean_drift: float = 1.0
    underflow_frac: float = 0.01
    overflow_frac: float = 0.0
    trend_factor: float = 100.0


def diagnose(trace: Trace, thresholds: Thresholds | None = None) -> list[Finding]:
    """All findings about ``trace``, errors first, then in layer order.

    Args:
        trace: the result of :func:`initscope.probe` (or a Recorder's run-level trace).
        thresholds: when rules fire; the defaults if None.

    Returns:
        A list of :class:`Finding`.
    """
    th = thresholds or Thresholds()
    found: list[Finding] = []
    for rule in (_nonfinite, _forward_rate, _gradient_rate, _dead, _saturation, _drift, _formats):
        found.extend(rule(trace, th))
    return sorted(found, key=lambda f: _ORDER[f.severity])


def _finding(severity: Severity, layer: str | None, kind: Kind, text: str, fix: str) -> Finding:
    """A finding whose message states the numbers and then the fix."""
    return Finding(severity, layer, kind, f"{text}; {fix}", fix)


def _activation(trace: Trace) -> str:
    counts = Counter(r.type for r in trace.layers if r.type in _ACTIVATIONS)
    return counts.most_common(1)[0][0] if counts else "this network"


def _slope(ys: list[float]) -> float:
    """Least-squares slope of ys against 0, 1, 2, ..."""
    n = len(ys)
    mx, my = (n - 1) / 2, sum(ys) / n
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sum((i - mx) ** 2 for i in range(n))


def _usable(s: Stats | None) -> bool:
    return s is not None and s.count > 0 and not s.nonfinite and s.std > 0


def _nonfinite(trace: Trace, th: Thresholds) -> list[Finding]:
    out = []
    bad_in = [o for o in trace.inputs if o.forward is not None and o.forward.nonfinite]
    if bad_in:
        s = bad_in[0].forward
        out.append(_finding("error", "(input)", "nonfinite", f"the inputs hold {_counts(s)}",
                            "clean the data or mask those entries before the model"))
    first = next((r for r in trace.layers if r.forward is not None and r.forward.nonfinite), None)
    if first is not None:
        where = "after non-finite inputs" if bad_in else "from finite inputs"
        out.append(_finding("error", first.label, "nonfinite",
                           f"the first non-finite value appears at `{first.label}` ({first.type}) {where}: "
                           f"{_counts(first.forward)}",
                           "check that layer's weights and inputs (log, sqrt, division); " + _INIT))
    grads = [r for r in reversed(trace.layers) if r.backward is not None and r.backward.nonfinite]
    if grads and first is None:
        g = grads[0]
        out.append(_finding("error", g.label, "nonfinite",
                           f"the gradient first becomes non-finite at `{g.label}` ({g.type}): {_counts(g.backward)}",
                           "check the loss for log(0) or division by zero; lower the learning rate"))
    return out


def _counts(s: Stats) -> str:
    return f"{s.nan} NaN, {s.posinf} +inf, {s.neginf} -inf of {s.count} values"


def _forward_rate(trace: Trace, th: Thresholds) -> list[Finding]:
    layers = [r for r in trace.layers if r.weight_layer]
    if len(layers) < th.min_layers:
        return []
    dead = next((r for r in layers if r.forward is not None and r.forward.count and r.forward.std == 0), None)
    if dead is not None:
        return [_finding("warning", dead.label, "vanishing_forward",
                        f"the forward signal is exactly zero from `{dead.label}` on: it underflowed "
                        f"or the weights are zero", _INIT)]
    stds = [r.forward.std for r in layers if _usable(r.forward)]
    if len(stds) < th.min_layers:
        return []
    first_in = next((o.forward for o in trace.inputs if _usable(o.forward)), None)
    points = ([first_in.std] if first_in is not None else []) + stds
    rate = math.exp(_slope([math.log(v) for v in points]))
    total = rate ** (len(points) - 1)
    return _judge(rate, total, len(stds), th, "forward", "forward std", "per layer",
                  f"weights are too {{}} for {_activation(trace)}")


def _gradient_rate(trace: Trace, th: Thresholds) -> list[Finding]:
    stds = [r.backward.std for r in trace.layers if r.weight_layer and _usable(r.backward)]
    if len(stds) < th.min_layers:
        return []
    rate = math.exp(-_slope([math.log(v) for v in stds]))  # going back towards the input
    return _judge(rate, rate ** (len(stds) - 1), len(stds), th, "gradient", "gradient std",
                  "per layer going back", "the first layers {}")


def _judge(rate: float, total: float, n: int, th: Thresholds, tag: str, what: str, per: str,
           why: str) -> list[Finding]:
    numbers = f"by {rate:.2g}x {per} over {n} layers (total {total:.2g})"
    if rate < th.vanishing_rate and total < th.vanishing_total:
        word = "small" if tag == "forward" else "barely learn"
        return [_finding("warning", None, f"vanishing_{tag}", f"{what} falls {numbers}: {why.format(word)}", _INIT)]
    if rate > th.exploding_rate and total > th.exploding_total:
        word = "large" if tag == "forward" else "take oversized steps"
        return [_finding("warning", None, f"exploding_{tag}", f"{what} grows {numbers}: {why.format(word)}", _INIT)]
    return []


def _worst(items: list[tuple[float, LayerRecord]]) -> tuple[float, LayerRecord, str]:
    value, rec = max(items, key=lambda x: x[0])
    more = f"; {len(items)} layers in all" if len(items) > 1 else ""
    return value, rec, more


def _dead(trace: Trace, th: Thresholds) -> list[Finding]:
    hits = [(r.forward.dead_frac, r) for r in trace.layers
            if r.forward is not None and r.forward.unit_nonzero is not None and r.forward.count
            and r.forward.count // len(r.forward.unit_nonzero) >= th.min_unit_values
            and r.forward.dead_frac >= th.dead_frac]
    if not hits:
        return []
    frac, r, more = _worst(hits)
    units = len(r.forward.unit_nonzero)
    return [_finding("warning", r.label, "dead_units",
                    f"{frac:.0%} of units at `{r.label}` ({r.type}) are zero for the whole batch "
                    f"({r.forward.dead_units} of {units}){more}",
                    "use a leaky activation or a lower learning rate; " + _INIT)]


def _saturation(trace: Trace, th: Thresholds) -> list[Finding]:
    hits = [(r.forward.saturation_frac, r) for r in trace.layers
            if r.forward is not None and r.forward.saturated is not None
            and r.forward.saturation_frac >= th.saturation_frac]
    if not hits:
        return []
    frac, r, more = _worst(hits)
    return [_finding("warning", r.label, "saturation",
                    f"{frac:.0%} of `{r.label}` ({r.type}) outputs sit in the flat 1% at the ends of its range, "
                    f"where the gradient vanishes{more}",
                    "use initscope.initialize(model, 'xavier') or normalize the inputs")]


def _drift(trace: Trace, th: Thresholds) -> list[Finding]:
    hits = [(abs(r.forward.mean) / r.forward.std, r) for r in trace.layers
            if _usable(r.forward) and r.type not in _OFF_CENTRE
            and abs(r.forward.mean) > th.mean_drift * r.forward.std]
    if not hits:
        return []
    ratio, r, more = _worst(hits)
    return [_finding("info", r.label, "mean_drift",
                    f"|mean|/std of `{r.label}` ({r.type}) outputs is {ratio:.2g}{more}: the signal drifts off "
                    f"zero (ReLU alone gives 0.68)",
                    "centre the activation (fastai's GeneralRelu uses relu(x) - 0.5), add a normalization "
                    "layer, or zero the biases with initscope.initialize(model, 'kaiming')")]


_FIXES = {("fp16", "forward"): "keep this layer in float32 or use bf16",
          ("fp16", "backward"): "use a loss scale (torch.amp.GradScaler) or bf16",
          ("bf16", "forward"): "keep this layer in float32", ("bf16", "backward"): "keep gradients in float32"}


def _formats(trace: Trace, th: Thresholds) -> list[Finding]:
    out = []
    for fmt, idx in (("fp16", 0), ("bf16", 1)):
        for phase in ("forward", "backward"):
            stats = [(getattr(r, phase), r.label) for r in trace.layers if getattr(r, phase) is not None]
            if phase == "backward":
                stats += [(p.grad, p.name) for p in trace.params if p.grad is not None]
            out += _format_rule(stats, fmt, idx, phase, th)
    return out


def _format_rule(stats: list, fmt: str, idx: int, phase: str, th: Thresholds) -> list[Finding]:
    import torch

    fi = torch.finfo(torch.float16 if fmt == "fp16" else torch.bfloat16)
    what = "values" if phase == "forward" else "gradient values"
    out = []
    under = [(s.underflow_frac[fmt], s, name) for s, name in stats if s.count and s.underflow_frac[fmt] >= th.underflow_frac]
    if under:
        frac, s, name = max(under, key=lambda x: x[0])
        more = f"; {len(under)} tensors in all" if len(under) > 1 else ""
        out.append(_finding("info", name, f"{fmt}_underflow",
                           f"{frac:.1%} of {what} at `{name}` are nonzero but below {fmt}'s smallest normal "
                           f"{fi.tiny:.2g} ({s.flush_frac[fmt]:.1%} below its smallest subnormal, which become 0)"
                           f"{more}", _FIXES[fmt, phase]))
    over = [(s.overflow_frac[fmt], s, name) for s, name in stats if s.count and s.formats[idx, 2]
            and s.overflow_frac[fmt] > th.overflow_frac]
    if over:
        frac, s, name = max(over, key=lambda x: x[0])
        more = f"; {len(over)} tensors in all" if len(over) > 1 else ""
        out.append(_finding("warning", name, f"{fmt}_overflow",
                           f"{what} at `{name}` reach {s.absmax:.3g}, beyond {fmt}'s max {fi.max:.5g} "
                           f"(about {frac:.2%} of them){more}: they become inf in {fmt}",
                           _FIXES[fmt, phase].replace("use a loss scale (torch.amp.GradScaler) or", "use")))
    return out


def diagnose_run(trace: Trace, history: list, thresholds: Thresholds | None = None) -> list[Finding]:
    """Findings about a whole training run.

    Args:
        trace: statistics merged over every recorded step (``Recorder.trace``).
        history: rows (step, layer, phase, stat, value), as ``Recorder.history`` gives them.
        thresholds: when rules fire; the defaults if None.

    Returns:
        The rules of :func:`diagnose` over the merged trace, with the non-finite rule replaced
        by the first step where a non-finite value appears, plus trends of the median forward
        and gradient std and of dead units between the first and last recorded steps.
    """
    th = thresholds or Thresholds()
    found = [f for f in diagnose(trace, th) if f.kind != "nonfinite"]
    series: dict[tuple[str, str, str], dict[int, float]] = {}
    for step, layer, phase, stat, value in history:
        series.setdefault((layer, phase, stat), {})[step] = value
    found += _first_nonfinite(history) + _std_trend(series, th) + _dead_trend(series, th)
    return sorted(found, key=lambda f: _ORDER[f.severity])


def _first_nonfinite(history: list) -> list[Finding]:
    bad = [(step, layer, phase) for step, layer, phase, stat, value in history if stat == "nonfinite" and value > 0]
    if not bad:
        return []
    step, layer, phase = min(bad, key=lambda x: x[0])
    return [_finding("error", layer, "nonfinite",
                     f"non-finite values first appear at step {step}, in the {phase} statistics of `{layer}`",
                     "lower the learning rate, clip gradients (torch.nn.utils.clip_grad_norm_), "
                     "or check the loss for log(0)")]


def _std_trend(series: dict, th: Thresholds) -> list[Finding]:
    out = []
    for phase, what in (("forward", "activation"), ("backward", "gradient")):
        per_step: dict[int, list[float]] = {}
        for (layer, ph, stat), values in series.items():
            if ph == phase and stat == "std":
                for step, v in values.items():
                    if math.isfinite(v) and v > 0:
                        per_step.setdefault(step, []).append(v)
        if len(per_step) < 2:
            continue
        (s0, a), (s1, b) = [(k, sorted(v)[len(v) // 2]) for k, v in (min(per_step.items()), max(per_step.items()))]
        ratio = b / a
        if ratio < 1 / th.trend_factor or ratio > th.trend_factor:
            verb = "fell" if ratio < 1 else "grew"
            out.append(_finding("warning", None, "signal_trend",
                                f"median {what} std {verb} {max(ratio, 1 / ratio):.3g}x between step {s0} "
                                f"({a:.3g}) and step {s1} ({b:.3g})",
                                "lower the learning rate or add normalization; " + _INIT))
    return out


def _dead_trend(series: dict, th: Thresholds) -> list[Finding]:
    grown = []
    for (layer, phase, stat), values in series.items():
        if phase == "forward" and stat == "dead_frac" and len(values) >= 2:
            (s0, a), (s1, b) = min(values.items()), max(values.items())
            if b >= th.dead_frac and b - a >= th.dead_frac:
                grown.append((b - a, layer, s0, a, s1, b))
    if not grown:
        return []
    _, layer, s0, a, s1, b = max(grown)
    more = f"; {len(grown)} layers in all" if len(grown) > 1 else ""
    return [_finding("warning", layer, "dead_trend",
                     f"dead units at `{layer}` grew from {a:.0%} at step {s0} to {b:.0%} at step {s1}{more}",
                     "lower the learning rate or use a leaky activation")]
