"""The mean-field length map and its backward twin: predicted per-layer moments of a deep net.

q_1 = sigma_w2 q_0 + sigma_b2, q_l = sigma_w2 E[phi(sqrt(q_{l-1}) z)^2] + sigma_b2, and
E[dL/df_l^2] = chi_l E[dL/df_{l+1}^2] with chi_l = sigma_w2 n_{l+1} E[phi'(f_l)^2] / n_l
(see :mod:`initscope.theory`). Also the argument checks the rest of the theory shares.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

from initscope.activations import resolve
from initscope.errors import ArgumentError
from initscope.moments import ActivationLike, moments

__all__ = ["Propagation", "propagate", "PerLayer"]

PerLayer = Union[float, Sequence[float]]


@dataclass(frozen=True)
class Propagation:
    """Mean-field moments per layer l = 1..L (arrays of length L).

    Attributes:
        widths: (n_0, ..., n_L).
        q: E[f_l^2], the pre-activations' second moment (their variance: the mean is 0).
        mean, second, deriv_second: E[h_l], E[h_l^2], E[phi'(f_l)^2] of h_l = phi(f_l).
        chi: length L - 1; chi[l] = E[dL/df_l^2] / E[dL/df_{l+1}^2] (0-based layers).
        grad: E[dL/df_l^2], with ``grad[-1] = grad_out``.
    """

    widths: tuple[int, ...]
    q: np.ndarray
    mean: np.ndarray
    second: np.ndarray
    deriv_second: np.ndarray
    chi: np.ndarray
    grad: np.ndarray

    @property
    def variance(self) -> np.ndarray:
        """Var[h_l] = E[h_l^2] - E[h_l]^2."""
        return self.second - self.mean**2

    @property
    def factor(self) -> np.ndarray:
        """q_l / q_{l-1} for l = 2..L: D_h s2 / 2 = sigma_w2 / 2 per layer for ReLU."""
        return self.q[1:] / self.q[:-1]


def _widths(widths: Sequence[int]) -> tuple[int, ...]:
    out = tuple(widths)
    if len(out) < 2 or not all(isinstance(n, (int, np.integer)) and n >= 1 for n in out):
        raise ArgumentError(f"widths must be (n_0, n_1, ..., n_L): at least 2 whole numbers >= 1; got {widths!r}")
    return tuple(int(n) for n in out)


def _per_layer(value: PerLayer, layers: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim > 1 or (arr.ndim == 1 and arr.size != layers):
        raise ArgumentError(f"{name} must be a number or a list of {layers} (one per layer); got {value!r}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ArgumentError(f"{name} must be finite and >= 0; got {value!r}")
    return np.broadcast_to(arr, (layers,)).copy()


def _number(value: float, name: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ArgumentError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def propagate(widths: Sequence[int], activation: ActivationLike, sigma_w2: PerLayer,
              sigma_b2: PerLayer = 0.0, q0: float = 1.0, *, grad_out: float = 1.0) -> Propagation:
    """Predicted per-layer moments of a deep net by the length map and its backward twin.

    Args:
        widths: (n_0, n_1, ..., n_L); n_0 is the input size.
        activation: anything :func:`initscope.moments` accepts.
        sigma_w2: weight variance times fan-in, one number or one per layer.
        sigma_b2: bias variance, one number or one per layer.
        q0: mean square of the raw input (the first layer is fed by data, not by phi).
        grad_out: E[dL/df_L^2] at the last layer, where the backward recursion starts.

    Returns:
        A :class:`Propagation`. Values beyond float64's range come out as inf.

    Raises:
        ArgumentError: bad widths, a negative or non-finite variance, or a list of the wrong length.

    Examples:
        >>> p = propagate([100] * 51, "relu", 100 * 0.001)  # the textbook's s2 = 0.001
        >>> round(float(p.factor[0]), 12), f"{p.q[-1]:.3g}"
        (0.05, '1.78e-65')
    """
    n = _widths(widths)
    layers = len(n) - 1
    sw, sb = _per_layer(sigma_w2, layers, "sigma_w2"), _per_layer(sigma_b2, layers, "sigma_b2")
    act = resolve(activation)
    q = np.empty(layers)
    rows = np.full((layers, 3), np.nan)
    prev = _number(q0, "q0")
    for l in range(layers):
        q[l] = float(sw[l]) * prev + float(sb[l])  # Python floats: overflow gives inf, quietly
        if not math.isfinite(q[l]):
            q[l:] = math.inf
            break
        m = moments(act, float(q[l]))
        rows[l] = m.mean, m.second, m.deriv_second
        prev = m.second
    sizes = np.asarray(n, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        chi = sw[1:] * sizes[2:] / sizes[1:-1] * rows[:-1, 2]
        grad = np.append(np.cumprod(chi[::-1])[::-1], 1.0) * _number(grad_out, "grad_out")
    return Propagation(n, q, rows[:, 0], rows[:, 1], rows[:, 2], chi, grad)
