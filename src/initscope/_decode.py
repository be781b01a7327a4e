"""The host side of :mod:`initscope.stats`: one transfer per device, then every tensor's
counts decoded at once into the fields of :class:`initscope.stats.Stats`.

Both count layouts (the torch-ops path's 12-bit code histogram, the fused kernel's exponent
histogram with its sub-octave counts) are brought to one form (:func:`_classes`) from which
the histogram of log2|x| and the per-format underflow and overflow counts follow.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from initscope._measure import _CODES, _FMT, FORMATS, _Pending

__all__ = ["transfer", "decode", "columns", "Columns"]


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


def _classes(counts: list[np.ndarray] | np.ndarray, group: list[_Pending], zeros: np.ndarray) -> _Classes:
    """The counts of both layouts (code histograms, kernel exponent counts) in one form; ``counts``
    may be one [n, width] array of kernel rows (the slab's: every row in the kernel's layout)."""
    n = len(group)
    f = len(FORMATS)
    if isinstance(counts, np.ndarray):  # all kernel rows: views of them
        return _Classes(counts[:, :256], np.zeros(n, np.int64), counts[:, 256], counts[:, 257:257 + f],
                        counts[:, 257 + f], counts[:, 258 + f], counts[:, 259 + f])
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


class Columns(NamedTuple):
    """A group's Stats fields as arrays, one row per tensor (``sat`` NaN-free only where
    ``has_sat``; ``units`` per tensor its nonzero counts, or None)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    zeros: np.ndarray
    nan: np.ndarray
    posinf: np.ndarray
    neginf: np.ndarray
    hist: np.ndarray
    fmt: np.ndarray
    sat: np.ndarray
    has_sat: np.ndarray
    units: list


def _columns(scal: np.ndarray, counts: list[np.ndarray] | np.ndarray, nonzero: list[np.ndarray],
             group: list[_Pending]) -> Columns:
    """The transferred numbers as Stats fields, all tensors of a group at once, as arrays."""
    total = np.array([p.count for p in group])
    widths = [len(nz) for nz in nonzero]
    if all(widths):  # one reduction for all tensors (each has at least one count)
        zeros = total - np.add.reduceat(np.concatenate(nonzero), np.cumsum([0, *widths[:-1]]))
    else:
        zeros = total - np.array([nz.sum() for nz in nonzero])
    c = _classes(counts, group, zeros)
    subnormal = c.octaves[:, 0] - zeros  # 0 < |x| < 2^-126
    octaves = c.octaves[:, 1:255]
    hist = np.concatenate([zeros[:, None], subnormal[:, None], octaves, c.huge[:, None],
                           (c.nan + c.posinf + c.neginf)[:, None]], axis=1)
    # below[:, j]: nonzero |x| < 2^(j - 126), for the j the formats need
    norm, sub = _FMT[:, 0].astype(int) + 126, np.maximum(_FMT[:, 1].astype(int), -126) + 126
    cum = np.zeros((len(group), max(norm.max(), sub.max()) + 1), np.int64)
    np.cumsum(octaves[:, :cum.shape[1] - 1], axis=1, out=cum[:, 1:])
    below = subnormal[:, None] + cum
    flush = np.where(_FMT[:, 1] >= -126, below[:, sub], c.tiny[:, None])
    fmt = np.stack([below[:, norm], flush, c.over], axis=-1)
    has_sat = np.array([bool(p.sat) for p in group], bool)
    return Columns(total, scal[:, 0], scal[:, 1] * total, scal[:, 2], scal[:, 3], zeros, c.nan, c.posinf, c.neginf,
                   hist, fmt, np.round(scal[:, 4]), has_sat,
                   [nonzero[i] if p.units is not None else None for i, p in enumerate(group)])


def _decode(scal: np.ndarray, counts: list[np.ndarray], nonzero: list[np.ndarray], group: list[_Pending]) -> list[tuple]:
    """The transferred numbers as Stats fields (in field order), all tensors of a group at once."""
    return _fields(_columns(scal, counts, nonzero, group), group)


def _fields(c: Columns, group: list[_Pending]) -> list[tuple]:
    """Per tensor, its Stats fields in field order (Python numbers, as Stats holds them)."""
    # Python numbers through tolist(), in bulk: a numpy scalar's float() or int() costs ~0.1 us each
    mean, lo, hi, sat = c.mean.tolist(), c.lo.tolist(), c.hi.tolist(), c.sat.tolist()
    return [(p.count, mean[i], m2i, lo[i], hi[i], zi, nan, pinf, ninf, c.hist[i], c.fmt[i], c.units[i],
             int(sat[i]) if p.sat else None)
            for i, (p, m2i, zi, nan, pinf, ninf) in enumerate(zip(group, c.m2.tolist(), c.zeros.tolist(),
                                                                  c.nan.tolist(), c.posinf.tolist(),
                                                                  c.neginf.tolist()))]


transfer, decode, columns = _transfer, _decode, _columns
