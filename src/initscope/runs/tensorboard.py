"""TensorBoard sink: per-layer scalars and log2|x| histograms of every recorded step.

Scalars, tagged ``{phase}_{stat}/{layer}`` (so TensorBoard groups one card per phase and
statistic): ``mean``, ``std``, ``dead_frac`` (units zero for the whole batch),
``zero_frac``, ``fp16_underflow`` and ``bf16_underflow`` of the phases in :data:`PHASES`
(layer outputs forward and backward, parameter gradients), where defined (NaN ones are left
out). Parameter values change slowly and are left to the run file, which keeps every phase. Histograms, tagged ``hist_{phase}/{layer}`` for forward
and backward: the nonzero finite values' octave histogram, with log2|x| on the x axis
(bucket ``[e, e+1)`` holds 2^e <= |x| < 2^(e+1)); exact zeros are in ``zero_frac``.

Each recorded step becomes one TensorBoard event holding all its values, written to an event
file of its own (suffix ``.initscope``) in the log directory; TensorBoard reads every event file
of a directory as one run. The event is encoded without protobuf objects, from per-tag byte
templates made once (:mod:`initscope.runs._tbproto`: the bytes protobuf would give, in a
seventh to a ninth of the CPU time of building protobuf objects), framed with the C CRC-32C of ``google-crc32c`` (:mod:`initscope.runs._tfrecord`), and
written by a background thread (:class:`~initscope.runs.sinks.Background`).
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from initscope.recorder import RecordedStep
from initscope.runs import _tbproto
from initscope.runs._deps import require
from initscope.runs._tfrecord import EventFile
from initscope.runs.run import STAT_COLUMNS
from initscope.runs.sinks import Background

__all__ = ["TensorBoardSink", "SCALARS", "PHASES", "hist_edges"]

#: The statistics written as scalars, and the phases they are written for.
SCALARS = ("mean", "std", "dead_frac", "zero_frac", "fp16_underflow", "bf16_underflow")
PHASES = ("forward", "backward", "grad")
_COLS = [STAT_COLUMNS.index(s) for s in SCALARS]

def hist_edges() -> np.ndarray:
    """Right edges, in log2|x|, of bins 1..256 of :attr:`initscope.stats.Stats.hist` (the subnormal
    bin spans [-150, -126), then one octave each, then [128, 129) for values beyond 2^128)."""
    return _EDGES.copy()


_EDGES = np.arange(-126, 130, dtype=np.float64)
_CENTERS = _EDGES - 0.5
_CENTERS[0] = -138.0  # the middle of the subnormal bin [-150, -126)
_LIMITS = np.concatenate([[np.nan], _EDGES, [np.nan]])  # of all 258 bins; 0 and 257 are never written
# num, sum and sum_squares of the bins' centres: counts @ _MOMENTS. The counts are whole numbers,
# the centres halves and their squares quarters: every product and partial sum is exact in
# float64 (below 2^36 values), so the result does not depend on the order numpy adds in.
_MOMENTS = np.stack([np.ones(256), _CENTERS, _CENTERS**2], 1)
_MOMENTS = np.concatenate([np.zeros((1, 3)), _MOMENTS, np.zeros((1, 3))])
_CACHED = 16  # layouts (sets of tags) kept


class TensorBoardSink:
    """Write a Recorder's steps to TensorBoard.

    Args:
        writer: a log directory, or a ``SummaryWriter`` (torch's or tensorboardX's: anything
            with ``get_logdir()``) whose directory the events go to; it is left as it was.
        histograms: also write the forward/backward histograms.

    Raises:
        MissingDependencyError: tensorboard is not installed.
    """

    def __init__(self, writer: Any, *, histograms: bool = True) -> None:
        require("tensorboard", "the TensorBoard sink")
        self.log_dir = str(writer) if isinstance(writer, (str, os.PathLike)) else writer.get_logdir()
        self.histograms = histograms
        self._thread: Background | None = None
        self._events: EventFile | None = None
        self._layouts: dict[tuple, Any] = {}

    def open(self, summary: dict) -> None:
        """Start the writer thread (called by the Recorder at the first recorded step)."""
        self._events = EventFile(self.log_dir, ".initscope")
        self._thread = Background("initscope-tensorboard")

    def write(self, step: RecordedStep) -> None:
        """Queue one recorded step."""
        if self._thread is None:
            self.open({})
        self._thread.submit(lambda: self._write(step))

    def _write(self, st: RecordedStep) -> None:
        summary = [self._scalars(st)]
        if self.histograms and st.hists:
            summary.append(self._histograms(st))
        self._events.add(_tbproto.event(time.time(), st.step, summary=summary))

    def _scalars(self, st: RecordedStep) -> bytes:
        """The step's scalars: the template of its layers, filled with its values."""
        block, flat = self._layout(("scalars", *st.keys), lambda: _scalar_layout(st.keys))
        return block.encode(np.take(st.values, flat))

    def _histograms(self, st: RecordedStep) -> bytes:
        """The step's nonempty histograms, all at once: [histograms, 258 bins], of which the
        zeros' and the non-finite values' (bins 0 and 257) are left out."""
        block = self._layout(("hists", *st.hists), lambda: _tbproto.HistogramBlock(
            [f"hist_{phase}/{layer}" for layer, phase in st.hists], _LIMITS))
        counts = np.concatenate(list(st.hists.values()), dtype=np.float64).reshape(len(st.hists), -1)
        counts[:, 0] = counts[:, 257] = 0
        nonzero = counts != 0
        lo, hi = nonzero.argmax(1), 258 - nonzero[:, ::-1].argmax(1)
        head = np.empty((len(counts), 5))
        head[:, 0], head[:, 1], head[:, 2:] = _LIMITS[lo] - 1, _LIMITS[hi - 1], counts @ _MOMENTS
        head[lo == 1, 0] = -150.0  # the subnormal bin is [-150, -126)
        rows = np.flatnonzero(head[:, 2])  # the nonempty ones (num > 0)
        if len(rows) < len(counts):
            head, lo, hi, counts = head[rows], lo[rows], hi[rows], counts[rows]
        return block.encode(rows.tolist(), head, lo, hi, counts)

    def _layout(self, key: tuple, make: Any) -> Any:
        """What ``make()`` gives for this set of tags, made once (a few sets kept)."""
        if (found := self._layouts.get(key)) is None:
            if len(self._layouts) >= _CACHED:
                self._layouts.clear()
            found = self._layouts[key] = make()
        return found

    def close(self) -> None:
        """Write what is queued and close this sink's event file."""
        try:
            if self._thread is not None:
                self._thread.close()  # raises the error of a job, if any
        finally:
            self._thread = None
            if self._events is not None:
                self._events.close()
                self._events = None


def _scalar_layout(keys: list[tuple[str, str]]) -> tuple[_tbproto.ScalarBlock, np.ndarray]:
    """The scalars' template for these (layer, phase) keys, and where their values are in
    the flattened table of a step: rows of :data:`PHASES`, columns of :data:`SCALARS`."""
    rows = [i for i, (_, phase) in enumerate(keys) if phase in PHASES]
    tags = [f"{keys[i][1]}_{stat}/{keys[i][0]}" for i in rows for stat in SCALARS]
    flat = (np.array(rows, np.int64)[:, None] * len(STAT_COLUMNS) + _COLS).ravel()
    return _tbproto.ScalarBlock(tags), flat
