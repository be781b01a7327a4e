"""Box-Muller's float64 log, sin, cos and sqrt from +, -, *, / alone, for :mod:`initscope._philox`.

The same steps, in the same order, as ``_philox.cpp`` (see its header): every op is IEEE-rounded
on the CPU and on CUDA, so the torch-ops path and the C++ kernel give the same bits, which the
math library's functions (torch.sqrt of float64 is not even correctly rounded on the CPU) would
not. Accuracy: a few 1e-16 relative (tested against the math library).
"""
from __future__ import annotations

import math

import torch

__all__ = ["radius", "turn", "root"]

_LN2 = float.fromhex("0x1.62e42fefa39efp-1")  # the same constants as _philox.cpp
_SQRT2 = float.fromhex("0x1.6a09e667f3bcdp+0")
_RSQRT_SEED = 0x5FE6EB50C7B537A9
_PI4_STEP = float.fromhex("0x1.921fb54442d18p-1") * 2.0 ** -29
_LOG = [2 / (2 * j + 1) for j in range(11)]  # 2 atanh(s) = sum 2 s^(2j+1) / (2j+1)
_SIN = [(-1) ** j / math.factorial(2 * j + 1) for j in range(8)]
_COS = [(-1) ** j / math.factorial(2 * j) for j in range(9)]


def _horner(x: torch.Tensor, coefficients: list[float]) -> torch.Tensor:
    """sum c_j x^j by Horner's rule, highest coefficient first."""
    p = torch.full_like(x, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        p = p * x + c  # two roundings, as in the kernel (no fused multiply-add)
    return p


def radius(w: torch.Tensor) -> torch.Tensor:
    """sqrt(-2 ln u), u = (w + 0.5) 2^-32, by the kernel's polynomial (see _philox.cpp)."""
    mantissa, exponent = torch.frexp(w.to(torch.float64) + 0.5)  # in [1/2, 1)
    m, k = mantissa * 2.0, exponent.to(torch.float64) - 33.0
    big = m > _SQRT2
    m, k = torch.where(big, m * 0.5, m), torch.where(big, k + 1.0, k)
    s = (m - 1.0) / (m + 1.0)
    return root((k * _LN2 + s * _horner(s * s, _LOG)) * -2.0)


def root(x: torch.Tensor) -> torch.Tensor:
    """sqrt(x) within 1 ulp by the kernel's steps (torch.sqrt of float64 is not correctly rounded on
    the CPU, so it would not match the C++ bits): seed of 1/sqrt(x) by the exponent-halving bit trick,
    four Newton steps (relative error 3e-2 -> 2e-3 -> 5e-6 -> 3e-11 -> 3e-16), r = x y, one correction."""
    y = (_RSQRT_SEED - (x.view(torch.int64) >> 1)).view(torch.float64)
    h = x * 0.5
    for _ in range(4):
        y = y * (1.5 - h * y * y)
    r = x * y
    return r + (y * 0.5) * (x - r * r)


def turn(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of 2 pi (w + 0.5) 2^-32: exact octant from the top 3 bits, then series."""
    octant = w >> 29
    f = (w & 0x1FFFFFFF) ^ ((octant & 1) * 0x1FFFFFFF)
    x = (f.to(torch.float64) + 0.5) * _PI4_STEP
    x2 = x * x
    sn, cs = x * _horner(x2, _SIN), _horner(x2, _COS)
    swap = (((octant + 1) >> 1) & 1) == 1
    a, b = torch.where(swap, sn, cs), torch.where(swap, cs, sn)
    return torch.where((((octant + 2) >> 2) & 1) == 1, -a, a), torch.where(octant >= 4, -b, b)
