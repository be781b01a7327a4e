"""Fused, mergeable statistics of tensors, collected on device and moved to the host once.

A :class:`StatsAccumulator` measures many tensors where they live, with a few fused
reductions each and no host synchronisation; :meth:`StatsAccumulator.to_host` moves all of
them in one transfer. Each tensor's result is a :class:`Stats`: count, mean and M2 (sum of
squared deviations, merged with Chan's formula), min, max, exact counts of zeros, NaN and
infinities, a histogram of log2|x|, per-unit nonzero counts (dead units), and how many
values fp16, bf16, fp8 e4m3 and fp8 e5m2 could not hold. ``a.merge(b)`` gives the
statistics of the concatenated data.

How the counts are made: a float32's bits hold its sign, exponent and mantissa, so a shift
and a mask give a 12-bit code (sign, 8 exponent bits, 3 mantissa bits) and one bincount
counts every class at once, without casting. Octave edges 2^k are exact, so every smallest
normal and subnormal is exact except bf16's subnormal 2^-133, which lies inside float32's
own subnormal range (counted as an upper bound: all nonzero values below 2^-129).
Overflow counts the values that certainly round to inf (or NaN for e4m3): |x| at or above
the first 1/8-octave edge past the format's max, i.e. 65536 for fp16, 2^128 for bf16, 480 for
e4m3 and 61440 for e5m2 (exact there). The few values within 3% below that edge are missed.
fp16, bf16 and fp8 inputs widen to float32 exactly; float64 takes an exact ``frexp`` path.
NaN is told from inf by the leading mantissa bits, so a signalling NaN whose three leading
mantissa bits are zero (never produced by arithmetic) would count as an infinity.
Moments reduce in the tensor's precision (float32 pairwise sums, or float64) and merge in
float64. On the CPU a float32 tensor (made contiguous first) takes one fused pass instead of these torch
ops, where a C++ compiler is found (:mod:`initscope._native`; ``INITSCOPE_NO_NATIVE=1``
turns it off): the same counts and histogram, moments rounded to float32 from float64 sums.

Examples:
    >>> import torch
    >>> s = tensor_stats(torch.tensor([[0.0, 1.0], [0.0, -3.0]]), unit_dim=1)
    >>> s.count, s.mean, s.zeros, s.dead_units
    (4, -0.5, 2, 1)
    >>> s.merge(tensor_stats(torch.tensor([[2.0, 2.0]]), unit_dim=1)).dead_units
    0
"""
from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import torch

from initscope import _native
from initscope.errors import ShapeError

__all__ = ["FORMATS", "HIST_EXPONENTS", "SATURATION_LEVEL", "Stats", "StatsAccumulator", "tensor_stats"]

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


