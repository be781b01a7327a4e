"""A recorded training run as columns: one row per (step, layer, phase).

A :class:`Run` is what a :class:`~initscope.recorder.Recorder` measured, kept after the
process ends: it is built from the Recorder (``rec.to_run()``), read from a run file
(:meth:`Run.load`), saved (:meth:`Run.save`), turned into a pandas table
(:meth:`Run.to_pandas`), judged (:attr:`Run.findings`) and rendered (:meth:`Run.report`).

Columns of :meth:`Run.to_pandas` (one row per recorded step, layer and phase):

- ``step`` (int): the training step, counted by ``Recorder.step()``.
- ``layer`` (str): the module's qualified name, or the parameter's for phases param/grad.
- ``phase`` (str): "forward" (the layer's output), "backward" (the gradient w.r.t. that
  output), "param" (a parameter's values) or "grad" (its gradient).
- ``layer_type`` (str): the module's class for forward/backward rows, "" otherwise.
- ``count`` (int): values measured (merged over micro-batches).
- ``mean``, ``std``, ``min``, ``max``: moments and extremes.
- ``zero_frac``: fraction of exact zeros; ``nonfinite``: NaN and inf count.
- ``dead_frac``: fraction of units zero for the whole batch; ``saturation_frac``: fraction in
  a bounded activation's saturated band (NaN where they do not apply).
- ``fp16_underflow``, ``bf16_underflow``: fraction of values below the format's smallest
  normal (nonzero); ``fp16_overflow``, ``bf16_overflow``: fraction above its max.
- with ``hist=True``, ``hist``: int64 counts over the 258 log2|x| bins of
  :attr:`initscope.stats.Stats.hist` (forward/backward rows; None otherwise).
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from initscope._render import html_of
from initscope.recorder import STATS, RecordedStep
from initscope.runs._deps import require

__all__ = ["Run", "STAT_COLUMNS"]

STAT_COLUMNS = tuple(STATS)
_BINS = 258


@dataclass(frozen=True, eq=False)
class Run:
    """A recorded run, column by column (rows in step order).

    Attributes:
        summary: the model summary and versions (``Recorder.summary()``).
        step, layer, phase, count: one entry per row.
        values: float64 [rows, len(STAT_COLUMNS)], NaN where a statistic does not apply.
        hist_start, hist: each row's histogram as its nonzero span (start bin, counts);
            start -1 and an empty span for rows without one (param/grad).
    """

    summary: dict
    step: np.ndarray
    layer: np.ndarray
    phase: np.ndarray
    count: np.ndarray
    values: np.ndarray
    hist_start: np.ndarray
    hist: tuple[np.ndarray, ...]

    @classmethod
    def from_steps(cls, steps: Sequence[RecordedStep], summary: dict) -> Run:
        """Columns from Recorder steps."""
        rows = [(st.step, k, st.values[i], st.counts[i] if st.counts is not None else -1, st.hists.get(k))
                for st in steps for i, k in enumerate(st.keys)]
        spans = [_span(h) for *_, h in rows]
        return cls(summary, np.array([r[0] for r in rows], np.int64), _objects([r[1][0] for r in rows]),
                   _objects([r[1][1] for r in rows]), np.array([r[3] for r in rows], np.int64),
                   np.array([r[2] for r in rows], np.float64).reshape(len(rows), len(STATS)),
                   np.array([s for s, _ in spans], np.int16), tuple(c for _, c in spans))

    @classmethod
    def concat(cls, parts: Sequence[Run]) -> Run:
        """Rows of several runs (parts of one file), in order; the last part's summary."""
        if len(parts) == 1:
            return parts[0]
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        return cls(parts[-1].summary, cat("step"), cat("layer"), cat("phase"), cat("count"),
                   np.concatenate([p.values for p in parts]).reshape(-1, len(STATS)), cat("hist_start"),
                   tuple(h for p in parts for h in p.hist))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Run:
        """Read a run file; see :mod:`initscope.runs.parquet` for the format and its errors."""
        from initscope.runs.parquet import read_run

        return read_run(path)

    def save(self, path: str | os.PathLike) -> Path:
        """Write this run as a run file (a directory of Parquet parts); returns its path."""
        from initscope.runs.parquet import write_run

        return write_run(path, self)

    @property
    def steps(self) -> np.ndarray:
        """The recorded step numbers, ascending."""
        return np.unique(self.step)

    @functools.cached_property
    def _index(self) -> dict[tuple[str, str], np.ndarray]:
        """Rows of each (layer, phase), in first-appearance order (one pass over the rows)."""
        groups: dict[tuple[str, str], list[int]] = {}
        for i, key in enumerate(zip(self.layer.tolist(), self.phase.tolist())):
            groups.setdefault(key, []).append(i)
        return {k: np.array(v, np.int64) for k, v in groups.items()}

    def layers(self, phase: str = "forward") -> list[str]:
        """Names with rows of ``phase``, in the order they first appear (execution order)."""
        return [layer for layer, ph in self._index if ph == phase]

    def series(self, layer: str, phase: str, stat: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one statistic of one layer and phase."""
        rows = self._rows(layer, phase)
        return self.step[rows], self.values[rows, STAT_COLUMNS.index(stat)]

    def norm(self, layer: str, phase: str = "grad") -> tuple[np.ndarray, np.ndarray]:
        """(steps, L2 norm) of one layer and phase: sqrt(count * (std^2 + mean^2))."""
        rows = self._rows(layer, phase)
        std, mean = (self.values[rows, STAT_COLUMNS.index(c)] for c in ("std", "mean"))
        return self.step[rows], np.sqrt(self.count[rows] * (std**2 + mean**2))

    def histograms(self, layer: str, phase: str = "forward") -> tuple[np.ndarray, np.ndarray]:
        """(steps, counts [steps, 258]) as :meth:`Recorder.histograms` gives them."""
        rows = self._rows(layer, phase)
        out = np.zeros((len(rows), _BINS), np.int64)
        for j, i in enumerate(rows):
            if self.hist_start[i] >= 0:
                out[j, self.hist_start[i]:self.hist_start[i] + len(self.hist[i])] = self.hist[i]
        return self.step[rows], out

    def _rows(self, layer: str, phase: str) -> np.ndarray:
        rows = self._index.get((layer, phase))
        if rows is None:
            raise KeyError(f"no {phase} rows of {layer!r}; layers: {self.layers(phase)[:10]}")
        return rows

    def to_pandas(self, hist: bool = False) -> Any:
        """The long table described in the module notes (needs pandas)."""
        pd = require("pandas", "Run.to_pandas")
        types = {d["name"]: d["type"] for d in self.summary.get("layers", [])}
        fb = np.isin(self.phase, ("forward", "backward"))
        cols: dict[str, Any] = {"step": self.step, "layer": self.layer, "phase": self.phase,
                                "layer_type": [types.get(n, "") if f else "" for n, f in zip(self.layer, fb)],
                                "count": self.count}
        cols.update({name: self.values[:, j] for j, name in enumerate(STAT_COLUMNS)})
        if hist:
            cols["hist"] = [self.histogram_row(i) for i in range(len(self.step))]
        return pd.DataFrame(cols)

    def histogram_row(self, i: int) -> np.ndarray | None:
        """Row ``i``'s full 258-bin histogram, or None."""
        if self.hist_start[i] < 0:
            return None
        out = np.zeros(_BINS, np.int64)
        out[self.hist_start[i]:self.hist_start[i] + len(self.hist[i])] = self.hist[i]
        return out

    @property
    def findings(self) -> list:
        """Findings about the run as a whole, with step and layer (:mod:`initscope.runs.findings`)."""
        from initscope.runs.findings import run_findings

        return run_findings(self)

    def report(self, path: str | os.PathLike | None = None, title: str = "") -> str:
        """The self-contained HTML report of the run (rendered by :mod:`initscope.report`);
        written to ``path`` when given. Returns the page."""
        page = html_of("run_page", (self, title or f"Run of {self.summary.get('model', 'a model')}"))
        if page is None:
            raise RuntimeError("no run renderer is registered; `import initscope` registers it")
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(page, encoding="utf-8")
        return page

    def __repr__(self) -> str:
        steps = self.steps
        span = f"steps {steps[0]}..{steps[-1]}" if len(steps) else "no steps"
        return (f"Run({len(steps)} recorded steps, {span}, {len(self.layers('forward'))} layers, "
                f"{len(self.step)} rows; initscope {self.summary.get('initscope')}, torch {self.summary.get('torch')})")

    def _repr_html_(self) -> str | None:
        return html_of("run", self)


def _objects(items: list) -> np.ndarray:
    out = np.empty(len(items), object)
    out[:] = items
    return out


def _span(h: np.ndarray | None) -> tuple[int, np.ndarray]:
    if h is None:
        return -1, np.zeros(0, np.int64)
    nz = np.flatnonzero(h)
    return (int(nz[0]), np.asarray(h[nz[0]:nz[-1] + 1], np.int64)) if len(nz) else (0, np.zeros(0, np.int64))
