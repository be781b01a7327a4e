"""Checks on user input, run once at each public entry point.

Each check either returns quietly (or returns the value, converted) or raises a typed
:mod:`initscope.errors` error that names the argument, the value and the fix. They are called
with one line at the top of an entry point, never inside hooks or per-element loops, so
they cost microseconds per call.

Examples:
    >>> real(0.5, "a")
    0.5
    >>> real(float("nan"), "a")
    Traceback (most recent call last):
    ...
    initscope.errors.ArgumentError: a must be a finite number; got nan
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from initscope.errors import ActivationError, ArgumentError, ArgumentTypeError, ModelError, ShapeError

__all__ = ["real", "tensor", "floating_tensor", "generator", "module", "batch", "activation_param", "finite_gain",
           "shape", "layer_params"]

_FLOATS = "float32, float64, float16 or bfloat16"


def real(value: object, name: str, *, low: float | None = None, high: float | None = None,
         strict: bool = False, fix: str = "") -> float:
    """``value`` as a float, if it is a finite real number in [low, high] (``strict``: (low, high]).

    Raises:
        ArgumentTypeError: not a real number (a string, a bool, a tensor of several values).
        ArgumentError: NaN, infinite, or outside the range.
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a real number; got {value!r} ({type(value).__name__})"
                                + (f"; {fix}" if fix else ""))
    v = float(value)
    below = low is not None and (v <= low if strict else v < low)
    if not math.isfinite(v) or below or (high is not None and v > high):
        bounds = "" if low is None and high is None else " " + (
            f"in ({low:g}, {high:g}]" if strict and high is not None else f"in [{low:g}, {high:g}]"
            if high is not None and low is not None else f"{'>' if strict else '>='} {low:g}"
            if low is not None else f"<= {high:g}")
        raise ArgumentError(f"{name} must be a finite number{bounds}; got {value!r}" + (f"; {fix}" if fix else ""))
    return v


def tensor(value: object, name: str = "tensor") -> None:
    """Require a tensor (of any dtype).

    Raises:
        ArgumentTypeError: anything else (a list, a numpy array, a Parameter's name).
    """
    if not isinstance(value, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}; "
                                "convert it with torch.as_tensor(...)")


def floating_tensor(tensor: object, name: str = "tensor") -> None:
    """Require a real floating tensor: random real values cannot be written into anything else.

    Raises:
        ArgumentTypeError: not a tensor, or an integer, bool or complex tensor.
    """
    if not isinstance(tensor, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}; "
                                "convert it with torch.as_tensor(..., dtype=torch.float32)")
    if not tensor.is_floating_point():
        raise ArgumentTypeError(
            f"{name} has dtype {tensor.dtype}; initializers write random real values and need a real "
            f"floating tensor ({_FLOATS}); create it as float (e.g. .float()) or leave it out")


def generator(value: object) -> None:
    """Require None or a ``torch.Generator``.

    Raises:
        ArgumentTypeError: anything else (an int seed: wrap it as torch.Generator().manual_seed(seed)).
    """
    if value is not None and not isinstance(value, torch.Generator):
        raise ArgumentTypeError(f"generator must be a torch.Generator or None; got {value!r} "
                                f"({type(value).__name__}); for a seed s pass torch.Generator().manual_seed(s)")


def module(model: object, who: str) -> None:
    """Require an ``nn.Module``.

    Raises:
        ModelError: anything else (a string, a function that builds a model, a state dict).
    """
    if not isinstance(model, nn.Module):
        hint = "call the factory first" if callable(model) else "pass the model itself"
        raise ModelError(f"{who} needs a torch.nn.Module, got {type(model).__name__}; {hint}")


