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
float64. On the CPU a float32 tensor (read in memory order, so a transposed view is not copied;
copied first only where its memory has gaps) takes one fused pass instead of these torch ops, where a C++ compiler is found (:mod:`initscope._native`; ``INITSCOPE_NO_NATIVE=1``
turns it off): the same counts and histogram, moments rounded to float32 from float64 sums.
On a GPU a float32, float16 or bfloat16 tensor takes one fused Triton pass where Triton imports
(:mod:`initscope._triton_stats`; ``INITSCOPE_TRITON=0`` turns it off): the same counts and
histogram, moments from float64 sums merged in float64.

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

import numpy as np
import torch

from initscope import _native
from initscope._decode import Columns, columns, decode, transfer
from initscope._measure import (_EDGE_BITS, _NORM_BINS, _SUB_BINS, FORMATS, HIST_EXPONENTS, SATURATION_LEVEL,
                                _measure, _Pending)
from initscope.errors import ShapeError

__all__ = ["FORMATS", "HIST_EXPONENTS", "SATURATION_LEVEL", "Stats", "StatsAccumulator", "tensor_stats"]

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

    @classmethod
    def _of(cls, fields: tuple) -> Stats:
        """A Stats of fields in field order, without the frozen dataclass's per-field setattr
        (~1.4 us against ~0.4: the Recorder makes ~150 a step)."""
        s = object.__new__(cls)
        s.__dict__.update(zip(_FIELDS, fields))
        return s

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


_FIELDS = tuple(f.name for f in fields(Stats))


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


_UNSET = object()
#: Whether torch tells a forward call inside a backward pass (a recomputation) from the others; the
#: Tap needs that where no Python gradient hook marks the backward pass's start (torch >= 2.1).
_CURRENT_TASK = hasattr(torch._C, "_current_graph_task_id")


