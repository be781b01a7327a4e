"""Statistics merged over a run's recorded steps, one row per key, updated in place.

The Recorder merges each recorded step into the run's statistics (its ``trace``). A
:meth:`initscope.stats.Stats.merge` per key and step costs ~4 us and leaves a new Stats each
time (~0.6 ms a step for a small transformer); here a step is one set of vectorised updates
of a few arrays. The arithmetic is :meth:`Stats.merge`'s, operation for operation, so the
result has the same bits as a chain of merges.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable

import numpy as np

from initscope._steptable import arrays_of
from initscope.stats import FORMATS, Stats

__all__ = ["MergedStats"]


class MergedStats:
    """Per key, the merge of every Stats added under that key, in the order added."""

    def __init__(self, rows: int = 64) -> None:
        self.index: dict[Hashable, int] = {}
        self.count = np.zeros(rows, np.int64)
        self.moments = np.zeros((rows, 2))  # mean, m2
        self.lo, self.hi = np.full(rows, math.inf), np.full(rows, -math.inf)
        self.ints = np.zeros((rows, 5), np.int64)  # zeros, nan, posinf, neginf, saturated
        self.has_sat = np.zeros(rows, bool)
        self.hist = np.zeros((rows, 258), np.int64)
        self.formats = np.zeros((rows, len(FORMATS), 3), np.int64)
        self.units: list[np.ndarray | None] = []
        self._last: tuple | None = None  # (keys, unit widths, rows, their units as one array)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.index

    def get(self, key: Hashable) -> Stats | None:
        """The merged Stats of ``key`` (a copy), or None if never added."""
        i = self.index.get(key)
        if i is None:
            return None
        mean, m2 = self.moments[i].tolist()
        zeros, nan, posinf, neginf, sat = self.ints[i].tolist()
        units = self.units[i]
        return Stats(int(self.count[i]), mean, m2, float(self.lo[i]), float(self.hi[i]), zeros, nan, posinf, neginf,
                     self.hist[i].copy(), self.formats[i].copy(), None if units is None else units.copy(),
                     sat if self.has_sat[i] else None)

    def add(self, per: dict[Hashable, Stats]) -> None:
        """Merge one step's Stats (one per key) into the rows of their keys.

        Raises:
            ShapeError: a key's units differ from those merged before (as Stats.merge).
        """
        if per:
            self.add_arrays(list(per), *arrays_of(list(per.values())))

    def add_arrays(self, keys: list, count: np.ndarray, m: np.ndarray, ints: np.ndarray, has: np.ndarray,
                   hist: np.ndarray, formats: np.ndarray, units: list) -> None:
        """:meth:`add` for a step given as arrays, one row per key (distinct keys): counts; (mean, m2,
        min, max); (zeros, nan, posinf, neginf, saturated or 0); whether saturation is counted;
        histograms; format counts; per-unit nonzero counts or None."""
        idx, new = self._rows(keys, units)
        c1, c2 = self.count[idx].astype(np.float64), count.astype(np.float64)
        self._moments(idx, new, c1, c2, m[:, 0], m[:, 1])
        lo, hi = self.lo[idx], self.hi[idx]
        nan = np.isnan(lo) | np.isnan(m[:, 2])
        self.lo[idx] = np.where(nan, math.nan, np.minimum(lo, m[:, 2]))
        nan = np.isnan(hi) | np.isnan(m[:, 3])
        self.hi[idx] = np.where(nan, math.nan, np.maximum(hi, m[:, 3]))
        self.ints[idx] += ints
        # merge's shortcuts: with no data now, the data before; with none before, the step's own
        old = self.has_sat[idx]
        self.has_sat[idx] = np.where(new, has, np.where(c2 == 0, old, np.where(c1 == 0, has, old & has)))
        self.count[idx] += count
        self.hist[idx] += hist
        self.formats[idx] += formats

    def _moments(self, idx: np.ndarray, new: np.ndarray, c1: np.ndarray, c2: np.ndarray, mean2: np.ndarray,
                 m2b: np.ndarray) -> None:
        """Chan's formula as Stats.merge writes it, for every row at once (a new key's row takes
        the step's Stats as it is, as the Recorder stored the first one)."""
        mean1, m2a = self.moments[idx, 0], self.moments[idx, 1]
        n = c1 + c2
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            delta = mean2 - mean1
            mean = mean1 + delta * c2 / n
            m2 = m2a + m2b + delta * delta * c1 * c2 / n
            spread = mean1 * (c1 / n) + mean2 * (c2 / n)  # an infinite or NaN mean, M2 undefined
        finite = np.isfinite(mean1) & np.isfinite(mean2)
        mean, m2 = np.where(finite, mean, spread), np.where(finite, m2, math.nan)
        take, keep = new | ((c1 == 0) & (c2 > 0)), ~new & (c2 == 0)
        self.moments[idx, 0] = np.where(take, mean2, np.where(keep, mean1, mean))
        self.moments[idx, 1] = np.where(take, m2b, np.where(keep, m2a, m2))

    def _rows(self, keys: list, units: list) -> tuple[np.ndarray | slice, np.ndarray]:
        """The rows of ``keys`` and which are new, their units merged. A step with the keys and
        unit counts of the last one (the usual case) takes cached rows and one addition over
        their units, which are then views of one array."""
        widths = [-1 if u is None else len(u) for u in units]
        last = self._last
        if last is not None and last[0] == keys and last[1] == widths:
            if last[3] is not None:
                np.add(last[3], np.concatenate([u for u in units if u is not None]), out=last[3])
            return last[2], np.zeros(len(keys), bool)
        if not self.index:  # the first step (a fresh Recorder's): every key new, rows 0, 1, ...
            self._grow(len(keys))
            self.index = dict(zip(keys, range(len(keys))))
            self.units = list(units)  # replaced below by views of one copy
            rows = [(i, True) for i in range(len(keys))]
        else:
            rows = [self._row(k, u) for k, u in zip(keys, units)]
        order = [i for i, _ in rows]  # distinct, as the keys are
        idx: np.ndarray | slice = np.array(order, np.intp)
        if order and order == list(range(order[0], order[0] + len(order))):
            idx = slice(order[0], order[0] + len(order))  # consecutive rows: views, not copies
        have = [i for i, u in zip(order, units) if u is not None]
        flat = None
        if have:
            flat = np.concatenate([self.units[i] for i in have])
            at = 0
            for i in have:
                w = len(self.units[i])
                self.units[i] = flat[at:at + w]
                at += w
        self._last = (list(keys), widths, idx, flat)
        return idx, np.array([n for _, n in rows])

    def _row(self, key: Hashable, units_now: np.ndarray | None) -> tuple[int, bool]:
        """The row of ``key`` and whether it is new; its units merged in place."""
        i = self.index.get(key)
        if i is None:
            i = self.index[key] = len(self.index)
            self._grow(i + 1)
            self.units.append(None if units_now is None else units_now.copy())
            return i, True
        units = self.units[i]
        if (units is None) != (units_now is None) or (units is not None and len(units) != len(units_now)):
            other = self.get(key)
            other.merge(dataclasses.replace(other, unit_nonzero=units_now))  # raises the ShapeError that explains it
        if units is not None:
            units += units_now
        return i, False

    def _grow(self, rows: int) -> None:
        """Room for ``rows`` rows: the arrays double until they hold them."""
        size = len(self.count)
        if rows <= size:
            return
        size = max(size, 1)
        while size < rows:
            size *= 2
        used = len(self.count) if self.index else 0  # no key yet: no row to copy
        for name in ("count", "moments", "lo", "hi", "ints", "has_sat", "hist", "formats"):
            a = getattr(self, name)
            fill = {"lo": math.inf, "hi": -math.inf}.get(name)
            # zeros from calloc: pages the first step's rows touch, not a copy of the unused ones
            b = np.zeros((size, *a.shape[1:]), a.dtype) if fill is None else np.full((size, *a.shape[1:]), fill)
            b[:used] = a[:used]
            setattr(self, name, b)