def _first_tensor(obj: Any, path: str, depth: int = 0) -> tuple[str, Any] | None:
    """The first tensor (or numpy array) in nested tuples, lists and mappings, with its path."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return path, obj
    if depth > 4:
        return None
    items = obj.items() if isinstance(obj, Mapping) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = _first_tensor(value, f"{path}[{key!r}]", depth + 1)
        if found is not None:
            return found
    return None


def batch(inputs: Any, who: str, empty_ok: bool = False) -> torch.Tensor | None:
    """Reject a batch that is certainly wrong: None, a numpy array, or (unless ``empty_ok``: a
    rank's share of a batch in a process group) a first tensor with zero elements (a batch of
    zero samples would be measured as healthy while holding nothing). Anything else the walk
    cannot see into (a dataclass, a number the forward takes) goes to the model, whose own
    error, if any, names the layer. Returns the first tensor (None when none is seen).

    Raises:
        ArgumentTypeError: ``inputs`` is None, or holds a numpy array where a tensor is needed.
        ShapeError: the first tensor has zero elements.
    """
    if inputs is None:
        raise ArgumentTypeError(f"{who}: inputs is None (got NoneType); pass a batch as a tensor, a tuple "
                                "of positional arguments or a dict of keyword arguments")
    found = _first_tensor(inputs, "inputs")
    if found is None:
        return None
    path, t = found
    if not isinstance(t, torch.Tensor):
        raise ArgumentTypeError(f"{who}: {path} is a numpy array; convert it with torch.from_numpy(...)")
    if t.numel() == 0 and not empty_ok:
        raise ShapeError(f"{who}: {path} has shape {tuple(t.shape)}, zero elements: a batch of zero samples "
                         "measures nothing; pass at least one sample (two or more for a std)")
    return t


# Activation parameters: name -> (argument's meaning, lower bound, strict, fix)
_PARAMS = {
    "leaky_relu": ("negative slope", None, False, ""),
    "elu": ("alpha", None, False, ""),
    "celu": ("alpha", 0.0, True, "CELU divides by alpha"),
    "softplus": ("beta", 0.0, True, "softplus(x) = log(1 + exp(beta x)) / beta"),
}


def activation_param(name: str, param: object) -> float | None:
    """Check a named activation's parameter (leaky_relu slope, elu/celu alpha, softplus beta).

    Raises:
        ArgumentTypeError, ArgumentError: as :func:`real`.
    """
    if param is None:
        return None
    meaning, low, strict, fix = _PARAMS.get(name, ("parameter", None, False, ""))
    return real(param, f"{name}'s {meaning} (param/a)", low=low, strict=strict, fix=fix)


def finite_gain(value: float, activation: object, direction: str) -> float:
    """A gain must be finite and > 0: E[phi(z)^2] = 0 (or E[phi'(z)^2] = 0) leaves no gain.

    Raises:
        ActivationError: the gain is 0, NaN or infinite.
    """
    if math.isfinite(value) and value > 0:
        return value
    moment = "E[phi(z)^2]" if direction == "forward" else "E[phi'(z)^2]"
    raise ActivationError(f"the {direction} gain of activation {getattr(activation, '__name__', activation)!r} "
                        f"is {value!r}: its {moment} under N(0, 1) is 0 or not finite, so no weight scale "
                        "keeps the signal; check the activation (a constant function?) or pass gain= directly")


def shape(value: object) -> tuple[int, ...]:
    """A shape: a sequence of whole numbers >= 0.

    Raises:
        ArgumentTypeError: not a sequence of whole numbers. ShapeError: a negative size.
    """
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ArgumentTypeError(f"a shape must be a tensor or a sequence of whole numbers; got {value!r}")
    dims = tuple(value)
    if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in dims):
        raise ArgumentTypeError(f"a shape must hold whole numbers; got {dims!r}")
    if any(d < 0 for d in dims):
        raise ShapeError(f"a shape cannot hold a negative size; got {dims!r}")
    return tuple(int(d) for d in dims)


def layer_params(layer: object, who: str) -> None:
    """Require a module whose weight matrices (parameters with 2+ dimensions) are real floating.

    Checked before anything is written, so a layer is never half-initialized.

    Raises:
        ModelError: not a module. ArgumentTypeError: an integer, bool or complex weight.
    """
    module(layer, who)
    for name, p in layer.named_parameters(recurse=False):
        if p.dim() >= 2 and not p.is_floating_point():
            raise ArgumentTypeError(
                f"`{name}` ({type(layer).__name__}) has dtype {p.dtype}; {who} writes random real values and "
                f"needs a real floating weight ({_FLOATS}); convert the layer with .float() or skip it")
