"""The finite-width band (ReLU): how far one random net's per-layer mean square strays from
mean-field theory.

For ReLU with zero biases the law is exact (Hanin & Rolnick 2018): the log of a layer's
mean square over its mean-field value is a sum of independent log-chi-square terms, one per
layer. :func:`finite_width_band` gives its quantiles; :mod:`initscope.theory` re-exports it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Literal

import numpy as np
import torch

from initscope._propagate import PerLayer, _widths, propagate
from initscope.errors import ArgumentError, UnknownOptionError, choices_message

__all__ = ["Band", "finite_width_band"]


@lru_cache(maxsize=256)
def _active_law(n: int) -> tuple[np.ndarray, np.ndarray]:
    """k = 1..n and P(K = k | K >= 1) for K ~ Binomial(n, 1/2), the ReLU's active units."""
    k = torch.arange(1, n + 1, dtype=torch.float64)
    logp = torch.lgamma(torch.tensor(n + 1.0)) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1) - n * math.log(2)
    p = logp.exp().numpy()
    return k.numpy(), p / p.sum()


@lru_cache(maxsize=256)
def _active_term(n: int) -> tuple[float, float]:
    """Mean and variance of T(n) = ln chi2_K - ln(n/2), K ~ Bin(n, 1/2) | K >= 1 (exact).

    E[ln chi2_k] = psi(k/2) + ln 2 and Var[ln chi2_k] = psi'(k/2); the law of total variance
    adds the spread of psi(K/2) over K.
    """
    k, p = _active_law(n)
    half = torch.from_numpy(k / 2)
    psi, tri = torch.special.digamma(half).numpy(), torch.special.polygamma(1, half).numpy()
    mean = float(np.sum(p * psi)) + math.log(2) - math.log(n / 2)
    return mean, float(np.sum(p * tri) + np.sum(p * (psi - np.sum(p * psi)) ** 2))


def _full_term(n: int) -> tuple[float, float]:
    """Mean and variance of U(n) = ln chi2_n - ln n (a layer's pre-activations, all n units)."""
    half = torch.tensor(n / 2, dtype=torch.float64)
    return float(torch.special.digamma(half)) + math.log(2 / n), float(torch.special.polygamma(1, half))


@dataclass(frozen=True)
class Band:
    """Quantiles over random weight draws of a per-layer mean square, layers l = 1..L.

    ``direction="forward"``: q_l = |f_l|^2 / n_l for one input with |x|^2 / n_0 = q0.
    ``direction="backward"``: g_l / g_L with g_l = |dL/df_l|^2 / n_l, relative to the last layer.

    Attributes:
        mean_field: the mean-field value (:func:`propagate`).
        log_mean, log_std: mean and std of ln(value / mean_field).
        lower, median, upper: the (1-level)/2, 1/2 and (1+level)/2 quantiles of the value.
    """

    direction: str
    level: float
    method: str
    mean_field: np.ndarray
    log_mean: np.ndarray
    log_std: np.ndarray
    lower: np.ndarray
    median: np.ndarray
    upper: np.ndarray

    @property
    def decades(self) -> np.ndarray:
        """The band's width in powers of ten, log10(upper / lower), per layer."""
        return np.log10(self.upper / self.lower)


def _sampled(n: tuple[int, ...], direction: str, samples: int, seed: int) -> np.ndarray:
    """Deviations ln(value / mean_field), Monte Carlo of the per-layer law: (samples, L)."""
    rng = np.random.default_rng(seed)
    hidden = n[1:-1]
    terms = np.empty((samples, len(hidden)))
    for j, width in enumerate(hidden):
        k, p = _active_law(width)
        terms[:, j] = np.log(rng.chisquare(rng.choice(k, size=samples, p=p))) - math.log(width / 2)
    if direction == "backward":
        return np.concatenate([np.cumsum(terms[:, ::-1], axis=1)[:, ::-1], np.zeros((samples, 1))], axis=1)
    full = np.stack([np.log(rng.chisquare(w, size=samples) / w) for w in n[1:]], axis=1)
    return np.concatenate([np.zeros((samples, 1)), np.cumsum(terms, axis=1)], axis=1) + full


