"""Optional fused CPU kernel for :mod:`initscope.stats`: one memory pass per tensor.

The torch-ops path reads a tensor about ten times (mean, var, aminmax, ne, per-unit sums,
the shift to codes, bincount...). ``_fused_stats.cpp`` reads a contiguous float32 CPU tensor
once, in L1-sized blocks, and returns the scalars, the exponent histogram of |x| with the few
sub-octave counts the formats need (values below 2^-129, values past each overflow edge, NaN
and each infinity), and the nonzero counts; :func:`initscope._decode._classes` reads both layouts.

It is compiled with :func:`torch.utils.cpp_extension.load` on first use (never at import),
into torch's extension cache, so a machine pays the compile once. Whenever it cannot be
used, :func:`fused` returns None and the caller takes the torch-ops path: no compiler or
ninja, a failed compile, another dtype, device or layout, or ``INITSCOPE_NO_NATIVE=1``.

Against the torch-ops path: integer counts, the histogram, the format counts, min and max
are identical. Mean
and variance are accumulated in float64 (per L1-resident block, sums of x and of x^2, which is
exact in float64; a block whose mean is large against its spread is summed again from a shift
near its mean, so that M2 loses at most ~2^-41 of itself to cancellation; blocks merged with
Chan's formula), within ~1e-12 relative of an exact float64 reduction, and then
rounded to float32, the precision the torch path reports for float32 data, so that results
do not depend on whether a compiler was found (the torch path's float32 sums carry ~1e-7
relative error; the rounded double result is the correctly rounded value). One exception:
data whose float32 sums overflow (finite values near float32's max) get a NaN or infinite mean
or variance from the torch path, and the float64 values (rounded: inf where they exceed
float32) from the kernel. Passing ``float32_moments=False`` to the kernel keeps the float64
values. The kernel has AVX-512, AVX2 and plain C++ versions of its scan, picked for the CPU when
it loads; all give the same bits (``set_isa`` on the extension picks one, for the tests).
"""
from __future__ import annotations

import math
import os
import sys
import threading
import warnings
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("_fused_stats.cpp")
_NAME = "initscope_fused_stats"
#: Seconds of loading after which a line on stderr says that the kernel is being compiled.
NOTICE_AFTER_S = 2.0
_NOTICE = ("initscope: compiling the fused statistics kernel, once per machine (about 30 s; "
           "INITSCOPE_NO_NATIVE=1 skips it)")
_lock = threading.Lock()
_module: object | None = None
#: Why the kernel is not in use ("" while it has not been tried or is in use).
failure = ""


def disabled() -> bool:
    """Whether ``INITSCOPE_NO_NATIVE`` asks for the torch-ops path."""
    return os.environ.get("INITSCOPE_NO_NATIVE", "") not in ("", "0")


def available() -> bool:
    """Whether :func:`fused` will measure (not disabled, and compiled or compiling now)."""
    return not disabled() and load() is not None


def load() -> object | None:
    """The compiled extension, compiling it on the first call; None if that fails."""
    global _module, failure
    if _module is not None or failure:
        return _module
    with _lock:
        if _module is None and not failure:
            try:
                _module = _build()
            except Exception as e:  # no compiler, no ninja, a failed build: fall back quietly
                failure = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    return _module


def _build() -> object:
    """Load the cached build (well under a second) or compile; a load that takes longer than
    NOTICE_AFTER_S is a compile, and a line on stderr says so."""
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is not installed (pip install ninja)")
    notice = threading.Timer(NOTICE_AFTER_S, lambda: print(_NOTICE, file=sys.stderr, flush=True))
    notice.daemon = True
    notice.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cpp_extension.load(_NAME, [str(_SOURCE)], extra_cflags=["-O3", "-fopenmp"],
                                      extra_ldflags=["-fopenmp"], verbose=False)
    finally:
        notice.cancel()


#: Width of a counts row (see ``_fused_stats.cpp``): 256 exponent bins of |x|, values below
#: 2^-129, one overflow count per format (4), NaN, +inf and -inf.
COUNTS = 256 + 1 + 4 + 3
#: Columns a slab's counts row has after those: the kernel's own description of the row (value
#: count, offset and width of its nonzero counts, flags: 1 units, 2 band), read by step_table,
#: and the tag that names the row's key (see StatsAccumulator; -1 until measure_into's caller tags it).
META = 5
TAG = COUNTS + 4


