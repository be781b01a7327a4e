"""The history's table of a recorded step (the values of :data:`STATS` per key), from Stats
or, without a Stats per tensor, from the decoded arrays of :func:`initscope._decode.columns`."""
from __future__ import annotations

import math

import numpy as np

from initscope._decode import Columns
from initscope.stats import FORMATS, Stats

__all__ = ["STATS", "arrays_of", "decode_fields", "table_of"]


def _fp(fmt: str, kind: str):
    return lambda s: getattr(s, kind)[fmt]


#: The statistics written to the history for each (step, layer, phase), as functions of a
#: Stats (the definition; :func:`table_of` computes the same values for many at once). NaN ones
#: are left out.
STATS = {
    "mean": lambda s: s.mean, "std": lambda s: s.std, "min": lambda s: s.min, "max": lambda s: s.max,
    "zero_frac": lambda s: s.zero_frac, "nonfinite": lambda s: float(s.nonfinite),
    "dead_frac": lambda s: s.dead_frac, "saturation_frac": lambda s: s.saturation_frac,
    "fp16_underflow": _fp("fp16", "underflow_frac"), "bf16_underflow": _fp("bf16", "underflow_frac"),
    "fp16_overflow": _fp("fp16", "overflow_frac"), "bf16_overflow": _fp("bf16", "overflow_frac"),
}


def arrays_of(stats: list[Stats]) -> tuple:
    """Many Stats as the arrays :func:`table_of` and
    :meth:`initscope._merged.MergedStats.add_arrays` take: (count, (mean, m2, min, max), (zeros,
    nan, posinf, neginf, saturated or 0), whether saturation is counted, histograms, format counts,
    per-unit nonzero counts)."""
    m = np.array([(s.mean, s.m2, s.min, s.max) for s in stats], np.float64).reshape(-1, 4)
    ints = np.array([(s.zeros, s.nan, s.posinf, s.neginf, s.saturated or 0) for s in stats], np.int64).reshape(-1, 5)
    hist = np.stack([s.hist for s in stats]) if stats else np.zeros((0, 258), np.int64)
    fmt = np.stack([s.formats for s in stats]) if stats else np.zeros((0, len(FORMATS), 3), np.int64)
    return (np.array([s.count for s in stats], np.int64), m, ints, np.array([s.saturated is not None for s in stats], bool),
            hist, fmt, [s.unit_nonzero for s in stats])


def table_of(count: np.ndarray, m: np.ndarray, ints: np.ndarray, has: np.ndarray, fmt: np.ndarray,
             units: list) -> np.ndarray:
    """The values of :data:`STATS` for many Stats given as arrays (:func:`arrays_of`):
    [n, len(STATS)], NaN where undefined, computed as the Stats properties compute them (int / int
    divisions of exact integers in float64 round as Python's do)."""
    c = count.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = lambda v: np.where(c > 0, v / np.where(c > 0, c, 1), np.nan)  # noqa: E731
        var = frac(m[:, 1])
        std = np.where(var >= 0, np.sqrt(np.where(var >= 0, var, 0)), np.nan)
        satfrac = np.where(has & (count > 0), ints[:, 4] / np.where(count > 0, count, 1), math.nan)
    f = np.asarray(fmt, np.float64).reshape(len(count), len(FORMATS), 3)
    fp16, bf16 = FORMATS.index("fp16"), FORMATS.index("bf16")
    nonfinite = (ints[:, 1] + ints[:, 2] + ints[:, 3]).astype(np.float64)
    return np.stack([m[:, 0], std, m[:, 2], m[:, 3], frac(ints[:, 0]), nonfinite, _dead_fractions(units), satfrac,
                     frac(f[:, fp16, 0]), frac(f[:, bf16, 0]), frac(f[:, fp16, 2]), frac(f[:, bf16, 2])], axis=1)


def decode_fields(c: Columns, sel: list[int]) -> list[tuple]:
    """Stats fields (field order) of the rows ``sel`` of a :class:`initscope._decode.Columns`."""
    return [(int(c.count[i]), float(c.mean[i]), float(c.m2[i]), float(c.lo[i]), float(c.hi[i]), int(c.zeros[i]),
             int(c.nan[i]), int(c.posinf[i]), int(c.neginf[i]), c.hist[i], c.fmt[i], c.units[i],
             int(c.sat[i]) if c.has_sat[i] else None) for i in sel]


def _dead_fractions(units: list[np.ndarray | None]) -> np.ndarray:
    """Per entry, the fraction of units with no nonzero value (NaN without units), as
    :attr:`Stats.dead_frac` computes it, for all entries at once (one reduction, not one per tensor)."""
    dead = np.full(len(units), math.nan)
    have = [i for i, u in enumerate(units) if u is not None and len(u)]
    if have:
        parts = [units[i] for i in have]
        widths = np.array([len(u) for u in parts])
        starts = np.concatenate([[0], np.cumsum(widths[:-1])])
        zero = np.add.reduceat(np.concatenate(parts) == 0, starts).astype(np.int64)
        dead[have] = zero / widths  # int / int, as the property divides
    return dead
