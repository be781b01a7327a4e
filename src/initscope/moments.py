"""Gaussian moments and gains of any activation.

For z ~ N(0, 1) and an activation phi, :func:`moments` gives

    mean         = E[phi(sqrt(q) z)]
    second       = E[phi(sqrt(q) z)^2]
    variance     = second - mean^2
    deriv_second = E[phi'(sqrt(q) z)^2]

and :func:`gain` turns them into the gain that keeps second moments constant
through a layer (the criterion of He et al. 2015):

    forward  (fan_in):  gain = 1 / sqrt(E[phi(z)^2])    phi = activation that produced the input
    backward (fan_out): gain = 1 / sqrt(E[phi'(z)^2])   phi = activation that follows the layer

For ReLU both are sqrt(2); for most other activations they differ.

Numerics: closed forms where they exist (relu, leaky_relu, identity, and the
mean and second moment of gelu). Everything else is integrated in float64 by
Gauss-Legendre panels against the Gaussian density, on [-12, 12] in z (the mass
outside is below 1e-32), with the interval split at every kink of phi so that
a corner costs no accuracy, and at |x| = 0.25 .. 8 so that panels stay at the
scale of phi's features when q is large. A single global Gauss-Hermite rule converges only
algebraically across a kink, and half-range Hermite rules need their own
recurrence, so panels split at the kinks are the simpler accurate choice
(relative error below 1e-12 on the named activations; see tests). Derivatives
come from autograd, so any callable works.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Union

import numpy as np
import torch
from torch import nn

from initscope._validate import finite_gain
from initscope.activations import ACTIVATIONS, Activation, resolve
from initscope.errors import ActivationError, ArgumentError, UnknownActivationError, UnknownOptionError

__all__ = ["Moments", "moments", "gain", "torch_gain", "ActivationLike"]

ActivationLike = Union[str, nn.Module, Callable[[torch.Tensor], torch.Tensor], Activation]
Convention = Literal["variance", "torch"]
Direction = Literal["forward", "backward"]

_Z_MAX = 12.0       # integrate z over [-12, 12]: P(|z| > 12) ~ 3.6e-33
_PANEL = 0.5        # panel width in z
_ORDER = 20         # Gauss-Legendre points per panel
# Extra panel edges in x (not z): an activation's features sit at |x| ~ 1, which is
# |z| ~ 1/sqrt(q); for large q fixed z-panels would be far too coarse there (tanh's
# E[phi'^2] at q = 1e4 was off by 1%). Edges at these x keep the panels at the scale of
# the features for any q, and cost a few extra panels where q <= 1.
_X_EDGES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class Moments:
    """Moments of phi(sqrt(q) z), z ~ N(0, 1).

    Attributes:
        name: the activation's name.
        q: the input's second moment.
        mean: E[phi].
        second: E[phi^2].
        deriv_second: E[phi'^2]; NaN when the derivative was not asked for.
    """

    name: str
    q: float
    mean: float
    second: float
    deriv_second: float

    @property
    def variance(self) -> float:
        """Var[phi] = E[phi^2] - E[phi]^2."""
        return self.second - self.mean**2

    @property
    def forward_gain(self) -> float:
        """sqrt(q / E[phi^2]), which is 1/sqrt(E[phi(z)^2]) at q = 1: the fan_in gain of a
        layer fed by this activation, the one that maps E[phi^2] back to q."""
        return math.sqrt((self.q or 1.0) / self.second) if self.second > 0 else math.inf

    @property
    def backward_gain(self) -> float:
        """1 / sqrt(E[phi'^2]): the fan_out gain of a layer that feeds this activation."""
        return 1.0 / math.sqrt(self.deriv_second) if self.deriv_second > 0 else math.inf


def moments(
    activation: ActivationLike, q: float = 1.0, *, param: float | None = None,
    kinks: Sequence[float] | None = None, derivative: bool = True,
) -> Moments:
    """Moments of an activation under Gaussian input of second moment ``q``.

    Args:
        activation: a name (``"relu"``, ``"gelu"``, ...), a ``torch.nn`` activation
            module (its parameters are read, e.g. ``nn.LeakyReLU(0.2)``), or any
            callable on tensors.
        q: the second moment of the pre-activation, E[x^2]; x = sqrt(q) z.
        param: the activation's parameter for named ones (leaky_relu slope, elu/celu
            alpha, softplus beta).
        kinks: for a callable, the x positions where it has a corner. Default (0.0,),
            right for relu-like callables such as ``lambda x: x.relu() - 0.5``.
        derivative: compute ``deriv_second`` (needs autograd through the callable).

    Returns:
        A :class:`Moments` record.

    Raises:
        UnknownActivationError: an unknown name; the message lists the known ones.
        ActivationError: a callable that returns NaN, changes the shape, or has no
            autograd derivative when ``derivative=True``.
        ArgumentError: a negative or non-finite ``q``.

    Examples:
        >>> m = moments("relu")
        >>> round(m.second, 12), round(m.deriv_second, 12)
        (0.5, 0.5)
        >>> round(moments("tanh").forward_gain, 6)
        1.592537
        >>> round(moments(lambda x: torch.relu(x) - 0.5).mean, 6)
        -0.101058
    """
    if isinstance(q, bool) or not (isinstance(q, (int, float)) and math.isfinite(q) and q >= 0):
        raise ArgumentError(f"q must be a finite number >= 0 (the input's second moment); got {q!r}")
    act = resolve(activation, param=param, kinks=kinks)
    if q == 0:
        return _at_zero(act, derivative)
    if act.closed_form is not None:
        exact = act.closed_form(float(q))
        if exact is not None:
            return Moments(act.name, float(q), *exact)
    if act.cacheable:
        return _cached_quadrature(act.key, float(q), derivative)
    return _quadrature(act, float(q), derivative)


@lru_cache(maxsize=1024)
def _cached_quadrature(key: tuple, q: float, derivative: bool) -> Moments:
    return _quadrature(ACTIVATIONS[key[0]].build(key[0], key[1]), q, derivative)


@lru_cache(maxsize=64)
def _nodes(breaks: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights (times the N(0,1) density) on [-Z, Z] split at ``breaks``."""
    x_ref, w_ref = np.polynomial.legendre.leggauss(_ORDER)
    edges = sorted({-_Z_MAX, _Z_MAX, *(b for b in breaks if -_Z_MAX < b < _Z_MAX)})
    xs, ws = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        cuts = np.linspace(lo, hi, max(1, math.ceil((hi - lo) / _PANEL)) + 1)
        for a, b in zip(cuts[:-1], cuts[1:]):
            xs.append((b - a) / 2 * x_ref + (a + b) / 2)
            ws.append((b - a) / 2 * w_ref)
    z, w = np.concatenate(xs), np.concatenate(ws)
    return z, w * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _quadrature(act: Activation, q: float, derivative: bool) -> Moments:
    scale = math.sqrt(q)
    edges = (*act.kinks, *_X_EDGES, *(-e for e in _X_EDGES))
    breaks = tuple(k / scale for k in edges) if scale > 0 else ()
    z, w = _nodes(breaks)
    x = torch.tensor(z * scale, dtype=torch.float64, requires_grad=derivative)
    y = _evaluate(act, x)
    weights = torch.from_numpy(w)
    mean = float((weights * y.detach()).sum())
    second = float((weights * y.detach() ** 2).sum())
    deriv = float("nan")
    if derivative:
        dy = _derivative(act, x, y)
        deriv = float((weights * dy**2).sum())
    return Moments(act.name, q, mean, second, deriv)


def _at_zero(act: Activation, derivative: bool) -> Moments:
    """q = 0: the input is exactly 0, so the moments are phi(0), phi(0)^2 and phi'(0)^2."""
    x = torch.zeros(1, dtype=torch.float64, requires_grad=derivative)
    y = _evaluate(act, x)
    value = float(y.detach()[0])
    deriv = float(_derivative(act, x, y)[0]) ** 2 if derivative else float("nan")
    return Moments(act.name, 0.0, value, value * value, deriv)


def _evaluate(act: Activation, x: torch.Tensor) -> torch.Tensor:
    try:
        with torch.enable_grad():
            y = act.fn(x)
    except Exception as exc:  # the user's callable failed: say which and how to fix
        raise ActivationError(
            f"activation {act.name!r} raised {type(exc).__name__}: {exc} when called on a "
            f"float64 tensor of shape {tuple(x.shape)}; it must accept any float64 tensor and "
            "return one of the same shape") from exc
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ActivationError(
            f"activation {act.name!r} changed the shape: input {tuple(x.shape)}, output {got}; "
            "an activation must be elementwise (same shape in, same shape out)")
    bad = ~torch.isfinite(y.detach())
    if bool(bad.any()):
        where = float(x.detach()[bad][0])
        raise ActivationError(
            f"activation {act.name!r} returned a non-finite value at x = {where:.6g}; "
            "it must be finite for all real inputs (clamp it, or pass kinks= to split there)")
    return y.to(torch.float64)


def _derivative(act: Activation, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if not y.requires_grad:
        raise ActivationError(
            f"activation {act.name!r} is not differentiable by autograd (its output does not "
            "require grad), but E[phi'(z)^2] is needed for the backward gain; write it with "
            "torch operations, or use direction='forward' / derivative=False")
    (dy,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
    if dy is None:
        return torch.zeros_like(x)
    return dy.detach()


# ---------------------------------------------------------------- gains

def gain(
    activation: ActivationLike, convention: Convention = "variance", direction: Direction = "forward",
    *, q: float = 1.0, param: float | None = None,
) -> float:
    """The gain that keeps second moments constant through a layer.

    Args:
        activation: anything :func:`moments` accepts.
        convention: ``"variance"`` (derived from the moments) or ``"torch"``
            (exactly ``torch.nn.init.calculate_gain``).
        direction: ``"forward"`` (mode fan_in: ``activation`` produced the layer's
            input; gain = 1/sqrt(E[phi(z)^2])) or ``"backward"`` (mode fan_out:
            ``activation`` follows the layer; gain = 1/sqrt(E[phi'(z)^2])).
        q: the pre-activation second moment at which to linearise (1 at the fixed point).
        param: the activation's parameter (leaky_relu slope, ...).

    Returns:
        The gain; std = gain / sqrt(fan).

    Raises:
        UnknownOptionError: an unknown convention or direction.
        UnknownActivationError: with ``convention="torch"``, an activation torch has no gain for.

    Note:
        The conventions differ. Torch uses one gain for both directions, and for
        tanh 5/3 and selu 3/4 it uses values chosen by hand (5/3 leans towards the
        saturating regime; 3/4 is the self-normalising choice of PyTorch's docs)
        rather than 1/sqrt(E[tanh^2]) = 1.5925 forward and 1/sqrt(E[tanh'^2]) =
        1.4674 backward, or 1.0 forward for selu, whose E[selu(z)^2] = 1 by design.

    Examples:
        >>> round(gain("relu"), 12) == round(math.sqrt(2), 12)
        True
        >>> gain("tanh", convention="torch")
        1.6666666666666667
        >>> round(gain("tanh", direction="backward"), 4)
        1.4674
    """
    if convention not in ("variance", "torch"):
        raise UnknownOptionError(f"unknown convention {convention!r}; known: 'variance', 'torch'")
    if direction not in ("forward", "backward"):
        raise UnknownOptionError(f"unknown direction {direction!r}; known: 'forward' (fan_in), 'backward' (fan_out)")
    if convention == "torch":
        return torch_gain(activation, param=param)
    m = moments(activation, q, param=param, derivative=direction == "backward")
    return finite_gain(m.forward_gain if direction == "forward" else m.backward_gain, activation, direction)


def torch_gain(activation: ActivationLike, *, param: float | None = None) -> float:
    """Exactly what ``torch.nn.init.calculate_gain`` returns for this activation.

    Raises:
        UnknownActivationError: torch defines no gain for it (gelu, silu, ...);
            use ``convention="variance"``.
    """
    act = resolve(activation, param=param)
    if act.torch_name is None:
        known = sorted(n for n, spec in ACTIVATIONS.items() if spec.torch_name)
        raise UnknownActivationError(
            f"torch.nn.init.calculate_gain defines no gain for {act.name!r}; torch knows: "
            f"{', '.join(known)}; use convention='variance', which works for any activation")
    return torch.nn.init.calculate_gain(act.torch_name, act.param)

