"""The device side of :mod:`initscope.stats`: the reductions queued for one tensor.

The torch-ops path reads a tensor about ten times (mean, var, aminmax, the nonzero mask,
per-unit sums, the shift to 12-bit codes and their histogram); on the CPU a float32 tensor
takes the fused kernel instead (:mod:`initscope._native`), which writes into the
accumulator's slab. Nothing here reads a value on the host. :mod:`initscope._decode` turns
the results into :class:`initscope.stats.Stats`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from initscope import _native, _triton_stats

__all__ = ["FORMATS", "HIST_EXPONENTS", "SATURATION_LEVEL"]

FORMATS = ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2")
_FORMAT_DTYPES = (torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)
#: Lower edges (as powers of two) of the octave bins; ``hist`` is
#: [zero, 0<|x|<2^-126, one bin per octave [2^e, 2^(e+1)) for e in HIST_EXPONENTS, |x|>=2^128, nonfinite].
HIST_EXPONENTS = np.arange(-126, 128)
#: A bounded activation is saturated where |y - centre| > SATURATION_LEVEL * half_width (|tanh| > 0.99).
SATURATION_LEVEL = 0.99
_CODES, _SUBHISTS = 4096, 8  # sign + exponent + 3 mantissa bits; CPU sub-histograms
_EXACT_F32 = 2**24  # counts summed as float32 are exact below this


def _format_table() -> np.ndarray:
    """Per format: log2 smallest normal, log2 smallest subnormal, first fine code past the max, max."""
    rows = []
    for dt in _FORMAT_DTYPES:
        fi = torch.finfo(dt)
        top = math.floor(math.log2(fi.max))
        rows.append((round(math.log2(fi.tiny)), round(math.log2(fi.tiny * fi.eps)),
                     (top + 127) * 8 + int((fi.max / 2.0**top - 1) * 8) + 1, fi.max))
    return np.array(rows)


_FMT = _format_table()
#: Per format, the float32 bit pattern of the overflow edge (the first fine code past the max):
#: a finite |x| whose bits are at least this overflows the format.
_EDGE_BITS = [int(c) << 20 for c in _FMT[:, 2]]
#: Per format, the exponent bins 1..k (of the kernel's histogram of |x|) below its smallest normal
#: and subnormal; -1 where that is below 2^-126 (then the values under 2^-129 are the ones flushed).
_NORM_BINS = [int(v) + 126 for v in _FMT[:, 0]]
_SUB_BINS = [int(v) + 126 if v >= -126 else -1 for v in _FMT[:, 1]]


class _Pending:
    """One tensor's statistics, still on its device.

    Either ``parts``, (scalars, counts, nonzero counts) on the tensor's device, or ``slot``,
    the (row, offset, width) of the CPU kernel's results in the accumulator's slab. The counts
    are the torch-ops path's 12-bit code histogram (``zeros_binned`` says whether zeros were
    counted in it), or, with ``exponents`` (the slab, and the Triton pass), the exponent
    histogram of |x| followed by the sub-octave counts (see :func:`initscope._decode._classes`).
    """

    __slots__ = ("parts", "count", "units", "sat", "zeros_binned", "slot", "exponents")

    def __init__(self, parts, count, units, sat, zeros_binned, slot=None, exponents=False):
        self.parts, self.count, self.units, self.sat = parts, count, units, sat
        self.zeros_binned, self.slot, self.exponents = zeros_binned, slot, exponents or slot is not None


def _flat(t: torch.Tensor) -> torch.Tensor:
    """All elements as a 1-D tensor in memory order (a view when the layout is dense)."""
    if t.is_contiguous():
        return t.view(-1)
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d))
    p = t.permute(order)
    return p.view(-1) if p.is_contiguous() else p.reshape(-1)


def _codes64(x: torch.Tensor) -> torch.Tensor:
    """The float32 code layout (biased) for float64 values, plus 4096/4097 for finite |x| >= 2^128."""
    m, e = torch.frexp(x)
    big = e.to(torch.int64) + 126  # biased float32 exponent of floor(log2|x|)
    pos = 2048 * (~torch.signbit(x)).to(torch.int64)
    code = big.clamp(0, 254) * 8 + ((m.abs() * 16).to(torch.int64) - 8).clamp(0, 7)
    code = torch.where(big < 1, torch.zeros_like(code), code) + pos
    code = torch.where(big > 254, 4097 - pos // 2048, code)
    code = torch.where(x == 0, pos, code)
    code = torch.where(torch.isinf(x), 255 * 8 + pos, code)
    return torch.where(torch.isnan(x), torch.full_like(code, 255 * 8 + 4), code)


def _shift_into_int16() -> bool:
    """Whether an int32 shift written into an int16 ``out=`` is computed in int32 first."""
    probe = torch.tensor([0x40000000], dtype=torch.int32)
    return torch.bitwise_right_shift(probe, 20, out=torch.empty(1, dtype=torch.int16)).item() == 1024


_NARROW_CODES = _shift_into_int16()


def _count_gpu(codes: torch.Tensor, nonzero: torch.Tensor, bias: int, bins: int) -> torch.Tensor:
    """Histogram of the nonzero values' ``codes + bias``, without a host synchronisation.

    torch.bincount reads its max on the host and index_add_'s global atomics serialise on
    the zero bin; histc counts in shared memory and ignores values outside [min, max], so
    zeros (already counted exactly) become 0 and fall below min=1. Chunks of 2^24 keep the
    float32 counts exact.
    """
    f = torch.empty(codes.shape, dtype=nonzero.dtype, device=codes.device)
    f = torch.add(codes, bias + 1, out=f).mul_(nonzero)
    parts = [torch.histc(c, bins, 1, bins + 1) for c in _flat(f).split(_EXACT_F32)]
    return parts[0] if len(parts) == 1 else torch.stack(parts).to(torch.float64).sum(0)


def _count(codes: torch.Tensor, bins: int, bias: int) -> torch.Tensor:
    """Histogram of ``codes + bias`` (in [0, bins)) on the CPU; ``codes`` is modified."""
    n = codes.numel()
    if n >= 8 * bins * _SUBHISTS:
        # Interleaved sub-histograms: neighbouring values often share a code, and repeated
        # increments of one counter stall the CPU; eight counters per code avoid it.
        head = codes[: n - n % _SUBHISTS].view(-1, _SUBHISTS)
        head.add_(torch.arange(bias, bias + _SUBHISTS * bins, bins, dtype=codes.dtype))
        if n % _SUBHISTS:
            codes[n - n % _SUBHISTS:].add_(bias)
        return torch.bincount(codes, minlength=bins * _SUBHISTS).view(_SUBHISTS, bins).sum(0)
    return torch.bincount(codes.add_(bias) if bias else codes, minlength=bins)


def _histogram(x: torch.Tensor, nonzero: torch.Tensor) -> torch.Tensor:
    """Counts of the 12-bit codes (sign, exponent, 3 mantissa bits) of float32 or float64 ``x``."""
    cpu = not _device_path(x)
    if x.dtype == torch.float64:
        codes, bins, bias = _codes64(x), _CODES + 2, 0
    else:  # an arithmetic shift of the bits gives the code minus 2048
        narrow = cpu and _NARROW_CODES  # int16 halves the traffic; 8 x 4096 sub-histogram codes fit
        out = torch.empty(x.shape, dtype=torch.int16, device=x.device) if narrow else None
        codes, bins, bias = torch.bitwise_right_shift(x.view(torch.int32), 20, out=out), _CODES, 2048
    return _count(_flat(codes), bins, bias) if cpu else _count_gpu(codes, nonzero, bias, bins)


def _nonzero(nz: torch.Tensor, unit_dim: int | None) -> tuple[int | None, torch.Tensor]:
    """Nonzero counts per unit (or in total) from a 0/1 float tensor; exact in float32 below 2^24."""
    units = None if unit_dim is None else nz.shape[unit_dim]
    wide = torch.float64 if nz.numel() // (units or 1) >= _EXACT_F32 else None
    if units is None:
        return None, nz.sum(dtype=wide).reshape(1)
    dims = [d for d in range(nz.dim()) if d != unit_dim % nz.dim()]
    return units, nz.sum(dims, dtype=wide)


def _device_path(x: torch.Tensor) -> bool:
    """Whether ``x`` takes the accelerator variant of the torch-ops path (Welford var_mean and a
    histc that leaves zeros out, no bincount: nothing that reads a value on the host)."""
    return x.device.type != "cpu"


def _measure(x: torch.Tensor, unit_dim: int | None, band: tuple[float, float] | None,
             slab: _native.Slab, arenas: dict) -> _Pending:
    """Queue the reductions for one floating tensor; nothing leaves the device. ``arenas``: the
    accumulator's :class:`initscope._triton_stats.Arena` per device, made here on first use."""
    units = None if unit_dim is None else x.shape[unit_dim]
    if _device_path(x) and _triton_stats.enabled(x):  # CUDA, where Triton imports
        arena = arenas.get(x.device)
        if arena is None:
            arena = arenas[x.device] = _triton_stats.Arena(x.device)
        parts = _triton_stats.measure(x, unit_dim, band, SATURATION_LEVEL, _EDGE_BITS, arena)
        if parts is not None:
            return _Pending(parts, x.numel(), units, band is not None, True, exponents=True)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()  # exact for fp16, bf16 and fp8
    slot = _native.fused(x, unit_dim, band, SATURATION_LEVEL, _EDGE_BITS, slab)  # one pass, where it compiles
    if slot is None and x.dtype == torch.float32 and x.device.type == "cpu" and not x.is_contiguous() \
            and _native.available():
        x = x.contiguous()  # memory with gaps: a copy costs less than the torch-ops path's ten passes
        slot = _native.fused(x, unit_dim, band, SATURATION_LEVEL, _EDGE_BITS, slab)
    if slot is not None:
        return _Pending(None, x.numel(), units, band is not None, True, slot=slot)
    gpu = _device_path(x)
    if gpu:  # one Welford pass
        var, mean = torch.var_mean(x, correction=0)
    else:  # var_mean takes a slow generic path on the CPU; var alone is fast and exact to ~1e-8
        mean, var = x.mean(), torch.var(x, correction=0)
    lo, hi = torch.aminmax(x)
    nz = torch.ne(x, 0, out=torch.empty_like(x))
    units, nonzero = _nonzero(nz, unit_dim)
    hist = _histogram(x, nz)
    scal = [mean, var, lo, hi]
    if band is not None:  # |y - centre| > level * half_width; reuses nz's memory, after the histogram
        dev = torch.sub(x, band[0], out=nz).abs_() if band[0] else torch.abs(x, out=nz)
        scal.append(torch.gt(dev, SATURATION_LEVEL * band[1], out=dev).sum())
    return _Pending((torch.stack(scal), hist, nonzero), x.numel(), units, band is not None, not gpu)