class Slab:
    """Host buffers the kernel writes its results into, reused from one batch of tensors to the next.

    A hook that kept a few small tensors per activation alive until the end of a training
    step would scatter them between the step's large blocks, and the allocator would then
    take fresh pages for the large ones (measured on the 20-layer CNN: ~30k more page faults
    and ~40 ms per step). Rows are handed out by :meth:`reserve`, read back by :meth:`read`
    and recycled by :meth:`clear`; the buffers only grow (doubling), so steady use allocates
    nothing.

    Once :meth:`sink` has made the extension's ``Sink`` over them, the buffers are the Sink's:
    it grows them (also inside the gradient hooks it registers, where no Python runs), and the
    Python side reads them back from it before using them.
    """

    def __init__(self, rows: int = 256, values: int = 1 << 14) -> None:
        self.scal = torch.empty(rows, 5, dtype=torch.float64)
        self.counts = torch.empty(rows, COUNTS + META, dtype=torch.int64)
        self.nonzero = torch.empty(values, dtype=torch.int64)
        # rows and nonzero slots in use, advanced by the extension
        self.cursor = torch.zeros(2, dtype=torch.int64)
        self._cursor = self.cursor.numpy()
        self._capacity = (rows, values)  # plain ints: len() of a tensor costs a hook ~0.4 us
        self._sink: object | None = None

    def sink(self, ext: object, edges: list[int]) -> object:
        """The extension's ``Sink`` over these buffers (made on the first call; ``edges`` as for
        :func:`fused`): its ``measure_watch``, ``measure_many``, ``hook`` and ``writer`` fill rows."""
        if self._sink is None:
            self._sink = ext.Sink(self.scal, self.counts, self.nonzero, self.cursor, edges)
        return self._sink

    def _buffers(self) -> None:
        """Take the buffers back from the Sink, which may have grown them."""
        if self._sink is not None:
            self.scal, self.counts, self.nonzero = self._sink.buffers()

    @property
    def rows(self) -> int:
        return int(self._cursor[0])

    @rows.setter
    def rows(self, n: int) -> None:
        self._cursor[0] = n

    @property
    def used(self) -> int:
        return int(self._cursor[1])

    @used.setter
    def used(self, n: int) -> None:
        self._cursor[1] = n

    def reserve(self, width: int, count: int = 1) -> tuple[int, int]:
        """``count`` free rows and ``width`` free nonzero slots: (first row, offset)."""
        at, used = self.rows, self.used
        if self._sink is not None:
            self._sink.grow(count, width)
            self._buffers()
        else:
            rows, values = self._capacity
            while at + count > rows:
                self.scal = torch.cat([self.scal, torch.empty_like(self.scal)])
                self.counts = torch.cat([self.counts, torch.empty_like(self.counts)])
                rows *= 2
            if used + width > values:
                values = max(2 * values, used + width)
                grown = torch.empty(values, dtype=torch.int64)
                grown[:used] = self.nonzero[:used]
                self.nonzero = grown
            self._capacity = (rows, values)
        self.rows, self.used = at + count, used + width
        return at, used

    def read(self, slots: list[tuple[int, int, int]]):
        """(scalars [n, 5], counts [n, COUNTS], nonzero counts) of the (row, offset, width) slots,
        copied out of the slab (the nonzero counts are views of one copy)."""
        self._buffers()
        n = len(slots)
        # every row reserved since the last clear, in order (the Recorder's case): slices, one copy each
        rows = slice(0, n) if n and n == self.rows and slots[0][0] == 0 and slots[-1][0] == n - 1 \
            else [r for r, _, _ in slots]
        nonzero = self.nonzero.numpy()[:self.used].copy()
        scal, counts = self.scal.numpy()[rows], self.counts.numpy()[rows, :COUNTS]
        if isinstance(rows, slice):
            scal, counts = scal.copy(), counts.copy()
        return scal, counts, [nonzero[o:o + w] for _, o, w in slots]

    def described(self) -> list[list[int]]:
        """The rows in use as the kernel described them: [value count, offset, width, flags, tag]
        each (flags: 1 units, 2 band)."""
        self._buffers()
        return self.counts.numpy()[:self.rows, COUNTS:].tolist()

    def tags(self) -> list[int]:
        """The tag of each row in use."""
        self._buffers()
        return self.counts.numpy()[:self.rows, TAG].tolist()

    def tag(self, row: int, tag: int) -> None:
        """Tag a row written by :func:`measure_into`."""
        self._buffers()
        self.counts[row, TAG] = tag

    def table(self, ext: object, rows: list[int], norm: list[int], sub: list[int]) -> tuple:
        """The slab ``rows`` of a recorded step, decoded by the extension in one call: (count,
        (mean, M2, min, max), (zeros, NaN, +inf, -inf, saturated or 0), whether saturation is
        counted, histograms, format counts, per-unit nonzero counts or None) as
        :func:`initscope._steptable.arrays_of` gives them for Stats, and the history's table as
        :func:`initscope._steptable.table_of` computes it; the bits of :func:`initscope._decode.columns`
        and ``table_of``. ``norm`` and ``sub``: per format, the exponent bins 1..k below its
        smallest normal and subnormal (-1: the values below 2^-129 are the ones it flushes)."""
        self._buffers()
        m4, ints, hist, fmt, table = ext.step_table(self.scal, self.counts, self.nonzero, rows, norm, sub)
        meta = self.counts.numpy()[rows, COUNTS:]  # (a copy) value count, offset, width, flags, tag
        nonzero = self.nonzero.numpy()[:self.used].copy()
        units = [nonzero[o:o + w] if f & 1 else None for o, w, f in meta[:, 1:4].tolist()]
        return (meta[:, 0], m4.numpy(), ints.numpy(), (meta[:, 3] & 2) != 0, hist.numpy(), fmt.numpy(), units,
                table.numpy())

    def clear(self) -> None:
        """Start again from the first row; the Sink's hooks registered before go inert."""
        if self._sink is not None:
            self._sink.clear()
        else:
            self.rows = self.used = 0


