"""The catalogue of named activations, and :func:`resolve`, which turns a name,
an ``nn.Module`` or a callable into one :class:`Activation` record.

Each named entry knows its torch function, its kinks (where the integrand has a
corner, so quadrature splits there), its closed-form moments where they exist,
its name in ``torch.nn.init.calculate_gain`` (if any) and its ``nn`` module.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from initscope import _validate as check
from initscope.errors import UnknownActivationError

__all__ = ["Activation", "ActivationSpec", "ACTIVATIONS", "ALIASES", "resolve", "activation_module"]

Triple = tuple[float, float, float]
TWO_PI = 2 * math.pi


@dataclass(frozen=True)
class Activation:
    """One concrete activation: a float64-safe function plus what is known about it."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    kinks: tuple[float, ...] = ()
    closed_form: Callable[[float], Triple] | None = None
    torch_name: str | None = None
    param: float | None = None
    cacheable: bool = False

    @property
    def key(self) -> tuple:
        return (self.name, self.param)


@dataclass(frozen=True)
class ActivationSpec:
    """A named activation with an optional parameter (slope, alpha, beta)."""

    fn: Callable[[torch.Tensor, float | None], torch.Tensor]
    kinks: Callable[[float | None], tuple[float, ...]] = lambda p: ()
    closed_form: Callable[[float, float | None], Triple] | None = None
    torch_name: str | None = None
    default_param: float | None = None
    module: Callable[[float | None], nn.Module] = field(default=lambda p: nn.Identity())

    def build(self, name: str, param: float | None = None) -> Activation:
        p = self.default_param if param is None else float(param)
        cf = self.closed_form
        return Activation(
            name=name, fn=lambda x: self.fn(x, p), kinks=self.kinks(p),
            closed_form=(lambda q: cf(q, p)) if cf else None,
            torch_name=self.torch_name, param=p, cacheable=True)


# ------------------------------------------------------------ closed forms

def _relu_family(q: float, slope: float | None) -> Triple:
    """leaky_relu(x, a), x ~ N(0, q): mean (1-a) sqrt(q/2pi), E[phi^2] = q(1+a^2)/2, E[phi'^2] = (1+a^2)/2."""
    a = slope or 0.0
    return (1 - a) * math.sqrt(q / TWO_PI), q * (1 + a * a) / 2, (1 + a * a) / 2


def _identity(q: float, _: float | None) -> Triple:
    return 0.0, q, 1.0


def _gelu(q: float, _: float | None) -> Triple:
    """gelu(x) = x Phi(x), x ~ N(0, q), by Stein's lemma E[x g(x)] = q E[g'(x)]:

    E[phi]    = q / sqrt(2 pi (1+q))
    E[phi^2]  = q/4 + q asin(q/(1+q)) / (2 pi) + q^2 / (pi (1+q) sqrt(1+2q))
    E[phi'^2] = 1/4 + asin(q/(1+q)) / (2 pi) + q / (pi (1+q) sqrt(1+2q)) + q / (2 pi (1+2q)^1.5)
    using E[Phi(x)^2] = 1/4 + asin(q/(1+q))/(2 pi) and E[phi_N(x)^2] = 1/(2 pi sqrt(1+2q)).
    """
    s = math.asin(q / (1 + q)) / TWO_PI
    r = math.sqrt(1 + 2 * q)
    mean = q / math.sqrt(TWO_PI * (1 + q))
    second = q / 4 + q * s + q * q / (math.pi * (1 + q) * r)
    deriv = 0.25 + s + q / (math.pi * (1 + q) * r) + q / (TWO_PI * r**3)
    return mean, second, deriv


_ZERO = lambda p: (0.0,)  # noqa: E731  (one kink at the origin)

ACTIVATIONS: dict[str, ActivationSpec] = {
    "relu": ActivationSpec(lambda x, p: F.relu(x), _ZERO, _relu_family, "relu", module=lambda p: nn.ReLU()),
    "leaky_relu": ActivationSpec(
        lambda x, p: F.leaky_relu(x, p), _ZERO, _relu_family, "leaky_relu", 0.01,
        module=lambda p: nn.LeakyReLU(p)),
    "identity": ActivationSpec(lambda x, p: x, closed_form=_identity, torch_name="linear"),
    "tanh": ActivationSpec(lambda x, p: torch.tanh(x), torch_name="tanh", module=lambda p: nn.Tanh()),
    "sigmoid": ActivationSpec(lambda x, p: torch.sigmoid(x), torch_name="sigmoid", module=lambda p: nn.Sigmoid()),
    "gelu": ActivationSpec(lambda x, p: F.gelu(x), closed_form=_gelu, module=lambda p: nn.GELU()),
    "gelu_tanh": ActivationSpec(
        lambda x, p: F.gelu(x, approximate="tanh"), module=lambda p: nn.GELU(approximate="tanh")),
    "silu": ActivationSpec(lambda x, p: F.silu(x), module=lambda p: nn.SiLU()),
    "selu": ActivationSpec(lambda x, p: F.selu(x), _ZERO, torch_name="selu", module=lambda p: nn.SELU()),
    "elu": ActivationSpec(lambda x, p: F.elu(x, p), _ZERO, default_param=1.0, module=lambda p: nn.ELU(p)),
    "celu": ActivationSpec(lambda x, p: F.celu(x, p), _ZERO, default_param=1.0, module=lambda p: nn.CELU(p)),
    "softplus": ActivationSpec(
        lambda x, p: F.softplus(x, p), default_param=1.0, module=lambda p: nn.Softplus(p)),
    "mish": ActivationSpec(lambda x, p: F.mish(x), module=lambda p: nn.Mish()),
    "hardswish": ActivationSpec(lambda x, p: F.hardswish(x), lambda p: (-3.0, 3.0), module=lambda p: nn.Hardswish()),
    "hardsigmoid": ActivationSpec(
        lambda x, p: F.hardsigmoid(x), lambda p: (-3.0, 3.0), module=lambda p: nn.Hardsigmoid()),
    "hardtanh": ActivationSpec(lambda x, p: F.hardtanh(x), lambda p: (-1.0, 1.0), module=lambda p: nn.Hardtanh()),
    "relu6": ActivationSpec(lambda x, p: F.relu6(x), lambda p: (0.0, 6.0), module=lambda p: nn.ReLU6()),
}

