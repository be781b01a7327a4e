"""Mean-field predictions for deep networks at init, and finite-width bands beside them.

A net has widths n_0 (input), n_1, ..., n_L, weights W_l ~ N(0, sigma_w2 / n_{l-1})
(sigma_w2 per fan-in normalised) and biases ~ N(0, sigma_b2). Pre-activations are
f_l = W_l h_{l-1} + b_l with h_0 = x and h_l = phi(f_l). Mean-field theory (Poole et al.
2016; Schoenholz et al. 2017) treats every f_l as Gaussian:

    q_1 = sigma_w2 q_0 + sigma_b2                  q_0 = mean square of the raw input
    q_l = sigma_w2 E[phi(sqrt(q_{l-1}) z)^2] + sigma_b2                        (length map)
    E[dL/df_l^2] = chi_l E[dL/df_{l+1}^2],  chi_l = sigma_w2 n_{l+1} E[phi'(f_l)^2] / n_l

For ReLU each layer multiplies q by sigma_w2 / 2 = D_h s2 / 2 (s2 the raw weight variance).
At finite width the measured mean square fluctuates from net to net; for ReLU with zero
biases its law is exact (Hanin & Rolnick 2018) and :func:`finite_width_band` gives it.

Examples:
    >>> round(critical_sigma_w2("relu"), 9)
    2.0
    >>> p = propagate([100] * 4, "relu", 2.0)
    >>> p.q.tolist()
    [2.0, 2.0, 2.0]
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

from initscope._band import Band, finite_width_band
from initscope._propagate import Propagation, _number, propagate
from initscope.activations import Activation, resolve
from initscope.errors import ArgumentError
from initscope.moments import ActivationLike, moments

__all__ = [
    "Propagation", "propagate", "fixed_point", "chi1", "correlation_map", "depth_scale",
    "critical_sigma_w2", "Band", "finite_width_band",
]

_Q_MIN, _Q_MAX = 1e-100, 1e100  # fixed points beyond these are reported as 0 and inf
_Z, _PANEL, _ORDER = 10.0, 0.5, 12  # 2-D rule: z in [-10, 10] (mass outside < 2e-23)


# ------------------------------------------------------------ fixed points and chi

def _root(f: Callable[[float], float], a: float, b: float, *, tol: float = 1e-13, maxiter: int = 200) -> float:
    """A root of f in [a, b] (f(a), f(b) of opposite signs) by Illinois false position."""
    fa, fb = f(a), f(b)
    side, c = 0, a
    for _ in range(maxiter):
        if fa == 0 or fb == 0:
            return a if fa == 0 else b
        c = (a * fb - b * fa) / (fb - fa)
        fc = f(c)
        if fc == 0 or abs(b - a) <= tol * max(1.0, abs(c)):
            return c
        if (fc > 0) == (fb > 0):
            b, fb = c, fc
            fa, side = (fa / 2 if side == -1 else fa), -1
        else:
            a, fa = c, fc
            fb, side = (fb / 2 if side == 1 else fb), 1
    return c


def fixed_point(activation: ActivationLike, sigma_w2: float, sigma_b2: float = 0.0, *, q0: float = 1.0) -> float:
    """q* = sigma_w2 E[phi(sqrt(q*) z)^2] + sigma_b2, the one the length map reaches from ``q0``.

    Returns 0.0 when the map decays to 0 (below 1e-100) and ``math.inf`` when it grows
    past 1e100. When every q is fixed (ReLU at sigma_w2 = 2, sigma_b2 = 0) returns ``q0``.

    Examples:
        >>> fixed_point("relu", 1.0, 0.5)  # sigma_b2 / (1 - sigma_w2/2)
        1.0
        >>> fixed_point("tanh", 0.5), fixed_point("relu", 3.0)
        (0.0, inf)
    """
    sw, sb, q = _number(sigma_w2, "sigma_w2"), _number(sigma_b2, "sigma_b2"), _number(q0, "q0")
    act = resolve(activation)
    gap = lambda x: sw * moments(act, math.exp(x), derivative=False).second + sb - math.exp(x)  # noqa: E731
    x = math.log(q or 1.0)
    first = gap(x)
    if first == 0:
        return q or 1.0
    step = math.log(10.0) if first > 0 else -math.log(10.0)
    while gap(x + step) * first > 0:
        x += step
        if not math.log(_Q_MIN) <= x + step <= math.log(_Q_MAX):
            return math.inf if step > 0 else 0.0
    return math.exp(_root(gap, x, x + step))


def _limit_q(q: float) -> float:
    """Where to evaluate at a fixed point of 0 or inf: the limits q -> 0+ and q -> inf."""
    return min(max(q, _Q_MIN), _Q_MAX)


def chi1(activation: ActivationLike, sigma_w2: float, sigma_b2: float = 0.0, *, q: float | None = None) -> float:
    """chi_1 = sigma_w2 E[phi'(sqrt(q*) z)^2]: the per-layer gradient factor at the fixed point.

    chi_1 < 1 is the ordered phase (gradients vanish), > 1 the chaotic one (they explode).
    ``q`` overrides q*; at q* = 0 or inf the limit is taken.

    Examples:
        >>> chi1("relu", 3.0)  # sigma_w2 / 2 for ReLU, whatever q
        1.5
    """
    point = fixed_point(activation, sigma_w2, sigma_b2) if q is None else _number(q, "q")
    return _number(sigma_w2, "sigma_w2") * moments(activation, _limit_q(point)).deriv_second


def critical_sigma_w2(activation: ActivationLike, sigma_b2: float = 0.0, *,
                      bracket: tuple[float, float] = (1e-2, 1e2)) -> float:
    """The sigma_w2 on the order-to-chaos boundary, chi_1 = 1, by root finding on log sigma_w2.

    Raises:
        ArgumentError: chi_1 does not cross 1 inside ``bracket``.

    Examples:
        >>> round(critical_sigma_w2("tanh"), 6)
        1.0
    """
    sb = _number(sigma_b2, "sigma_b2")
    lo, hi = (math.log(b) for b in bracket)
    f = lambda x: math.log(chi1(activation, math.exp(x), sb) or 1e-300)  # noqa: E731
    if (f(lo) > 0) == (f(hi) > 0):
        raise ArgumentError(
            f"chi_1 does not cross 1 for sigma_w2 in {bracket} at sigma_b2 = {sb}; this activation may "
            "have no order-to-chaos transition there: widen bracket=")
    return math.exp(_root(f, lo, hi, tol=1e-14))


# ------------------------------------------------------------ the correlation map

@lru_cache(maxsize=8)
def _legendre() -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(_ORDER)


def _panels(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and N(0,1)-density weights over consecutive intervals of ``edges`` (rows, k),
    each cut into panels of about _PANEL; returns arrays (rows, nodes)."""
    x_ref, w_ref = _legendre()
    count = int(math.ceil(2 * _Z / _PANEL))
    t = (np.arange(count)[:, None] + (x_ref[None, :] + 1) / 2).ravel() / count  # (count*order,)
    a, b = edges[:, :-1, None], edges[:, 1:, None]
    z = (a + (b - a) * t).reshape(len(edges), -1)
    w = ((b - a) / (2 * count) * np.tile(w_ref, count)).reshape(len(edges), -1)
    return z, w * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _split(points: np.ndarray) -> np.ndarray:
    """Rows of sorted breakpoints, clipped to [-Z, Z], framed by -Z and Z."""
    inner = np.clip(np.sort(points, axis=1), -_Z, _Z)
    frame = np.full((len(points), 1), _Z)
    return np.concatenate([-frame, inner, frame], axis=1)


def _with_derivative(act: Activation, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = torch.tensor(u, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        y = act.fn(x).to(torch.float64)
        (dy,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
    return y.detach().numpy(), (np.zeros_like(u) if dy is None else dy.numpy())


def _pair(act: Activation, q: float, c: float) -> tuple[float, float]:
    """(E[phi(u1) phi(u2)], E[phi'(u1) phi'(u2)]) for (u1, u2) Gaussian, variance q, correlation c.

    u1 = sqrt(q) z1, u2 = sqrt(q) (c z1 + s z2), s = sqrt(1 - c^2). The outer rule in z1
    splits at phi's kinks; the inner rule in z2 splits, per z1, where u2 crosses a kink.
    """
    r, s = math.sqrt(q), math.sqrt(max(0.0, 1.0 - c * c))
    kinks = np.asarray(act.kinks, dtype=np.float64)
    z1, w1 = _panels(_split(kinks[None, :] / r))
    z1, w1 = z1[0], w1[0]
    p1, d1 = _with_derivative(act, r * z1)
    if s == 0.0:
        p2, d2 = _with_derivative(act, c * r * z1)
        return float(np.sum(w1 * p1 * p2)), float(np.sum(w1 * d1 * d2))
    z2, w2 = _panels(_split((kinks[None, :] / r - c * z1[:, None]) / s))
    p2, d2 = _with_derivative(act, r * (c * z1[:, None] + s * z2))
    w = w1[:, None] * w2
    return float(np.sum(w * p1[:, None] * p2)), float(np.sum(w * d1[:, None] * d2))


def correlation_map(activation: ActivationLike, c: float, sigma_w2: float, sigma_b2: float = 0.0, *,
                    q: float | None = None) -> float:
    """c_out = (sigma_w2 E[phi(u1) phi(u2)] + sigma_b2) / (sigma_w2 E[phi(u1)^2] + sigma_b2).

    Two inputs whose pre-activations have second moment ``q`` (default: the fixed point
    q*, or its limit) and correlation ``c`` leave the next layer with correlation c_out.
    For ReLU with sigma_b2 = 0 this is the arc-cosine kernel of degree 1 (Cho & Saul 2009),
    (sqrt(1 - c^2) + (pi - arccos c) c) / pi, whatever sigma_w2 and q.

    Examples:
        >>> round(correlation_map("relu", 0.0, 2.0), 12) == round(1 / math.pi, 12)
        True
    """
    if not (isinstance(c, (int, float)) and -1.0 <= c <= 1.0):
        raise ArgumentError(f"c must be a correlation in [-1, 1]; got {c!r}")
    sw, sb = _number(sigma_w2, "sigma_w2"), _number(sigma_b2, "sigma_b2")
    qq = _limit_q(fixed_point(activation, sw, sb) if q is None else _number(q, "q"))
    act = resolve(activation)
    cross, _ = _pair(act, qq, float(c))
    return (sw * cross + sb) / (sw * moments(act, qq, derivative=False).second + sb)


def depth_scale(activation: ActivationLike, sigma_w2: float, sigma_b2: float = 0.0) -> float:
    """xi_c = -1 / ln(chi_c): the depth over which input correlations are forgotten.

    chi_c = sigma_w2 E[phi'(u1) phi'(u2)] at (q*, c*), the slope of the correlation map at
    its stable fixed point c* (Schoenholz et al. 2017, eq. 9). c* = 1 in the ordered phase
    (chi_1 <= 1); in the chaotic phase c* < 1 is found by root finding on the map. Infinite
    on the critical line, and wherever no stable c* < 1 exists although chi_1 > 1 (ReLU at
    sigma_b2 = 0 and sigma_w2 > 2: correlations then approach 1 by a power law).

    Examples:
        >>> round(depth_scale("relu", 1.0, 0.1), 12) == round(1 / math.log(2), 12)
        True
    """
    sw, sb = _number(sigma_w2, "sigma_w2"), _number(sigma_b2, "sigma_b2")
    act = resolve(activation)
    q = _limit_q(fixed_point(act, sw, sb))
    slope = chi1(act, sw, sb, q=q)
    if slope > 1 + 1e-9:
        gap = lambda c: correlation_map(act, c, sw, sb, q=q) - c  # noqa: E731
        top = 1 - 1e-6
        if gap(top) >= 0:
            return math.inf
        star = 0.0 if gap(0.0) <= 1e-15 else _root(gap, 0.0, top, tol=1e-12)
        slope = sw * _pair(act, q, star)[1]
    return math.inf if abs(math.log(slope)) < 1e-12 else -1.0 / math.log(slope)