def fused(x: torch.Tensor, unit_dim: int | None, band: tuple[float, float] | None, level: float,
          edges: list[int], slab: Slab) -> tuple[int, int, int] | None:
    """Measure ``x`` in one pass into ``slab``: its (row, offset, width) there, or None to fall back.

    Args:
        x: the tensor; float32 CPU tensors whose elements fill their memory without gaps (any
            order of the dimensions: a transposed or permuted view is read in memory order, no copy).
        unit_dim: dimension indexing units, or None.
        band: (centre, half_width) of a bounded activation, or None.
        level: saturated where |x - centre| > level * half_width.
        edges: per format, the float32 bit pattern of |x| from which a finite value overflows it.
        slab: where the results go.
    """
    if x.dtype != torch.float32 or x.device.type != "cpu" or disabled():
        return None
    ext = _module if _module is not None else load()
    return None if ext is None else measure_into(ext, x, unit_dim, band, level, edges, slab)


def measure_into(ext: object, x: torch.Tensor, unit_dim: int | None, band: tuple[float, float] | None,
                 level: float, edges: list[int], slab: Slab) -> tuple[int, int, int] | None:
    """:func:`fused` without its checks, for a caller that made them (``x`` float32 on the CPU,
    ``ext`` the loaded extension, the kernel not disabled): a hook's few microseconds."""
    flat, units, inner = _layout(x, unit_dim)
    if flat is None:
        return None
    centre, half = band if band is not None else (0.0, 0.0)
    width = max(units, 1)
    row, offset = slab.reserve(width)
    ext.fused_stats(flat, units, inner, band is not None, centre, level * half, edges, True,
                    slab.scal, slab.counts, slab.nonzero, row, offset)
    return row, offset, width


def _layout(x: torch.Tensor, unit_dim: int | None) -> tuple[torch.Tensor | None, int, int]:
    """(a contiguous view of x's memory, units, inner), or (None, 0, 0) where the memory has gaps.

    In memory order the unit of the value at offset o is (o // inner) % units, with inner the
    unit dimension's stride: for a dense layout the dimensions of smaller stride fill exactly one
    stride. Every statistic but the moments is a count, the same in any order; the moments are
    summed in memory order, so a permuted view and its contiguous copy agree to float64 rounding
    (within 1e-12 of the data's scale, the same float32 values but for rare last-bit ties)."""
    if x.is_contiguous():
        if unit_dim is None:
            return x, 0, 0
        shape = x.shape
        d = unit_dim % len(shape)
        return x, shape[d], math.prod(shape[d + 1:])
    strides = x.stride()
    p = x.detach().permute(sorted(range(len(strides)), key=lambda k: -strides[k]))
    if not p.is_contiguous():
        return None, 0, 0
    if unit_dim is None:
        return p, 0, 0
    d = unit_dim % len(strides)
    units = x.shape[d]
    return p, units, (strides[d] if units > 1 else 1)