@dataclass(frozen=True, eq=False)
class Stats:
    """Statistics of one tensor (or of several, merged). Host-side and immutable.

    Attributes:
        count: number of values.
        mean: mean (NaN if the data hold NaN or both infinities).
        m2: sum of squared deviations from the mean.
        min, max: extremes (NaN if the data hold NaN).
        zeros, nan, posinf, neginf: exact counts.
        hist: int64 counts, see :data:`HIST_EXPONENTS`.
        formats: int64 [len(FORMATS), 3]: values below the smallest normal, below the smallest
            subnormal (both nonzero), and above the max (finite), per format.
        unit_nonzero: nonzero values per unit (channel or feature), or None.
        saturated: values in a bounded activation's saturated band, or None.
    """

    count: int
    mean: float
    m2: float
    min: float
    max: float
    zeros: int
    nan: int
    posinf: int
    neginf: int
    hist: np.ndarray
    formats: np.ndarray
    unit_nonzero: np.ndarray | None = None
    saturated: int | None = None

    @classmethod
    def empty(cls, units: int | None = None, saturation: bool = False) -> Stats:
        """Statistics of no data; the identity of :meth:`merge`."""
        return cls(0, math.nan, 0.0, math.inf, -math.inf, 0, 0, 0, 0, np.zeros(258, np.int64),
                   np.zeros((len(FORMATS), 3), np.int64),
                   None if units is None else np.zeros(units, np.int64), 0 if saturation else None)

    @property
    def var(self) -> float:
        """Population variance, M2 / count."""
        return self.m2 / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation."""
        return math.sqrt(self.var) if self.var >= 0 else math.nan

    @property
    def second_moment(self) -> float:
        """E[x^2] = var + mean^2, the quantity the He/Kaiming derivation tracks."""
        return self.var + self.mean * self.mean  # inf rather than OverflowError

    @property
    def absmax(self) -> float:
        """max |x|."""
        return max(abs(self.min), abs(self.max)) if self.count else math.nan

    @property
    def nonfinite(self) -> int:
        """NaN, +inf and -inf together."""
        return self.nan + self.posinf + self.neginf

    def _frac(self, n: float) -> float:
        return n / self.count if self.count else math.nan

    @property
    def zero_frac(self) -> float:
        """Fraction of exact zeros."""
        return self._frac(self.zeros)

    @property
    def nan_frac(self) -> float:
        """Fraction of NaN."""
        return self._frac(self.nan)

    @property
    def dead_units(self) -> int:
        """Units (channels or features) that are zero for the whole batch."""
        return 0 if self.unit_nonzero is None else int((self.unit_nonzero == 0).sum())

    @property
    def dead_frac(self) -> float:
        """Fraction of units that are zero for the whole batch (NaN without units)."""
        if self.unit_nonzero is None or not len(self.unit_nonzero):
            return math.nan
        return self.dead_units / len(self.unit_nonzero)

    @property
    def saturation_frac(self) -> float:
        """Fraction of values in the saturated band (NaN where not measured)."""
        return math.nan if self.saturated is None else self._frac(self.saturated)

    @property
    def underflow_frac(self) -> dict[str, float]:
        """Per format: fraction of nonzero values below its smallest normal."""
        return {f: self._frac(int(n)) for f, n in zip(FORMATS, self.formats[:, 0])}

    @property
    def flush_frac(self) -> dict[str, float]:
        """Per format: fraction of nonzero values below its smallest subnormal (bf16: upper bound)."""
        return {f: self._frac(int(n)) for f, n in zip(FORMATS, self.formats[:, 1])}

    @property
    def overflow_frac(self) -> dict[str, float]:
        """Per format: fraction of finite values that certainly overflow it (see module notes)."""
        return {f: self._frac(int(n)) for f, n in zip(FORMATS, self.formats[:, 2])}

    def merge(self, other: Stats) -> Stats:
        """Statistics of both datasets together (Chan et al.'s parallel variance).

        Raises:
            ShapeError: the two have different numbers of units.
        """
        if (self.unit_nonzero is None) != (other.unit_nonzero is None) or (
                self.unit_nonzero is not None and len(self.unit_nonzero) != len(other.unit_nonzero)):
            raise ShapeError(f"cannot merge statistics over {_units(self)} with statistics over "
                             f"{_units(other)}; merge tensors with the same unit dimension")
        if not other.count:
            return self
        if not self.count:
            return other
        n = self.count + other.count
        if math.isfinite(self.mean) and math.isfinite(other.mean):
            delta = other.mean - self.mean
            mean = self.mean + delta * other.count / n
            m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / n
        else:  # an infinite or NaN mean carries over as the data's mean would; M2 is undefined
            mean, m2 = self.mean * (self.count / n) + other.mean * (other.count / n), math.nan
        units = None if self.unit_nonzero is None else self.unit_nonzero + other.unit_nonzero
        sat = None if self.saturated is None or other.saturated is None else self.saturated + other.saturated
        return Stats(n, mean, m2, _nanmin(self.min, other.min), _nanmax(self.max, other.max),
                     self.zeros + other.zeros, self.nan + other.nan, self.posinf + other.posinf,
                     self.neginf + other.neginf, self.hist + other.hist, self.formats + other.formats,
                     units, sat)

    def to_dict(self) -> dict:
        """JSON-ready summary: scalars (non-finite floats as strings), fractions and the histogram."""
        out = {f.name: _json(getattr(self, f.name)) for f in fields(self)
               if f.name not in ("hist", "formats", "unit_nonzero")}
        for name in ("std", "second_moment", "absmax", "zero_frac", "dead_frac", "saturation_frac"):
            out[name] = _json(getattr(self, name))
        out["dead_units"] = self.dead_units
        for name in ("underflow_frac", "flush_frac", "overflow_frac"):
            out[name] = {k: _json(v) for k, v in getattr(self, name).items()}
        out["hist"] = self.hist.tolist()
        return out


def _units(s: Stats) -> str:
    return "no units" if s.unit_nonzero is None else f"{len(s.unit_nonzero)} units"


def _nanmin(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else min(a, b)


def _nanmax(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def _json(v: object) -> object:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class _Pending:
    """One tensor's statistics, still on its device.

    Either ``parts``, (scalars, 12-bit code histogram, nonzero counts) from the torch-ops path
    (``zeros_binned`` says whether zeros were counted in the histogram), or ``slot``, the
    (row, offset, width) of the fused kernel's results in the accumulator's slab: its counts
    are the exponent histogram of |x| followed by the sub-octave counts (see :func:`_classes`).
    """

    __slots__ = ("parts", "count", "units", "sat", "zeros_binned", "slot")

    def __init__(self, parts, count, units, sat, zeros_binned, slot=None):
        self.parts, self.count, self.units, self.sat = parts, count, units, sat
        self.zeros_binned, self.slot = zeros_binned, slot

    @property
    def exponents(self) -> bool:
        return self.slot is not None


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
    cpu = x.device.type == "cpu"
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


def _measure(x: torch.Tensor, unit_dim: int | None, band: tuple[float, float] | None,
             slab: _native.Slab) -> _Pending:
    """Queue the reductions for one floating tensor; nothing leaves the device."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()  # exact for fp16, bf16 and fp8
    if x.dtype == torch.float32 and x.device.type == "cpu" and not x.is_contiguous() and _native.available():
        x = x.contiguous()  # a copy costs less than the torch-ops path's ten passes
    slot = _native.fused(x, unit_dim, band, SATURATION_LEVEL, _EDGE_BITS, slab)  # one pass, where it compiles
    if slot is not None:
        units = None if unit_dim is None else x.shape[unit_dim]
        return _Pending(None, x.numel(), units, band is not None, True, slot=slot)
    gpu = x.device.type != "cpu"
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


class StatsAccumulator:
    """Collects statistics of many tensors on their devices; moves them to the host at once.

    Nothing here reads a tensor value on the host, so it is safe inside forward hooks and
    tensor hooks: no synchronisation, no copy of the activation kept after :meth:`add`.

    Examples:
        >>> import torch
        >>> acc = StatsAccumulator()
        >>> acc.add("a", torch.ones(3))
        >>> acc.add("b", torch.zeros(2, 4), unit_dim=1)
        >>> [(k, s.count, s.zeros) for k, s in acc.to_host()]
        [('a', 3, 0), ('b', 8, 8)]
    """

    def __init__(self) -> None:
        self._items: list[tuple[Hashable, _Pending | Stats]] = []
        self._slab: _native.Slab | None = None  # host buffers of the fused kernel, made on first use

    def __len__(self) -> int:
        return len(self._items)

    def add(self, key: Hashable, x: torch.Tensor, *, unit_dim: int | None = None,
            saturation: tuple[float, float] | None = None) -> None:
        """Queue the statistics of a floating tensor under ``key``.

        Args:
            key: any hashable label, returned by :meth:`to_host`.
            x: a floating tensor; it is not kept.
            unit_dim: dimension that indexes units (channels, features); None for no units.
            saturation: (centre, half_width) of a bounded activation's range, or None.
        """
        x = x.detach()
        if not x.is_floating_point():
            raise TypeError(f"statistics need a floating tensor, got {x.dtype}")
        if x.dim() < 2:
            unit_dim = None
        if x.numel() == 0:
            units = None if unit_dim is None else x.shape[unit_dim]
            self._items.append((key, Stats.empty(units, saturation is not None)))
            return
        if self._slab is None and x.device.type == "cpu":
            self._slab = _native.Slab()
        self._items.append((key, _measure(x, unit_dim, saturation, self._slab)))

    def to_host(self) -> list[tuple[Hashable, Stats]]:
        """Move everything to the host (one transfer per device), decode, and clear."""
        items, self._items = self._items, []
        done = {i: s for i, (_, s) in enumerate(items) if isinstance(s, Stats)}
        fused = [i for i, (_, p) in enumerate(items) if isinstance(p, _Pending) and p.slot is not None]
        if fused:
            group = [items[i][1] for i in fused]
            done.update(zip(fused, _decode(*self._slab.read([p.slot for p in group]), group)))
        by_dev: dict[torch.device, list[int]] = {}
        for i, (_, p) in enumerate(items):
            if isinstance(p, _Pending) and p.slot is None:
                by_dev.setdefault(p.parts[0].device, []).append(i)
        for idx in by_dev.values():
            group = [items[i][1] for i in idx]
            done.update(zip(idx, _decode(*_transfer(group), group)))
        if self._slab is not None:
            self._slab.clear()
        return [(key, done[i]) for i, (key, _) in enumerate(items)]


def _transfer(group: list[_Pending], one_copy: bool | None = None) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """One device-to-host copy of a group's numbers: scalars [L, 5] (NaN-padded), and per tensor
    its counts and its nonzero counts (int64). On the CPU nothing is copied or widened, unless
    ``one_copy`` asks for the path other devices take (tests compare the two)."""
    n = len(group)
    sizes = [p.parts[0].numel() for p in group]
    order: list[tuple[int, int]] = []  # (tensor, part) in the order of the pieces
    pieces = [torch.cat([p.parts[0].to(torch.float64) for p in group])]
    for k in (1, 2):  # cat per dtype, then widen once
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, p in enumerate(group):
            by_dtype.setdefault(p.parts[k].dtype, []).append(i)
        for idx in by_dtype.values():
            pieces.append(torch.cat([group[i].parts[k] for i in idx]))
            order += [(i, k) for i in idx]
    if not (pieces[0].device.type != "cpu" if one_copy is None else one_copy):
        flat = pieces[0].numpy()
        ints = np.concatenate([t.numpy() if t.dtype == torch.int64 else np.rint(t.double().numpy()).astype(np.int64)
                               for t in pieces[1:]])
    else:  # one copy: everything as float64 (counts are whole numbers, exact below 2^53)
        both = torch.cat([pieces[0], *(t.to(torch.float64) for t in pieces[1:])]).cpu().numpy()
        flat, ints = both[:sum(sizes)], np.rint(both[sum(sizes):]).astype(np.int64)
    scal = np.full((n, 5), np.nan)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for width in set(sizes):
        rows = np.flatnonzero(np.array(sizes) == width)
        scal[rows, :width] = flat[starts[rows, None] + np.arange(width)]
    out: dict[int, list[np.ndarray]] = {1: [np.empty(0, np.int64)] * n, 2: [np.empty(0, np.int64)] * n}
    at = 0
    for i, k in order:
        m = group[i].parts[k].numel()
        out[k][i] = ints[at:at + m]
        at += m
    return scal, out[1], out[2]


class _Classes(NamedTuple):
    """Per tensor (rows), the counts every Stats field is made from."""

    octaves: np.ndarray    # [n, 256] exponent byte of |x|: 0 zeros and subnormals, 255 inf and NaN
    huge: np.ndarray       # finite |x| >= 2^128 (float64 data only)
    tiny: np.ndarray       # nonzero |x| < 2^-129
    over: np.ndarray       # [n, len(FORMATS)] finite values at or past each format's overflow edge
    nan: np.ndarray
    posinf: np.ndarray
    neginf: np.ndarray


def _classes(counts: list[np.ndarray], group: list[_Pending], zeros: np.ndarray) -> _Classes:
    """The counts of both layouts (code histograms, kernel exponent counts) in one form."""
    n = len(group)
    octaves, huge, tiny = np.zeros((n, 256), np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    over, special = np.zeros((n, len(FORMATS)), np.int64), np.zeros((n, 3), np.int64)
    kernel = [i for i, p in enumerate(group) if p.exponents]
    if kernel:  # [256 exponents, below 2^-129, one per format, NaN, +inf, -inf]
        k = np.stack([counts[i] for i in kernel])
        octaves[kernel], tiny[kernel] = k[:, :256], k[:, 256]
        over[kernel], special[kernel] = k[:, 257:257 + len(FORMATS)], k[:, 257 + len(FORMATS):]
    codes = [i for i, p in enumerate(group) if not p.exponents]
    if codes:
        raw = np.zeros((len(codes), _CODES + 2), np.int64)
        for row, i in enumerate(codes):
            raw[row, :counts[i].size] = counts[i]
        signed = raw[:, :_CODES].reshape(-1, 2, 256, 8)
        fine = signed.sum(1)  # [tensor, biased exponent, 3 mantissa bits]
        binned = zeros[codes] * np.array([group[i].zeros_binned for i in codes])  # the GPU leaves zeros out
        octaves[codes] = fine.sum(-1)
        octaves[codes, 0] += zeros[codes] - binned
        huge[codes] = raw[:, _CODES] + raw[:, _CODES + 1]
        tiny[codes] = fine[:, 0, 0] - binned
        # above[:, c]: finite codes >= c, c = exponent * 8 + bits
        above = np.concatenate([fine.reshape(-1, 2048)[:, :255 * 8][:, ::-1].cumsum(1)[:, ::-1],
                                np.zeros((len(codes), 1), np.int64)], axis=1)
        over[codes] = above[:, _FMT[:, 2].astype(int)] + huge[codes, None]
        special[codes] = np.stack([fine[:, 255, 1:].sum(-1), signed[:, 1, 255, 0], signed[:, 0, 255, 0]], axis=1)
    return _Classes(octaves, huge, tiny, over, special[:, 0], special[:, 1], special[:, 2])


def _decode(scal: np.ndarray, counts: list[np.ndarray], nonzero: list[np.ndarray], group: list[_Pending]) -> list[Stats]:
    """Turn the transferred numbers back into Stats, all tensors of a group at once."""
    total = np.array([p.count for p in group])
    zeros = total - np.array([nz.sum() for nz in nonzero])
    c = _classes(counts, group, zeros)
    subnormal = c.octaves[:, 0] - zeros  # 0 < |x| < 2^-126
    octaves = c.octaves[:, 1:255]
    hist = np.concatenate([zeros[:, None], subnormal[:, None], octaves, c.huge[:, None],
                           (c.nan + c.posinf + c.neginf)[:, None]], axis=1)
    # below[:, j]: nonzero |x| < 2^(j - 126)
    below = subnormal[:, None] + np.concatenate([np.zeros((len(group), 1), np.int64), octaves.cumsum(1)], axis=1)
    norm, sub = _FMT[:, 0].astype(int), _FMT[:, 1].astype(int)
    flush = np.where(sub >= -126, below[:, np.maximum(sub, -126) + 126], c.tiny[:, None])
    fmt = np.stack([below[:, norm + 126], flush, c.over], axis=-1)
    m2 = scal[:, 1] * total
    return [Stats(int(p.count), float(scal[i, 0]), float(m2[i]), float(scal[i, 2]), float(scal[i, 3]),
                  int(zeros[i]), int(c.nan[i]), int(c.posinf[i]), int(c.neginf[i]), hist[i], fmt[i],
                  nonzero[i] if p.units is not None else None, int(round(scal[i, 4])) if p.sat else None)
            for i, p in enumerate(group)]


def tensor_stats(x: torch.Tensor, *, unit_dim: int | None = None,
                 saturation: tuple[float, float] | None = None) -> Stats:
    """Statistics of one floating tensor (a convenience over :class:`StatsAccumulator`).

    Args:
        x: floating tensor of any shape, on any device.
        unit_dim: dimension indexing units, e.g. 1 for (batch, channels, H, W) or -1 for
            (batch, tokens, features); None for no per-unit counts.
        saturation: (centre, half_width) of a bounded activation, e.g. (0, 1) for tanh.

    Returns:
        The :class:`Stats` of ``x``.

    Examples:
        >>> import torch
        >>> s = tensor_stats(torch.tensor([1e-6, 7e4, float("nan"), 0.0]))
        >>> s.nan, s.zeros, s.underflow_frac["fp16"], s.overflow_frac["fp16"]
        (1, 1, 0.25, 0.25)
    """
    acc = StatsAccumulator()
    acc.add(None, x, unit_dim=unit_dim, saturation=saturation)
    return acc.to_host()[0][1]
