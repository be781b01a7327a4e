"""TensorBoard sink: per-layer scalars and log2|x| histograms of every recorded step.

Scalars, tagged ``{phase}_{stat}/{layer}`` (so TensorBoard groups one card per phase and
statistic): ``mean``, ``std``, ``dead_frac`` (units zero for the whole batch),
``zero_frac``, ``fp16_underflow`` and ``bf16_underflow`` of every phase where they are
defined (NaN ones are left out). Histograms, tagged ``hist_{phase}/{layer}`` for forward
and backward: the nonzero finite values' octave histogram, with log2|x| on the x axis
(bucket ``[e, e+1)`` holds 2^e <= |x| < 2^(e+1)); exact zeros are in ``zero_frac``.

The SummaryWriter calls run in a background thread (:class:`~initscope.runs.sinks.Background`).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from initscope.recorder import RecordedStep
from initscope.runs._deps import require
from initscope.runs.run import STAT_COLUMNS
from initscope.runs.sinks import Background

__all__ = ["TensorBoardSink", "SCALARS", "hist_edges"]

#: The statistics written as scalars.
SCALARS = ("mean", "std", "dead_frac", "zero_frac", "fp16_underflow", "bf16_underflow")
_COLS = [STAT_COLUMNS.index(s) for s in SCALARS]

def hist_edges() -> np.ndarray:
    """Right edges, in log2|x|, of bins 1..256 of :attr:`initscope.stats.Stats.hist` (the subnormal
    bin spans [-150, -126), then one octave each, then [128, 129) for values beyond 2^128)."""
    return np.arange(-126, 130, dtype=np.float64)

class TensorBoardSink:
    """Write a Recorder's steps to TensorBoard.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (left open on close: it is yours),
            or a log directory (a writer is made and closed here).
        histograms: also write the forward/backward histograms.

    Raises:
        MissingDependencyError: a log directory was given and tensorboard is not installed.
    """

    def __init__(self, writer: Any, *, histograms: bool = True) -> None:
        if isinstance(writer, (str, os.PathLike)):
            require("tensorboard", "the TensorBoard sink")
            tb = require("torch.utils.tensorboard", "the TensorBoard sink")
            self.writer, self._own = tb.SummaryWriter(log_dir=str(writer)), True
        else:
            self.writer, self._own = writer, False
        self.histograms = histograms
        self._thread: Background | None = None

    def open(self, summary: dict) -> None:
        """Start the writer thread (called by the Recorder at the first recorded step)."""
        self._thread = Background("initscope-tensorboard")

    def write(self, step: RecordedStep) -> None:
        """Queue one recorded step."""
        if self._thread is None:
            self.open({})
        self._thread.submit(lambda: self._write(step))

    def _write(self, st: RecordedStep) -> None:
        w = self.writer
        for (layer, phase), row in zip(st.keys, st.values[:, _COLS].tolist()):
            for stat, v in zip(SCALARS, row):
                if v == v:
                    w.add_scalar(f"{phase}_{stat}/{layer}", v, st.step)
        if self.histograms:
            for (layer, phase), h in st.hists.items():
                self._histogram(f"hist_{phase}/{layer}", h, st.step)

    def _histogram(self, tag: str, h: np.ndarray, step: int) -> None:
        counts = np.asarray(h[1:257], np.float64)
        nz = np.flatnonzero(counts)
        if not len(nz):
            return
        edges = hist_edges()
        centers = edges - 0.5
        centers[0] = -138.0  # the middle of the subnormal bin [-150, -126)
        lo, hi = nz[0], nz[-1] + 1
        num = counts.sum()
        self.writer.add_histogram_raw(tag, min=float(-150 if lo == 0 else edges[lo] - 1), max=float(edges[hi - 1]), num=int(num),
                                      sum=float(counts @ centers), sum_squares=float(counts @ centers**2),
                                      bucket_limits=edges[lo:hi].tolist(), bucket_counts=counts[lo:hi].tolist(),
                                      global_step=step)

    def close(self) -> None:
        """Write what is queued; flush the writer (and close it when this sink made it)."""
        if self._thread is not None:
            self._thread.close()
            self._thread = None
        self.writer.flush()
        if self._own:
            self.writer.close()