ALIASES = {
    "swish": "silu", "linear": "identity", "none": "identity",
    **{f"conv{d}d": "identity" for d in (1, 2, 3)},
    **{f"conv_transpose{d}d": "identity" for d in (1, 2, 3)},
}

# nn module type -> (name, how to read its parameter); exact types, so ReLU6 is not read as Hardtanh
_MODULES: dict[type, tuple[str, Callable[[nn.Module], float | None]]] = {
    nn.ReLU: ("relu", lambda m: None),
    nn.LeakyReLU: ("leaky_relu", lambda m: m.negative_slope),
    nn.Identity: ("identity", lambda m: None),
    nn.Tanh: ("tanh", lambda m: None),
    nn.Sigmoid: ("sigmoid", lambda m: None),
    nn.SiLU: ("silu", lambda m: None),
    nn.SELU: ("selu", lambda m: None),
    nn.ELU: ("elu", lambda m: m.alpha),
    nn.CELU: ("celu", lambda m: m.alpha),
    nn.Mish: ("mish", lambda m: None),
    nn.Hardswish: ("hardswish", lambda m: None),
    nn.Hardsigmoid: ("hardsigmoid", lambda m: None),
    nn.ReLU6: ("relu6", lambda m: None),
}


def _known_names() -> str:
    return ", ".join([*ACTIVATIONS, "swish", "linear"])


def _from_name(name: str, param: float | None) -> Activation:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in ACTIVATIONS:
        raise UnknownActivationError(
            f"unknown nonlinearity {name!r}; known: {_known_names()}; or pass an nn.Module or a "
            "callable on tensors, e.g. lambda x: torch.relu(x) - 0.5")
    act = ACTIVATIONS[key].build(key, check.activation_param(key, param))
    alias = name.strip().lower()
    if key == "identity" and alias in ALIASES:  # keep torch's own spelling for calculate_gain
        return Activation(**{**act.__dict__, "torch_name": "linear" if alias in ("none",) else alias})
    return act


def _from_module(module: nn.Module) -> Activation | None:
    kind = type(module)
    if kind in _MODULES:
        name, read = _MODULES[kind]
        return _from_name(name, read(module))
    if kind is nn.GELU:
        return _from_name("gelu_tanh" if module.approximate == "tanh" else "gelu", None)
    if kind is nn.Softplus and module.threshold == 20:
        return _from_name("softplus", module.beta)
    if kind is nn.Hardtanh:
        lo, hi = float(module.min_val), float(module.max_val)
        if (lo, hi) == (-1.0, 1.0):
            return _from_name("hardtanh", None)
        return Activation(f"hardtanh({lo:g},{hi:g})", lambda x: F.hardtanh(x, lo, hi), (lo, hi))
    return None


def resolve(
    activation: object, *, param: float | None = None, kinks: Sequence[float] | None = None,
) -> Activation:
    """Turn a name, an ``nn.Module`` or a callable into an :class:`Activation`.

    A module of a known type is read through its parameters (``nn.LeakyReLU(0.2)``
    has slope 0.2). Any other module or callable is used as is; a module with
    parameters or buffers is copied to float64 first, so the user's module is
    never changed. ``kinks`` (default ``(0.0,)``) says where a callable has corners.

    Raises:
        UnknownActivationError: an unknown name, or an object that is not callable.
    """
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        return _from_name(activation, param)
    if isinstance(activation, nn.Module):
        known = _from_module(activation)
        if known is not None:
            return known
        if any(True for _ in activation.parameters()) or any(True for _ in activation.buffers()):
            activation = copy.deepcopy(activation).double()
    if not callable(activation):
        raise UnknownActivationError(
            f"cannot use {activation!r} ({type(activation).__name__}) as an activation; pass a "
            f"name ({_known_names()}), an nn.Module, or a callable on tensors")
    name = getattr(activation, "__name__", None) or type(activation).__name__
    return Activation(name, activation, tuple(check.real(k, "kinks[...]", fix="kinks are the x positions of the "
                                                     "activation's corners") for k in (kinks if kinks is not None else (0.0,))))


def activation_module(name: str, param: float | None = None) -> nn.Module:
    """The ``nn`` module for a named activation, e.g. ``activation_module("leaky_relu", 0.2)``."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in ACTIVATIONS:
        _from_name(name, param)  # raises with the list of known names
    spec = ACTIVATIONS[key]
    return spec.module(spec.default_param if param is None else param)
