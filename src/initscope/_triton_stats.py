"""The fused GPU pass of :mod:`initscope.stats`: one read of each tensor, in Triton.

On by default for CUDA tensors where Triton imports (``INITSCOPE_TRITON=0`` turns it off); the
torch-ops path reads a tensor about ten times. Checked on an H200 (torch 2.11, Triton 3.6):
its counts, histogram and extremes equal the torch-ops path's and its moments float64 numpy's
on every case of ``tests/test_triton_stats.py``, and it never synchronises with the host. It
costs about 7 reads of a tensor's memory (the per-value work is the limit, not the memory):
2.2 to 2.6x faster than the torch ops per tensor and half their recording overhead on the ResNet
of ``benchmarks/probe_overhead.py`` (``benchmarks/RESULTS.md``).

The tensor is seen as [outer, units, inner] (units: the unit dimension, or 1) and cut into
tiles of at most :data:`_TILE` values that lie in whole units along the unit axis. A few programs
per multiprocessor each take one chunk of units and loop over its tiles, keeping per-lane
running results in registers: float64 sums of x - K and (x - K)^2 about a shift K (the tensor's
first finite value), min, max, counts of NaN, infinities, tiny and saturated values and values
past each format's overflow edge, nonzero counts, and the 256-bin histogram of the exponent byte
of |x|. At the end each program reduces its lanes once into a partial row and adds its histogram
and per-unit nonzero counts into the tensor's (atomically). Everything lands in the accumulator's
:class:`Arena` for the device; at :meth:`initscope.stats.StatsAccumulator.to_host` one launch
merges every tensor's partial rows (Chan's formula, in float64) into the layout of the CPU
kernel's slab rows (see ``_fused_stats.cpp``): scalars [mean, var, min, max, saturated], counts
[256 exponent bins, below 2^-129, past each format's overflow edge, NaN, +inf, -inf], and
nonzero counts per unit. Nothing is read on the host before that.

A Triton that cannot compile the kernels turns the pass off for the process (:data:`failure`
says why), and the torch-ops path measures instead.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os

import torch

from initscope._native import COUNTS as _COUNTS  # the layout of a counts row

__all__ = ["Arena", "enabled", "measure"]

# The fastest of 10 configurations on a 256x64x32x32 activation on an H200 (benchmarks/gpu_stats_kernel.py)
_TILE = 1024  # values a program reads per lap
_WARPS = 8
_PROGRAMS = 4  # programs per streaming multiprocessor
_LAPS = (1 << 15) - 1  # at most this many tiles per program: its per-lane counts have 15-bit fields
_FORMATS = 4


#: Why the Triton pass is off after a failure ("" while it has not failed).
failure = ""
_checked: set[torch.device] = set()  # devices where both kernels were built and launched


def enabled(x: torch.Tensor) -> bool:
    """Whether ``x`` takes this path: a CUDA float tensor, Triton importable, no earlier failure to
    compile or launch, and not turned off (``INITSCOPE_TRITON=0``)."""
    if x.device.type != "cuda" or failure or os.environ.get("INITSCOPE_TRITON", "") == "0":
        return False
    return x.dtype in (torch.float32, torch.float16, torch.bfloat16) and _kernel() is not None


def _pow2(n: int, cap: int) -> int:
    return min(1 << max(0, math.ceil(math.log2(max(n, 1)))), cap)


def _tiles(outer: int, units: int, inner: int) -> tuple[int, int, int]:
    """Tile sides (outer, unit, inner), powers of two with a product of at most _TILE."""
    bi = _pow2(inner, _TILE)
    bu = _pow2(units, _TILE // bi)
    return _pow2(outer, _TILE // (bi * bu)), bu, bi


@functools.lru_cache(maxsize=None)
def _processors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


class Arena:
    """One device's results of the Triton pass for one batch: zeroed int64 chunks (and their
    float64 views) that the programs write their partial rows, histograms and per-unit counts
    into, and the merge jobs, launched at once by :meth:`finish`."""

    def __init__(self, device: torch.device, chunk: int = 1 << 20) -> None:
        self.device = device
        self.chunk = chunk  # int64 words a chunk holds at least (8 MB)
        self.chunks: list[list] = []  # [ints, floats, used, jobs]
        self.at = 0  # the chunk regions are taken from; earlier ones are full for this batch

    def take(self, words: int) -> tuple[list, int]:
        """A zeroed region of ``words`` int64 words: (its chunk, its offset)."""
        while self.at < len(self.chunks):
            c = self.chunks[self.at]
            if c[2] + words <= c[0].numel():
                break
            self.at += 1
        else:  # none left with room: a new chunk, at self.at
            ints = torch.zeros(max(self.chunk, words), dtype=torch.int64, device=self.device)
            c = [ints, ints.view(torch.float64), 0, []]
            self.chunks.append(c)
        at = c[2]
        c[2] += words
        return c, at

    def finish(self) -> None:
        """Launch the merge of every tensor measured since the last :meth:`reset` (one launch per chunk)."""
        for ints, floats, _, jobs in self.chunks:
            if jobs:
                table = torch.tensor(jobs, dtype=torch.int64).to(self.device, non_blocking=True)
                with _on(self.device):
                    _kernel().merge_kernel[(len(jobs),)](floats, ints, table, BLOCK=256)
                jobs.clear()

    def reset(self) -> None:
        """Zero what was used (after the results were read) and start over from the first chunk."""
        self.at = 0
        for c in self.chunks:
            if c[2]:
                c[0][:c[2]].zero_()
            c[2] = 0
            c[3].clear()


def _on(device: torch.device):
    """Triton launches on the current device: make it ``device`` (no synchronisation)."""
    return torch.cuda.device(device) if device.type == "cuda" and device.index != torch.cuda.current_device() \
        else contextlib.nullcontext()


def measure(x: torch.Tensor, unit_dim: int | None, band: tuple[float, float] | None, level: float,
            edges: list[int], arena: Arena) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(scalars, counts, nonzero counts) of ``x`` as views into ``arena``, valid once
    ``arena.finish()`` has run (check :func:`enabled` first); None when the kernels fail to
    compile or launch (recorded in :data:`failure`, and the caller takes the torch-ops path from
    then on).

    Args:
        x: a float32, float16 or bfloat16 tensor (made contiguous here).
        unit_dim, band, level, edges: as :func:`initscope._native.fused` takes them.
        arena: the accumulator's arena for ``x``'s device.
    """
    global failure
    try:
        if x.device not in _checked:  # both kernels built here, so that to_host() never meets a failure
            scratch = Arena(x.device, chunk=0)
            _launch(_kernel(), torch.ones(3, device=x.device), None, None, level, edges, scratch)
            scratch.finish()
            _checked.add(x.device)
        return _launch(_kernel(), x.contiguous(), unit_dim, band, level, edges, arena)
    except Exception as e:  # noqa: BLE001  a Triton that cannot compile these kernels: torch ops instead
        failure = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        return None


