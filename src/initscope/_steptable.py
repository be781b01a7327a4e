"""The history's table of a recorded step (the values of :data:`STATS` per key), from Stats
or, without a Stats per tensor, from the decoded arrays of :func:`initscope._decode.columns`."""
from __future__ import annotations

import math

import numpy as np

from initscope._decode import Columns
from initscope.stats import FORMATS, Stats

__all__ = ["STATS", "decode_fields", "step_arrays"]


def _fp(fmt: str, kind: str):
    return lambda s: getattr(s, kind)[fmt]


#: The statistics written to the history for each (step, layer, phase), as functions of a
#: Stats (the definition; :func:`_table` computes the same values for many at once). NaN ones
#: are left out.
STATS = {
    "mean": lambda s: s.mean, "std": lambda s: s.std, "min": lambda s: s.min, "max": lambda s: s.max,
    "zero_frac": lambda s: s.zero_frac, "nonfinite": lambda s: float(s.nonfinite),
    "dead_frac": lambda s: s.dead_frac, "saturation_frac": lambda s: s.saturation_frac,
    "fp16_underflow": _fp("fp16", "underflow_frac"), "bf16_underflow": _fp("bf16", "underflow_frac"),
    "fp16_overflow": _fp("fp16", "overflow_frac"), "bf16_overflow": _fp("bf16", "overflow_frac"),
}


def _table(stats: list[Stats]) -> np.ndarray:
    """The values of :data:`STATS` for many Stats at once: [len(stats), len(STATS)], NaN where
    undefined, computed as the Stats properties compute them."""
    if not stats:
        return np.empty((0, len(STATS)))
    count = np.array([s.count for s in stats], np.float64)
    cols = np.array([_row(s.__dict__) for s in stats], np.float64).reshape(len(stats), 8)
    return _table_of(count, cols, np.array([s.formats for s in stats], np.float64))


def _table_of(count: np.ndarray, cols: np.ndarray, formats: np.ndarray) -> np.ndarray:
    """:func:`_table` from the counts, the :func:`_row` columns [n, 8] and the format counts."""
    fmt = np.asarray(formats, np.float64).reshape(len(count), -1, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = lambda v: np.where(count > 0, v / np.where(count > 0, count, 1), np.nan)  # noqa: E731
        var = frac(cols[:, 1])
        std = np.where(var >= 0, np.sqrt(np.where(var >= 0, var, 0)), np.nan)
        fp16, bf16 = FORMATS.index("fp16"), FORMATS.index("bf16")
        return np.stack([cols[:, 0], std, cols[:, 2], cols[:, 3], frac(cols[:, 4]), cols[:, 5], cols[:, 6],
                         cols[:, 7], frac(fmt[:, fp16, 0]), frac(fmt[:, bf16, 0]), frac(fmt[:, fp16, 2]),
                         frac(fmt[:, bf16, 2])], axis=1)


def _row(d: dict) -> tuple:
    """(mean, m2, min, max, zeros, nonfinite, dead_frac, saturation_frac) of a Stats' fields, as its
    properties give them (read from its __dict__: the properties cost ~1 us each, ~150 a step)."""
    units, sat, n = d["unit_nonzero"], d["saturated"], d["count"]
    dead = math.nan if units is None or not len(units) else (len(units) - np.count_nonzero(units)) / len(units)
    return (d["mean"], d["m2"], d["min"], d["max"], d["zeros"], float(d["nan"] + d["posinf"] + d["neginf"]), dead,
            math.nan if sat is None or not n else sat / n)


def decode_fields(c: Columns, sel: list[int]) -> list[tuple]:
    """Stats fields (field order) of the rows ``sel`` of a :class:`initscope._decode.Columns`."""
    return [(int(c.count[i]), float(c.mean[i]), float(c.m2[i]), float(c.lo[i]), float(c.hi[i]), int(c.zeros[i]),
             int(c.nan[i]), int(c.posinf[i]), int(c.neginf[i]), c.hist[i], c.fmt[i], c.units[i],
             int(c.sat[i]) if c.has_sat[i] else None) for i in sel]


def step_arrays(c: Columns, sel: list[int]) -> tuple:
    """The rows ``sel`` of decoded arrays as a step's Stats fields and table, as :func:`_table` and
    :meth:`initscope._merged.MergedStats.add_arrays` take them: (count, (mean, m2, min, max),
    (zeros, nan, posinf, neginf, saturated or 0), whether saturation is counted, histograms, format
    counts, per-unit nonzero counts, table)."""
    if len(sel) == len(c.count) and (not sel or sel[-1] == len(sel) - 1):  # every row, in order: no copies
        ix, units = slice(None), c.units
    else:
        ix, units = np.array(sel, np.intp), [c.units[i] for i in sel]
    count, has = c.count[ix], c.has_sat[ix]
    sat = np.where(has, c.sat[ix], 0).astype(np.int64)
    ints = np.stack([c.zeros[ix], c.nan[ix], c.posinf[ix], c.neginf[ix], sat], axis=1)
    m = np.stack([c.mean[ix], c.m2[ix], c.lo[ix], c.hi[ix]], axis=1)
    hist, fmt = c.hist[ix], c.fmt[ix]
    # dead_frac and saturation_frac as _row computes them (int / int; exact ints in float64 divide alike)
    dead = _dead_fractions(units)
    with np.errstate(divide="ignore", invalid="ignore"):
        satfrac = np.where(has & (count > 0), sat / np.where(count > 0, count, 1), math.nan)
    cols = np.stack([m[:, 0], m[:, 1], m[:, 2], m[:, 3], ints[:, 0], ints[:, 1] + ints[:, 2] + ints[:, 3],
                     dead, satfrac], axis=1).astype(np.float64)
    return count, m, ints, has, hist, fmt, units, _table_of(count.astype(np.float64), cols, fmt)


def _dead_fractions(units: list[np.ndarray | None]) -> np.ndarray:
    """Per entry, the fraction of units with no nonzero value (NaN without units), as
    :func:`_row` computes it, for all entries at once (one reduction, not one per tensor)."""
    dead = np.full(len(units), math.nan)
    have = [i for i, u in enumerate(units) if u is not None and len(u)]
    if have:
        parts = [units[i] for i in have]
        widths = np.array([len(u) for u in parts])
        starts = np.concatenate([[0], np.cumsum(widths[:-1])])
        zero = np.add.reduceat(np.concatenate(parts) == 0, starts).astype(np.int64)
        dead[have] = zero / widths  # int / int, as _row divides
    return dead
