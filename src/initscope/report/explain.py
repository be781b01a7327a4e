"""Why a finding happens: a short explanation per finding kind, with the derivation where it
explains the finding, and the numbers of this model's own weights.

Each explanation is plain text (the HTML renderer escapes it). The forward and gradient
ones carry the He/Kaiming derivation: with zero biases and zero-mean weights of variance
s2, Var[f'] = s2 sum_j E[h_j^2], and for ReLU E[h^2] = Var[f] / 2, so
Var[f'] = D_h s2 Var[f] / 2 (He et al. 2015; Prince, *Understanding Deep Learning*, ch. 7).

Examples:
    >>> from initscope.diagnose import Finding
    >>> "D_h s2 Var[f] / 2" in explain(Finding("warning", None, "vanishing_forward", "m", "s"))
    True
"""
from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING

from initscope.diagnose import Finding

if TYPE_CHECKING:
    from initscope.probe import Trace

__all__ = ["explain", "weight_factors"]

_FORWARD = ("With zero biases and zero-mean weights of variance s2, a layer computes f' = W h, so "
            "Var[f'] = s2 * sum_j E[h_j^2]. For ReLU, h = max(0, f) keeps half of a symmetric f: "
            "E[h^2] = Var[f] / 2. So Var[f'] = D_h s2 Var[f] / 2 (D_h = fan_in): every layer multiplies "
            "the variance by D_h s2 / 2, and L layers by (D_h s2 / 2)^L. s2 = 2 / D_h (He/Kaiming, "
            "std = sqrt(2 / fan_in)) makes the factor exactly 1.")
_BACKWARD = ("Backward, the same argument runs through the transposed weights and ReLU's derivative "
             "(0 or 1, each half the time): Var[dL/dh] = D_h' s2 Var[dL/df'] / 2 with D_h' = fan_out. "
             "s2 = 2 / D_h' keeps gradients constant; for ReLU both choices give std = sqrt(2 / fan), "
             "which is why the two hide in most code. Small gradients at the first layers mean they "
             "barely learn; large ones mean oversized steps.")
_TEXT = {
    "dead_units": "A ReLU unit whose input is negative for every example outputs 0 and passes no gradient back: "
                  "it is dead for this batch and cannot learn from it. A shrinking signal dominated by "
                  "the biases, or a large negative bias, pushes whole units below zero.",
    "saturation": "tanh and sigmoid are flat near the ends of their range: there phi'(z) is almost 0, so the "
                  "gradient vanishes. Inputs with std far above 1 saturate them; Xavier/Glorot init keeps "
                  "the pre-activation std near 1.",
    "mean_drift": "ReLU outputs are never negative: for a N(0, 1) input their mean is 1/sqrt(2 pi) = 0.40 and "
                  "their std 0.58, so |mean|/std = 0.68 even in a healthy net. Kaiming init controls "
                  "E[h^2], not the mean. A mean far off zero wastes range; normalization forces mean 0 and "
                  "std 1, and fastai's GeneralRelu subtracts 0.5.",
    "nonfinite": "Once a value is inf or NaN, every layer after it (and every gradient before it) is too. "
                 "Variance that grows by D_h s2 / 2 > 1 per layer reaches float32's limit of 3.4e38 within "
                 "a few dozen layers.",
    "fp16": "fp16 holds magnitudes from 6.1e-5 (smallest normal; down to 6e-8 with lost precision) to 65504. "
            "bf16 has float32's range with fewer digits. Gradients of a mean loss are often far below 1e-4: "
            "a loss scale (torch.amp.GradScaler) multiplies them into range before the backward pass.",
    "signal_trend": "Statistics that drift by orders of magnitude during training point to a learning rate "
                    "too high for this init, or a missing normalization.",
    "dead_trend": "Units that die during training rarely come back: a large step pushed their biases "
                  "negative for every input.",
}


def weight_factors(trace: Trace) -> tuple[float, float, int] | None:
    """Medians over weight matrices of (D_h s2 / 2, D_h' s2 / 2), and how many there are.

    s2 is each weight's measured second moment; D_h = prod(shape[1:]) and
    D_h' = shape[0] * prod(shape[2:]), the fans of Linear and Conv layouts. None without weights.
    """
    fwd, bwd = [], []
    for p in trace.params:
        if p.name.rsplit(".", 1)[-1] != "weight" or len(p.shape) < 2 or not p.value.count:
            continue
        s2 = p.value.second_moment
        rest = math.prod(p.shape[2:])
        fwd.append(p.shape[1] * rest * s2 / 2)
        bwd.append(p.shape[0] * rest * s2 / 2)
    if not fwd:
        return None
    return statistics.median(fwd), statistics.median(bwd), len(fwd)


def _numbers(trace: Trace | None, backward: bool) -> str:
    got = weight_factors(trace) if trace is not None else None
    if got is None:
        return ""
    factor, n = got[1 if backward else 0], got[2]
    fan = "D_h' s2 / 2 (fan_out)" if backward else "D_h s2 / 2 (fan_in)"
    return (f" In this model, the weights give {fan} = {factor:.3g} (median over {n} weight matrices), "
            f"so each layer scales the std by about sqrt({factor:.3g}) = {math.sqrt(factor):.3g} where biases are "
            "small. PyTorch's default kaiming_uniform_(a=sqrt(5)) draws s2 = 1 / (3 fan_in), a factor of 1/6; "
            "its default biases add a floor of about 1 / (3 fan_in) to the variance.")


def explain(finding: Finding, trace: Trace | None = None) -> str:
    """The explanation of ``finding``, with this model's numbers when ``trace`` is given.

    Returns "" for a kind without one.
    """
    kind = finding.kind
    if kind.endswith("_forward"):
        return _FORWARD + _numbers(trace, False)
    if kind.endswith("_gradient"):
        return _FORWARD + " " + _BACKWARD + _numbers(trace, True)
    if kind.startswith(("fp16", "bf16")):
        return _TEXT["fp16"]
    return _TEXT.get(kind, "")
