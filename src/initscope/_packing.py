"""Host :class:`~initscope.stats.Stats` as one float64 vector and back, for one collective per step.

Counts travel as float64 (exact below 2^53); NaN and infinities travel as themselves. The
layout of one Stats: count, mean, M2, min, max, zeros, nan, posinf, neginf, has-saturation,
saturated, number of units, then the histogram, the per-format counts and the per-unit
nonzero counts.
"""
from __future__ import annotations

import functools

import numpy as np

from initscope.stats import Stats

__all__ = ["pack", "unpack", "merge_rows"]

_HEAD = 12


def _one(s: Stats) -> np.ndarray:
    units = s.unit_nonzero if s.unit_nonzero is not None else np.zeros(0, np.int64)
    head = [s.count, s.mean, s.m2, s.min, s.max, s.zeros, s.nan, s.posinf, s.neginf,
            float(s.saturated is not None), float(s.saturated or 0), float(-1 if s.unit_nonzero is None else len(units))]
    return np.concatenate([np.array(head, np.float64), s.hist.astype(np.float64),
                           s.formats.astype(np.float64).ravel(), units.astype(np.float64)])


def pack(stats: list[Stats]) -> tuple[np.ndarray, list[int]]:
    """One vector for many Stats, and the length of each part."""
    parts = [_one(s) for s in stats]
    return (np.concatenate(parts) if parts else np.zeros(0, np.float64)), [len(p) for p in parts]


def unpack(v: np.ndarray) -> Stats:
    """The Stats of one part made by :func:`pack`."""
    n_hist, n_fmt = 258, None
    head, rest = v[:_HEAD], v[_HEAD:]
    hist = np.rint(rest[:n_hist]).astype(np.int64)
    n_units = int(head[11])
    n_fmt = len(rest) - n_hist - max(n_units, 0)
    formats = np.rint(rest[n_hist:n_hist + n_fmt]).astype(np.int64).reshape(-1, 3)
    units = None if n_units < 0 else np.rint(rest[n_hist + n_fmt:]).astype(np.int64)
    ints = [int(round(x)) for x in head[[0, 5, 6, 7, 8]]]
    return Stats(ints[0], float(head[1]), float(head[2]), float(head[3]), float(head[4]), *ints[1:], hist, formats,
                 units, int(round(head[10])) if head[9] else None)


def merge_rows(rows: np.ndarray, sizes: list[int]) -> list[Stats]:
    """Per part, the Stats of every row (rank) merged in row order."""
    out, at = [], 0
    for size in sizes:
        out.append(functools.reduce(Stats.merge, (unpack(r[at:at + size]) for r in rows)))
        at += size
    return out
