"""Opt-in fused GPU pass for :mod:`initscope.stats`: one read of each tensor, in Triton.

Status: written and tested in Triton's CPU interpreter (``TRITON_INTERPRET=1``) against the
other paths, but not yet run or timed on a GPU, so it is off unless ``INITSCOPE_TRITON=1``.
On a GPU the torch-ops path reads a tensor about ten times; at batch 256 a ResNet's
activation is 67 MB, and those passes are most of the recording overhead.

The tensor is seen as [outer, units, inner] (units: the unit dimension, or 1) and cut into
tiles of at most 4096 values that each lie in whole units along the unit axis, so a tile's
nonzero counts per unit are one atomic add per unit. Each tile (one program) writes its
partial results: count, sum, M2 about its own mean (two passes over values held in
registers, in float64), min, max, and the integer counts; and it adds its 256-bin histogram
of the exponent byte of |x| into a global one. Nothing is read on the host. The results have the
layout of the CPU kernel's slab rows (see ``_fused_stats.cpp``): scalars [mean, var, min,
max, saturated], counts [256 exponent bins, below 2^-129, past each format's overflow edge,
NaN, +inf, -inf], and nonzero counts per unit.

A tensor costs three launches: a fill of the counts buffer, the tiles, and one program that
merges the tiles' partials (Chan's formula, in float64) and writes the scalars and counts.
A Triton that cannot compile the kernels turns the pass off for the process (:data:`failure`
says why), and the torch-ops path measures instead. Compiled for sm_90 with Triton 3.0 to 3.9
(the version torch 2.11 pins is 3.6) by a reviewer, without a GPU to run them.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os

import torch

from initscope._native import COUNTS as _COUNTS  # the layout of a counts row

__all__ = ["enabled", "measure"]

_TILE = 4096
_WARPS = 8  # 4 warps spill registers on some tiles (float64 partials)
_FORMATS = 4


#: Why the Triton pass is off after a failure ("" while it has not failed).
failure = ""


def enabled(x: torch.Tensor) -> bool:
    """Whether ``x`` takes this path: ``INITSCOPE_TRITON=1``, a CUDA float tensor, Triton importable,
    and no earlier failure to compile or launch."""
    if os.environ.get("INITSCOPE_TRITON", "") in ("", "0") or x.device.type != "cuda" or failure:
        return False
    return x.dtype in (torch.float32, torch.float16, torch.bfloat16) and _kernel() is not None


def _pow2(n: int, cap: int) -> int:
    return min(1 << max(0, math.ceil(math.log2(max(n, 1)))), cap)


def _tiles(outer: int, units: int, inner: int) -> tuple[int, int, int]:
    """Tile sides (outer, unit, inner), powers of two with a product of at most _TILE."""
    bi = _pow2(inner, _TILE)
    bu = _pow2(units, _TILE // bi)
    return _pow2(outer, _TILE // (bi * bu)), bu, bi


def measure(x: torch.Tensor, unit_dim: int | None, band: tuple[float, float] | None, level: float,
            edges: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(scalars, counts, nonzero counts) of ``x``, on its device (check :func:`enabled` first); None
    when the kernels fail to compile or launch (recorded in :data:`failure`, and the caller takes
    the torch-ops path from then on).

    Args:
        x: a float32, float16 or bfloat16 tensor (made contiguous here).
        unit_dim, band, level, edges: as :func:`initscope._native.fused` takes them.
    """
    global failure
    try:
        return _launch(_kernel(), x.contiguous(), unit_dim, band, level, edges)
    except Exception as e:  # noqa: BLE001  a Triton that cannot compile these kernels: torch ops instead
        failure = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        return None


def _launch(kernels, x: torch.Tensor, unit_dim: int | None, band: tuple[float, float] | None, level: float,
            edges: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if unit_dim is None:
        outer, units, inner = 1, 1, x.numel()
    else:
        d = unit_dim % x.dim()
        outer, units, inner = math.prod(x.shape[:d]), x.shape[d], math.prod(x.shape[d + 1:])
    bo, bu, bi = _tiles(outer, units, inner)
    grid = math.ceil(outer / bo) * math.ceil(units / bu) * math.ceil(inner / bi)
    part_f = torch.empty(grid, 5, dtype=torch.float64, device=x.device)
    part_i = torch.empty(grid, 5 + _FORMATS, dtype=torch.int64, device=x.device)
    # one zeroed buffer: the histogram and the nonzero counts are added to atomically
    ints = torch.zeros(_COUNTS + units, dtype=torch.int64, device=x.device)
    scal = torch.empty(5, dtype=torch.float64, device=x.device)
    centre, half = band if band is not None else (0.0, 0.0)
    # Triton launches on the current device: make it x's (no synchronisation)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        kernels.stats_kernel[(grid,)](
            x, part_f, part_i, ints, ints[_COUNTS:], outer, units, inner, float(centre), float(level * half),
            *edges, BAND=band is not None, BF16=x.dtype == torch.bfloat16, BO=bo, BU=bu, BI=bi,  # edges < 2^31
            num_warps=_WARPS)
        kernels.merge_kernel[(1,)](part_f, part_i, grid, x.numel(), scal, ints, BAND=band is not None, BLOCK=256)
    return scal, ints[:_COUNTS], ints[_COUNTS:]


@functools.lru_cache(maxsize=1)
def _kernel():
    """The module of Triton kernels (compiled on their first launch), or None without Triton."""
    from initscope import _triton_kernel

    return _triton_kernel if _triton_kernel.triton is not None else None