def finite_width_band(widths: Sequence[int], sigma_w2: PerLayer = 2.0, q0: float = 1.0, *,
                      direction: Literal["forward", "backward"] = "forward", level: float = 0.90,
                      method: Literal["normal", "sampled"] = "normal", samples: int = 20_000,
                      seed: int = 0) -> Band:
    """The spread of a ReLU net's per-layer mean square over random Gaussian weights, zero biases.

    Forward (exact; Hanin & Rolnick 2018): given h_{l-1}, f_l has n_l i.i.d. N(0, sigma_w2
    |h_{l-1}|^2 / n_{l-1}) entries, of which K_l ~ Binomial(n_l, 1/2) survive the ReLU, so

        ln(q_l / q_l^MF) = sum_{k<l} [ln chi2_{K_k} - ln(n_k / 2)] + [ln chi2_{n_l} - ln n_l],

    independent terms (rotation invariance), whatever sigma_w2: a larger sigma_w2 only shifts
    the band by ln(sigma_w2 / 2) per layer. K = 0 (probability 2^-n, a dead layer) is left out.

    Backward (an approximation): each layer back multiplies |dL/df|^2 by (sigma_w2 / n_l)
    chi2_{K_l}, with K_l ~ Bin(n_l, 1/2) drawn independently of the weights, the gradient
    independence assumption of Schoenholz et al. 2017; so ln(g_l / g_L) is the sum of the
    same terms over layers l..L-1. The per-input read-out factor at the top is left out.

    ``method="normal"`` adds the terms' exact means and variances (digamma, trigamma) and
    takes normal quantiles: deterministic, and close where the sum is near normal (its skewness
    is -0.14 at layer 1, -0.09 at layer 10 and -0.04 at layer 50 for width 100, but -0.3 to
    -0.75 for width 16). ``method="sampled"`` draws ``samples`` Monte Carlo values of the
    per-layer law (exact up to Monte Carlo error; use it for narrow nets).

    Args:
        widths: (n_0, n_1, ..., n_L). sigma_w2: weight variance times fan-in, one or per layer.
        q0: the input's mean square. level: central probability between lower and upper.

    Raises:
        ArgumentError: bad widths or variances, a level outside (0, 1), samples < 2.
        UnknownOptionError: an unknown direction or method.

    Examples:
        >>> band = finite_width_band([100] * 51, 2.0)
        >>> f"{band.decades[-1]:.2f}", f"{band.median[-1]:.2f}"  # vs the mean-field q_L = 2
        ('2.29', '0.57')
    """
    for value, name, known in ((direction, "direction", ("forward", "backward")),
                               (method, "method", ("normal", "sampled"))):
        if value not in known:
            raise UnknownOptionError(choices_message(name, value, known))
    if not 0 < level < 1 or samples < 2:
        raise ArgumentError(f"level must be in (0, 1) and samples >= 2; got level={level!r}, samples={samples!r}")
    n = _widths(widths)
    mf = propagate(n, "relu", sigma_w2, 0.0, q0)
    mean_field = mf.q if direction == "forward" else mf.grad / mf.grad[-1]
    z = NormalDist().inv_cdf((1 + level) / 2)
    if method == "sampled":
        dev = _sampled(n, direction, samples, seed)
        mean, std = dev.mean(axis=0), dev.std(axis=0)
        lo, mid, hi = np.quantile(dev, [(1 - level) / 2, 0.5, (1 + level) / 2], axis=0)
    else:
        t = np.array([_active_term(w) for w in n[1:-1]]).reshape(-1, 2)
        if direction == "forward":
            u = np.array([_full_term(w) for w in n[1:]])
            mean = np.concatenate([[0.0], np.cumsum(t[:, 0])]) + u[:, 0]
            var = np.concatenate([[0.0], np.cumsum(t[:, 1])]) + u[:, 1]
        else:
            mean = np.append(np.cumsum(t[::-1, 0])[::-1], 0.0)
            var = np.append(np.cumsum(t[::-1, 1])[::-1], 0.0)
        std = np.sqrt(var)
        lo, mid, hi = mean - z * std, mean, mean + z * std
    return Band(direction, level, method, mean_field, mean, std,
                mean_field * np.exp(lo), mean_field * np.exp(mid), mean_field * np.exp(hi))
