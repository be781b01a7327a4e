"""Tensor initializers, compatible with ``torch.nn.init``.

Names, argument order and the trailing underscore follow ``torch.nn.init``. Each
function also takes ``nonlinearity`` as a name, an ``nn.Module`` or any callable,
a ``generator=``, and ``convention=``:

- ``convention="variance"`` (the default) derives the gain from the activation's
  Gaussian moments (:mod:`initscope.moments`). Mode ``fan_in`` reads
  ``nonlinearity`` as the activation that *produced the layer's input* and uses
  its forward gain 1/sqrt(E[phi(z)^2]); mode ``fan_out`` reads it as the
  activation that *follows the layer* and uses its backward gain
  1/sqrt(E[phi'(z)^2]). ``fan_avg`` takes the harmonic mean of the two
  variances, 2 / (fan_in/g_f^2 + fan_out/g_b^2), which for ReLU is the textbook's
  compromise 4/(D_h + D_h'); ``fan_geo_avg`` takes their geometric mean.
- ``convention="torch"`` uses ``torch.nn.init.calculate_gain`` for both
  directions and computes the std with torch's own formulas, so under the same
  generator seed the result equals ``torch.nn.init`` bitwise.

Fans here come from the tensor's shape (torch's convention). For layout-aware
fans of a whole layer (grouped and transposed convs, packed attention and RNN
weights) use :func:`initscope.init_layer_`.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

from initscope import _validate as check
from initscope.errors import ArgumentTypeError, ShapeError, UnknownOptionError, choices_message
from initscope.fans import tensor_fans
from initscope.moments import ActivationLike, moments, torch_gain

__all__ = [
    "Mode", "Distribution", "MODES", "DISTRIBUTIONS", "TRUNCATED_STD", "gains", "scaled_std",
    "variance_scaling_", "kaiming_normal_", "kaiming_uniform_", "xavier_normal_",
    "xavier_uniform_", "lecun_normal_", "lecun_uniform_", "orthogonal_", "delta_orthogonal_",
    "trunc_normal_", "zeros_", "ones_",
]

Mode = Literal["fan_in", "fan_out", "fan_avg", "fan_geo_avg"]
Distribution = Literal["normal", "truncated_normal", "uniform", "orthogonal"]
Convention = Literal["variance", "torch"]
MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
DISTRIBUTIONS = ("normal", "truncated_normal", "uniform", "orthogonal")

#: std of N(0, 1) truncated to [-2, 2]: sqrt(1 - 4 phi(2) / (2 Phi(2) - 1)).
TRUNCATED_STD = math.sqrt(1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(2 / math.sqrt(2)))


def _check(mode: str, distribution: str = "normal") -> None:
    if mode not in MODES:
        raise UnknownOptionError(choices_message("mode", mode, MODES, "fan_in keeps the forward signal, fan_out the gradient"))
    if distribution not in DISTRIBUTIONS:
        raise UnknownOptionError(choices_message("distribution", distribution, DISTRIBUTIONS))


def gains(nonlinearity: ActivationLike | None, mode: Mode = "fan_in", *, param: float | None = None,
          convention: Convention = "variance") -> tuple[float, float]:
    """(forward gain, backward gain) of ``nonlinearity`` as ``mode`` needs them; NaN where unused.

    ``None`` means no activation (gain 1 both ways).

    Examples:
        >>> [round(g, 6) for g in gains("relu", "fan_avg")]
        [1.414214, 1.414214]
        >>> gains("tanh", "fan_in", convention="torch")
        (1.6666666666666667, 1.6666666666666667)
    """
    _check(mode)
    if convention not in ("variance", "torch"):
        raise UnknownOptionError(choices_message("convention", convention, ("variance", "torch")))
    if nonlinearity is None:
        return 1.0, 1.0
    if convention == "torch":
        g = torch_gain(nonlinearity, param=param)
        return g, g
    backward = mode != "fan_in"
    m = moments(nonlinearity, param=param, derivative=backward)
    return (check.finite_gain(m.forward_gain, nonlinearity, "forward") if mode != "fan_out" else math.nan,
            check.finite_gain(m.backward_gain, nonlinearity, "backward") if backward else math.nan)


def scaled_std(fan_in: float, fan_out: float, mode: Mode, forward_gain: float, backward_gain: float) -> float:
    """The std that keeps second moments constant, from the fans, the mode and the gains.

    fan_in: g_f / sqrt(fan_in); fan_out: g_b / sqrt(fan_out); fan_avg:
    sqrt(2 / (fan_in/g_f^2 + fan_out/g_b^2)) (= g sqrt(2/(fan_in+fan_out)) when the gains
    agree, torch's xavier); fan_geo_avg: sqrt(g_f g_b) / (fan_in fan_out)^(1/4).

    Examples:
        >>> round(scaled_std(100, 100, "fan_avg", math.sqrt(2), math.sqrt(2)) ** 2, 12)  # 4/(D_h + D_h')
        0.02
    """
    _check(mode)
    if mode == "fan_in":
        return forward_gain / math.sqrt(fan_in)
    if mode == "fan_out":
        return backward_gain / math.sqrt(fan_out)
    if mode == "fan_geo_avg":
        return math.sqrt(forward_gain * backward_gain) / (fan_in * fan_out) ** 0.25
    if forward_gain == backward_gain:
        return forward_gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return math.sqrt(2.0 / (fan_in / forward_gain**2 + fan_out / backward_gain**2))


def _fans(tensor: torch.Tensor, what: str) -> tuple[float, float] | None:
    """Fans of a tensor for a fan-based scheme; None for a zero-size tensor (a no-op)."""
    check.floating_tensor(tensor)
    if tensor.dim() < 2:
        raise ShapeError(
            f"{what} needs a tensor with at least 2 dimensions (out, in, ...); got shape "
            f"{tuple(tensor.shape)}; initialize biases with zeros_ and 1-D weights with ones_, "
            "or use initscope.init_layer_(module) to handle a whole layer")
    return None if tensor.numel() == 0 else tensor_fans(tensor)


def _fill(tensor: torch.Tensor, std: float, distribution: str, generator: torch.Generator | None) -> torch.Tensor:
    """Write values of the given std in place (bounds sqrt(3) std for uniform)."""
    check.generator(generator)
    if tensor.numel() == 0 or tensor.is_meta:
        return tensor
    with torch.no_grad():
        if distribution == "normal":
            return tensor.normal_(0, std, generator=generator)
        if distribution == "uniform":
            bound = math.sqrt(3.0) * std
            return tensor.uniform_(-bound, bound, generator=generator)
        if distribution == "truncated_normal":
            sigma = std / TRUNCATED_STD
            return torch.nn.init.trunc_normal_(tensor, 0.0, sigma, -2 * sigma, 2 * sigma, generator=generator)
        rows = tensor.shape[0]
        return orthogonal_(tensor, std * math.sqrt(max(rows, tensor.numel() // rows)), generator)


def variance_scaling_(
    tensor: torch.Tensor, scale: float = 1.0, mode: Mode = "fan_in", distribution: Distribution = "truncated_normal",
    generator: torch.Generator | None = None, *, nonlinearity: ActivationLike | None = None,
    param: float | None = None, convention: Convention = "variance", fans: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Fill ``tensor`` with variance ``scale * gain^2 / fan`` (combined as ``mode`` says).

    As in JAX/Flax's ``variance_scaling``: ``truncated_normal`` is cut at two of its
    own stds and rescaled so that the *resulting* std is the target (divided by
    TRUNCATED_STD = 0.8796); ``uniform`` uses bound sqrt(3) std; ``orthogonal`` is a
    (semi-)orthogonal matrix scaled to the target element variance.

    Args:
        tensor: an n-dimensional tensor, n >= 2, laid out (out, in, *kernel).
        scale: multiplies the variance.
        mode: fan_in, fan_out, fan_avg or fan_geo_avg.
        distribution: normal, truncated_normal, uniform or orthogonal.
        generator: the random generator; None uses torch's global one.
        nonlinearity: the activation whose gain applies (see the module doc); None for 1.
        param: the activation's parameter (leaky_relu slope, ...).
        convention: "variance" or "torch".
        fans: (fan_in, fan_out) to use instead of the tensor's shape.

    Returns:
        ``tensor``, filled in place.

    Raises:
        ShapeError: fewer than 2 dimensions. UnknownOptionError: a bad mode or distribution.
        ArgumentTypeError: not a real floating tensor (every function here). ArgumentError: a
            non-finite or out-of-range number (scale, fans, gain, a, std). ActivationError: an
            activation with E[phi(z)^2] = 0, which no gain can make up for.

    Examples:
        >>> w = variance_scaling_(torch.empty(256, 512), 2.0, "fan_in", "truncated_normal",
        ...                       torch.Generator().manual_seed(0))
        >>> abs(w.std().item() - math.sqrt(2 / 512)) < 0.002
        True
    """
    _check(mode, distribution)
    scale = check.real(scale, "scale", low=0.0, strict=True, fix="it multiplies the variance; 1.0 keeps it")
    shape_fans = _fans(tensor, "variance_scaling_")
    if shape_fans is None:
        return tensor
    fan_in, fan_out = _given_fans(fans) if fans is not None else shape_fans
    g_f, g_b = gains(nonlinearity, mode, param=param, convention=convention)
    std = math.sqrt(scale) * scaled_std(fan_in, fan_out, mode, g_f, g_b)
    return _fill(tensor, std, distribution, generator)


def _given_fans(fans: object) -> tuple[float, float]:
    if not isinstance(fans, (tuple, list)) or len(fans) != 2:
        raise ArgumentTypeError(f"fans must be a pair (fan_in, fan_out); got {fans!r}")
    return tuple(check.real(f, n, low=0.0, strict=True) for f, n in zip(fans, ("fans[0] (fan_in)", "fans[1] (fan_out)")))


def _kaiming(tensor, a, mode, nonlinearity, generator, convention, distribution):
    _check(mode)
    a = check.real(a, "a", fix="a is the negative slope of leaky_relu (0 for ReLU, e.g. 0.01)")
    shape_fans = _fans(tensor, f"kaiming_{distribution}_")
    if shape_fans is None:
        return tensor
    param = a if isinstance(nonlinearity, str) else None
    g_f, g_b = gains(nonlinearity, mode, param=param, convention=convention)
    return _fill(tensor, scaled_std(*shape_fans, mode, g_f, g_b), distribution, generator)


def kaiming_normal_(tensor: torch.Tensor, a: float = 0, mode: Mode = "fan_in",
                    nonlinearity: ActivationLike = "leaky_relu", generator: torch.Generator | None = None,
                    *, convention: Convention = "variance") -> torch.Tensor:
    """He et al. 2015: N(0, gain^2 / fan). ``a`` is the leaky_relu slope, as in torch.

    Differs from torch for activations other than (leaky) ReLU under the default
    ``convention="variance"``: see the module doc. std = sqrt(2/fan) for ReLU either way.

    Examples:
        >>> w = kaiming_normal_(torch.empty(400, 400), nonlinearity="relu",
        ...                     generator=torch.Generator().manual_seed(0))
        >>> abs(w.var().item() * 400 - 2) < 0.02
        True
    """
    return _kaiming(tensor, a, mode, nonlinearity, generator, convention, "normal")


def kaiming_uniform_(tensor: torch.Tensor, a: float = 0, mode: Mode = "fan_in",
                     nonlinearity: ActivationLike = "leaky_relu", generator: torch.Generator | None = None,
                     *, convention: Convention = "variance") -> torch.Tensor:
    """He et al. 2015 with U(-b, b), b = gain * sqrt(3 / fan) (torch's bound)."""
    return _kaiming(tensor, a, mode, nonlinearity, generator, convention, "uniform")


def _xavier(tensor, gain, generator, nonlinearity, convention, distribution):
    gain = check.real(gain, "gain", low=0.0, fix="the std is gain * sqrt(2 / (fan_in + fan_out))")
    shape_fans = _fans(tensor, f"xavier_{distribution}_")
    if shape_fans is None:
        return tensor
    g_f, g_b = (1.0, 1.0) if nonlinearity is None else gains(nonlinearity, "fan_avg", convention=convention)
    return _fill(tensor, scaled_std(*shape_fans, "fan_avg", gain * g_f, gain * g_b), distribution, generator)


def xavier_normal_(tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None,
                   *, nonlinearity: ActivationLike | None = None, convention: Convention = "variance") -> torch.Tensor:
    """Glorot & Bengio 2010: N(0, 2 gain^2 / (fan_in + fan_out)); with ``nonlinearity``,
    the fan_avg combination of its forward and backward gains (4/(D_h + D_h') for ReLU)."""
    return _xavier(tensor, gain, generator, nonlinearity, convention, "normal")


def xavier_uniform_(tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None,
                    *, nonlinearity: ActivationLike | None = None, convention: Convention = "variance") -> torch.Tensor:
    """Glorot & Bengio 2010 with U(-b, b), b = gain sqrt(6 / (fan_in + fan_out))."""
    return _xavier(tensor, gain, generator, nonlinearity, convention, "uniform")


def lecun_normal_(tensor: torch.Tensor, generator: torch.Generator | None = None, *,
                  nonlinearity: ActivationLike | None = None, convention: Convention = "variance") -> torch.Tensor:
    """LeCun 1998: variance gain^2 / fan_in, truncated normal as in JAX/Flax and Keras (gain 1 by default,
    right for SELU and linear nets). torch has no such function."""
    return variance_scaling_(tensor, 1.0, "fan_in", "truncated_normal", generator,
                             nonlinearity=nonlinearity, convention=convention)


def lecun_uniform_(tensor: torch.Tensor, generator: torch.Generator | None = None, *,
                   nonlinearity: ActivationLike | None = None, convention: Convention = "variance") -> torch.Tensor:
    """LeCun 1998 with U(-b, b), b = gain sqrt(3 / fan_in)."""
    return variance_scaling_(tensor, 1.0, "fan_in", "uniform", generator,
                             nonlinearity=nonlinearity, convention=convention)


def orthogonal_(tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None, *,
                nonlinearity: ActivationLike | None = None, convention: Convention = "variance") -> torch.Tensor:
    """Saxe et al. 2014: a (semi-)orthogonal matrix times ``gain`` (times the
    nonlinearity's forward gain when one is given).

    The QR runs in float32 for bf16/fp16 tensors (LAPACK has no half precision)
    and the result is cast back; for float32/float64 it equals torch's bitwise.

    Examples:
        >>> w = orthogonal_(torch.empty(4, 6, dtype=torch.bfloat16), generator=torch.Generator().manual_seed(0))
        >>> bool(torch.allclose((w.float() @ w.float().T), torch.eye(4), atol=0.02))
        True
    """
    gain = check.real(gain, "gain", low=0.0, fix="the matrix is scaled by gain")
    check.floating_tensor(tensor)
    if tensor.dim() < 2:
        _fans(tensor, "orthogonal_")
    if nonlinearity is not None:
        gain = gain * gains(nonlinearity, "fan_in", convention=convention)[0]
    if tensor.numel() == 0 or tensor.is_meta:
        return tensor
    rows = tensor.shape[0]
    work = torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.dtype
    flat = torch.empty((rows, tensor.numel() // rows), dtype=work, device=tensor.device).normal_(0, 1, generator=generator)
    if rows < flat.shape[1]:
        flat.t_()
    q, r = torch.linalg.qr(flat)
    q *= torch.diag(r, 0).sign()
    if rows < tensor.numel() // rows:
        q.t_()
    with torch.no_grad():
        tensor.view_as(q).copy_(q)
        return tensor.mul_(gain)


def delta_orthogonal_(tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None, *,
                      nonlinearity: ActivationLike | None = None, convention: Convention = "variance") -> torch.Tensor:
    """Xiao et al. 2018: a conv kernel that is zero except at its centre tap, which holds an
    orthogonal (out x in) matrix times ``gain``. Keeps the norm of every input exactly at init.

    Raises:
        ShapeError: a tensor that is not a conv kernel (out, in, k1[, k2[, k3]]).
    """
    check.floating_tensor(tensor)
    if tensor.dim() < 3:
        raise ShapeError(
            f"delta_orthogonal_ needs a conv kernel (out, in, *kernel) with 3-5 dimensions; got shape "
            f"{tuple(tensor.shape)}; use orthogonal_ for matrices")
    if tensor.numel() == 0 or tensor.is_meta:
        return tensor
    centre = tuple(k // 2 for k in tensor.shape[2:])
    matrix = orthogonal_(torch.empty(tensor.shape[:2], dtype=tensor.dtype, device=tensor.device), gain,
                         generator, nonlinearity=nonlinearity, convention=convention)
    with torch.no_grad():
        tensor.zero_()
        tensor[(slice(None), slice(None), *centre)] = matrix
    return tensor


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """torch's truncated normal, unchanged: N(mean, std) cut to [a, b] (absolute values).

    Note the std of the result is below ``std``; :func:`variance_scaling_` corrects for that."""
    check.floating_tensor(tensor)
    mean, std = check.real(mean, "mean"), check.real(std, "std", low=0.0, strict=True)
    a, b = check.real(a, "a"), check.real(b, "b", low=a, strict=True, fix="the cut is [a, b] with a < b")
    return torch.nn.init.trunc_normal_(tensor, mean, std, a, b, generator=generator)


def zeros_(tensor: torch.Tensor) -> torch.Tensor:
    """Fill with 0 in place."""
    check.tensor(tensor)
    with torch.no_grad():
        return tensor.zero_()


def ones_(tensor: torch.Tensor) -> torch.Tensor:
    """Fill with 1 in place."""
    check.tensor(tensor)
    with torch.no_grad():
        return tensor.fill_(1.0)