class StatsAccumulator:
    """Collects statistics of many tensors on their devices; moves them to the host at once.

    Nothing here reads a tensor value on the host, so it is safe inside forward hooks and
    tensor hooks: no synchronisation, no copy of the activation kept after :meth:`add`.

    A float32 CPU tensor measured by the fused kernel is one row of the slab, tagged with its
    key, and nothing more on the Python side: the row describes itself (value count, units,
    band), so the Recorder's step reads keys and rows straight from the slab, and the gradient
    hooks the extension registers (:meth:`watch_grad`) write rows with no Python at all. Other
    tensors are queued as items, each with the number of slab rows written before it, so that
    :meth:`to_host` returns everything in the order it was added.

    Examples:
        >>> import torch
        >>> acc = StatsAccumulator()
        >>> acc.add("a", torch.ones(3))
        >>> acc.add("b", torch.zeros(2, 4), unit_dim=1)
        >>> [(k, s.count, s.zeros) for k, s in acc.to_host()]
        [('a', 3, 0), ('b', 8, 8)]
    """

    def __init__(self) -> None:
        # tensors queued not as a slab row: (slab rows before it, key, _Pending or Stats)
        self._items: list[tuple[int, Hashable, _Pending | Stats]] = []
        self._slab: _native.Slab | None = None  # host buffers of the fused kernel, made on first use
        self._sink: object | None = None  # the extension's writer into the slab (Slab.sink)
        self._ext: object = _UNSET  # the kernel, looked up once per batch (env and load, on first use)
        self._arenas: dict = {}  # per device, the Triton pass's results (initscope._triton_stats.Arena)
        self._tags: dict[Hashable, int] = {}  # key -> the tag its slab rows carry
        self._tagged: list[Hashable] = []  # tag -> key

    def __len__(self) -> int:
        return self._rows() + len(self._items)

    def _rows(self) -> int:
        return 0 if self._slab is None else self._slab.rows

    def clear(self) -> None:
        """Drop everything queued; the host buffers are kept for reuse. Gradient hooks that
        :meth:`watch_grad` registered before go inert."""
        self._items = []
        self._ext = _UNSET
        if self._slab is not None:
            self._slab.clear()
        for arena in self._arenas.values():
            arena.reset()

    def _tag(self, key: Hashable) -> int:
        tag = self._tags.get(key)
        if tag is None:
            tag = self._tags[key] = len(self._tagged)
            self._tagged.append(key)
        return tag

    def add(self, key: Hashable, x: torch.Tensor, *, unit_dim: int | None = None,
            saturation: tuple[float, float] | None = None) -> None:
        """Queue the statistics of a floating tensor under ``key``.

        Args:
            key: any hashable label, returned by :meth:`to_host`.
            x: a floating tensor; it is not kept.
            unit_dim: dimension that indexes units (channels, features); None for no units.
            saturation: (centre, half_width) of a bounded activation's range, or None.
        """
        if not (x.dtype is torch.float32 and x.is_cpu and self._slab_row(key, x, unit_dim, saturation)):
            self._add_general(key, x, unit_dim, saturation)

    def _add_general(self, key: Hashable, x: torch.Tensor, unit_dim: int | None,
                     saturation: tuple[float, float] | None) -> None:
        """:meth:`add` for what the kernel's one call declined or cannot take: empty tensors,
        other dtypes and devices, memory with gaps (copied), the kernel off."""
        if not x.is_floating_point():
            raise TypeError(f"statistics need a floating tensor, got {x.dtype}")
        if x.dim() < 2:
            unit_dim = None
        x = x.detach()
        if x.numel() == 0:
            units = None if unit_dim is None else x.shape[unit_dim]
            self._items.append((self._rows(), key, Stats.empty(units, saturation is not None)))
            return
        if self._slab is None and x.is_cpu:
            self._slab = _native.Slab()
        pending = _measure(x, unit_dim, saturation, self._slab, self._arenas)
        if pending.slot is not None:  # a copy of memory with gaps, measured into a slab row
            self._slab.tag(pending.slot[0], self._tag(key))
        else:
            self._items.append((self._rows(), key, pending))

    def add_many(self, keys: list[Hashable], xs: list[torch.Tensor]) -> None:
        """:meth:`add` of each tensor under its key (no units, no band): where the fused kernel is
        on, the float32 CPU tensors without gaps in memory in one call of it (a parameter's value
        through :meth:`add` costs a hook's few microseconds of Python, ~50 of them a step)."""
        if not xs or not xs[0].is_cpu or self._fused() is None:  # on a GPU the CPU kernel is not even loaded
            for key, x in zip(keys, xs):
                self.add(key, x)
            return
        tags, i = [self._tag(k) for k in keys], 0
        while i < len(xs):  # in order: each tensor the kernel declines goes through add() in its place
            i = self._sink.measure_many(xs, tags, i)
            if i < len(xs):
                self.add(keys[i], xs[i])
                i += 1

    def watch_grad(self, key: Hashable, t: torch.Tensor, unit_dim: int | None = None) -> bool:
        """Queue the statistics of ``t``'s gradient under ``key`` when autograd computes it, by a
        hook the kernel's extension registers on ``t``: no Python runs between autograd and the
        kernel (a Python hook and :meth:`add` cost a gradient ~10-25 us in a training step, where
        each Python operation meets cold caches). For a float32 CPU tensor with values that
        autograd computed (not a leaf: a hook registered from C++ on a leaf would drop the Python
        hooks already on it); False, and nothing done, for any other (hook it in Python, with
        :meth:`add`). The hook goes inert at the next :meth:`clear` (and so after
        :meth:`to_host` and the other reads) or :meth:`retire_hooks`, as a removed Python hook would."""
        if t.grad_fn is None or t.dtype is not torch.float32 or not t.is_cpu or not _CURRENT_TASK \
                or self._fused() is None:  # on a GPU the CPU kernel is not even loaded
            return False
        return self._sink.hook(t, self._tag(key), unit_dim)

    def retire_hooks(self) -> None:
        """Leave the hooks :meth:`watch_grad` registered so far inert; what they queued stays."""
        if self._sink is not None:
            self._sink.retire()

    def grad_writer(self, key: Hashable, p: torch.Tensor) -> object | None:
        """A callable for ``p.register_hook`` that queues each gradient of the float32 CPU leaf
        ``p`` under ``key`` in one call of the kernel's extension (the hook stays a Python hook,
        in its place among the user's); None where ``p`` is not such a tensor or the kernel is off
        (register ``functools.partial(acc.add, key)`` instead)."""
        if p.dtype is not torch.float32 or not p.is_cpu or p.layout is not torch.strided or not p.numel() \
                or self._fused() is None:
            return None
        return self._sink.writer(self._tag(key))

    def _fused(self) -> object | None:
        """The fused kernel's extension (looked up once per batch), the slab made; None where it is off."""
        ext = self._ext
        if ext is _UNSET:
            ext = self._ext = None if _native.disabled() else _native.load()
        if ext is not None and self._sink is None:
            if self._slab is None:
                self._slab = _native.Slab()
            self._sink = self._slab.sink(ext, _EDGE_BITS)
        return ext

    def _slab_row(self, key: Hashable, x: torch.Tensor, unit_dim: int | None,
                  saturation: tuple[float, float] | None, grad_tag: int = -1) -> int:
        """:meth:`add` for a float32 CPU tensor whose memory has no gaps, in the fewest steps (a
        hook's, ~150 hooks a step, where each Python operation meets caches the step has made cold):
        the fused kernel writes one tagged slab row, no torch op runs on ``x``; with ``grad_tag``
        >= 0, ``x``'s gradient hooked under that tag too, where the extension takes ``x``. 0, and
        nothing done, where the kernel is off, ``x`` is empty or its memory has gaps; 1 measured;
        2 measured and the gradient hooked."""
        if self._fused() is None:
            return 0
        centre, half = saturation if saturation is not None else (0.0, 0.0)
        return self._sink.measure_watch(x, unit_dim, saturation is not None, centre, SATURATION_LEVEL * half,
                                        self._tag(key), grad_tag)

    def add_and_watch(self, key: Hashable, x: torch.Tensor, grad_key: Hashable, *, unit_dim: int | None = None,
                      saturation: tuple[float, float] | None = None) -> bool:
        """:meth:`add` of ``x`` and, where ``x`` requires grad, :meth:`watch_grad` of it under
        ``grad_key``: a forward hook's two calls, in one call of the extension where it takes
        ``x``. Returns whether the gradient is watched (if not, hook it in Python)."""
        if x.dtype is torch.float32 and x.is_cpu:
            got = self._slab_row(key, x, unit_dim, saturation, self._tag(grad_key) if _CURRENT_TASK else -1)
            if got:
                return got == 2
        self._add_general(key, x, unit_dim, saturation)  # the kernel's call, if any, declined x
        return x.requires_grad and self.watch_grad(grad_key, x, unit_dim)

    def _queued(self) -> list[tuple[Hashable, _Pending | Stats]]:
        """Everything queued, in the order it was added: the slab's rows (each as a _Pending of
        its slot, from the row's own description) with the other items in their places."""
        out: list[tuple[Hashable, _Pending | Stats]] = []
        items, k = self._items, 0
        if self._slab is not None:
            tagged = self._tagged
            for row, (n, offset, width, flags, tag) in enumerate(self._slab.described()):
                while k < len(items) and items[k][0] <= row:
                    out.append(items[k][1:])
                    k += 1
                out.append((tagged[tag], _Pending(None, n, width if flags & 1 else None, bool(flags & 2), True,
                                                  slot=(row, offset, width))))
        out += [item[1:] for item in items[k:]]
        return out

    def to_host(self) -> list[tuple[Hashable, Stats]]:
        """Move everything to the host (one transfer per device), decode, and clear."""
        try:
            items = self._queued()
            done = {i: s for i, (_, s) in enumerate(items) if isinstance(s, Stats)}
            fused = [i for i, (_, p) in enumerate(items) if isinstance(p, _Pending) and p.slot is not None]
            if fused:
                group = [items[i][1] for i in fused]
                done.update(zip(fused, map(Stats._of, decode(*self._slab.read([p.slot for p in group]), group))))
            by_dev: dict[torch.device, list[int]] = {}
            for i, (_, p) in enumerate(items):
                if isinstance(p, _Pending) and p.slot is None:
                    by_dev.setdefault(p.parts[0].device, []).append(i)
            for dev, idx in by_dev.items():
                group = [items[i][1] for i in idx]
                arena = self._arenas.get(dev)
                if arena is not None:
                    arena.finish()  # the Triton pass's merges, before the results are read
                done.update(zip(idx, map(Stats._of, decode(*transfer(group), group))))
        finally:  # the buffers start the next batch empty, also after a failure here
            self.clear()
        return [(key, done[i]) for i, (key, _) in enumerate(items)]

    def fused_keys(self) -> list | None:
        """The keys queued, in order, where every tensor is a slab row of the fused kernel; else None."""
        if self._items or not self._rows():
            return None
        tagged = self._tagged
        return [tagged[t] for t in self._slab.tags()]

    def to_table(self, sel: list[int]) -> tuple:
        """The queued tensors ``sel`` (every one a slab row: see :meth:`fused_keys`) as arrays, with
        the history's table, decoded by the kernel's extension in one call (see
        :meth:`initscope._native.Slab.table`); then clear."""
        try:
            return self._slab.table(_native.load(), sel, _NORM_BINS, _SUB_BINS)
        finally:
            self.clear()

    def to_columns(self) -> tuple[list, Columns] | None:
        """Like :meth:`to_host`, as arrays (keys, one row per key) without a Stats per tensor:
        only when every tensor is a slab row of the fused kernel (else None, and nothing changes)."""
        if self._items or not self._rows():
            return None
        queued = self._queued()
        group = [p for _, p in queued]
        out = columns(*self._slab.read([p.slot for p in group]), group)
        self.clear()
        return [k for k, _ in queued], out


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