def _launch(kernels, x: torch.Tensor, unit_dim: int | None, band: tuple[float, float] | None, level: float,
            edges: list[int], arena: Arena) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if unit_dim is None:
        outer, units, inner = 1, 1, x.numel()
    else:
        d = unit_dim % x.dim()
        outer, units, inner = math.prod(x.shape[:d]), x.shape[d], math.prod(x.shape[d + 1:])
    bo, bu, bi = _tiles(outer, units, inner)
    n_u = -(-units // bu)
    tiles = -(-outer // bo) * -(-inner // bi)  # per chunk of units
    per_chunk = min(tiles, max(-(-_PROGRAMS * _processors(x.device) // n_u), -(-tiles // _LAPS)))
    programs = n_u * per_chunk
    pf, pi = programs * kernels.PART_F, programs * kernels.PART_I
    chunk, at = arena.take(pf + pi + _COUNTS + units + 5)
    ints, floats = chunk[0], chunk[1]
    h_off = at + pf + pi
    u_off, s_off = h_off + _COUNTS, h_off + _COUNTS + units
    centre, half = band if band is not None else (0.0, 0.0)
    with _on(x.device):
        kernels.stats_kernel[(programs,)](
            x, floats, ints, at, at + pf, h_off, u_off, outer, units, inner, per_chunk, float(centre),
            float(level * half), *edges, BAND=band is not None, BF16=x.dtype == torch.bfloat16,  # edges < 2^31
            BO=bo, BU=bu, BI=bi, num_warps=_WARPS)
    chunk[3].append((at, at + pf, programs, x.numel(), s_off, h_off, int(band is not None)))
    return floats[s_off:s_off + 5], ints[h_off:h_off + _COUNTS], ints[u_off:u_off + units]


@functools.lru_cache(maxsize=1)
def _kernel():
    """The module of Triton kernels (compiled on their first launch), or None without Triton."""
    from initscope import _triton_kernel

    return _triton_kernel if _triton_kernel.triton is not None else None
