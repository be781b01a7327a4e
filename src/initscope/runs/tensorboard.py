"""TensorBoard sink: per-layer scalars and log2|x| histograms of every recorded step.

Scalars, tagged ``{phase}_{stat}/{layer}`` (so TensorBoard groups one card per phase and
statistic): ``mean``, ``std``, ``dead_frac`` (units zero for the whole batch),
``zero_frac``, ``fp16_underflow`` and ``bf16_underflow`` of the phases in :data:`PHASES`
(layer outputs forward and backward, parameter gradients), where defined (NaN ones are left
out). Parameter values change slowly and are left to the run file, which keeps every phase. Histograms, tagged ``hist_{phase}/{layer}`` for forward
and backward: the nonzero finite values' octave histogram, with log2|x| on the x axis
(bucket ``[e, e+1)`` holds 2^e <= |x| < 2^(e+1)); exact zeros are in ``zero_frac``.

Each recorded step becomes one TensorBoard event holding all its values (one protobuf per
step rather than one per value, a tenth of the CPU time of ``add_scalar`` per value), written
to an event file of its own (suffix ``.initscope``) in the log directory, framed with the C
CRC-32C of ``google-crc32c`` (:mod:`initscope.runs._tfrecord`; tensorboard's own
``EventFileWriter``, whose checksum is pure Python, where that package is missing); TensorBoard reads every event file of a directory as one run. The
events are built in a background thread (:class:`~initscope.runs.sinks.Background`).
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from initscope.recorder import RecordedStep
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
_CENTERS2 = _CENTERS**2

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
        self._events: Any = None

    def open(self, summary: dict) -> None:
        """Start the writer thread (called by the Recorder at the first recorded step)."""
        try:  # a C CRC-32C: tensorboard's writer checksums in pure Python, holding the GIL
            import google_crc32c
        except ImportError:
            efw = require("tensorboard.summary.writer.event_file_writer", "the TensorBoard sink")
            self._events = efw.EventFileWriter(self.log_dir, filename_suffix=".initscope")
        else:
            ev = require("tensorboard.compat.proto.event_pb2", "the TensorBoard sink")
            self._events = EventFile(self.log_dir, ".initscope", google_crc32c, ev)
        self._thread = Background("initscope-tensorboard")

    def write(self, step: RecordedStep) -> None:
        """Queue one recorded step."""
        if self._thread is None:
            self.open({})
        self._thread.submit(lambda: self._write(step))

    def _write(self, st: RecordedStep) -> None:
        pb = require("tensorboard.compat.proto.summary_pb2", "the TensorBoard sink")
        ev = require("tensorboard.compat.proto.event_pb2", "the TensorBoard sink")
        values = [pb.Summary.Value(tag=f"{phase}_{stat}/{layer}", simple_value=v)
                  for (layer, phase), row in zip(st.keys, st.values[:, _COLS].tolist())
                  if phase in PHASES for stat, v in zip(SCALARS, row) if v == v]
        if self.histograms:
            values += [pb.Summary.Value(tag=f"hist_{phase}/{layer}", histo=histo)
                       for (layer, phase), h in st.hists.items() if (histo := _histogram(pb, h)) is not None]
        self._events.add_event(ev.Event(wall_time=time.time(), step=st.step, summary=pb.Summary(value=values)))

    def close(self) -> None:
        """Write what is queued and close this sink's event file."""
        if self._thread is not None:
            self._thread.close()
            self._thread = None
        if self._events is not None:
            self._events.close()
            self._events = None


def _histogram(pb: Any, h: np.ndarray) -> Any:
    """A HistogramProto over log2|x| of the octave bins, or None when they are empty."""
    counts = np.asarray(h[1:257], np.float64)
    nz = np.flatnonzero(counts)
    if not len(nz):
        return None
    lo, hi = nz[0], nz[-1] + 1  # edges and centres are computed once, at import
    return pb.HistogramProto(min=float(-150 if lo == 0 else _EDGES[lo] - 1), max=float(_EDGES[hi - 1]),
                             num=float(counts.sum()), sum=float(counts @ _CENTERS),
                             sum_squares=float(counts @ _CENTERS2), bucket_limit=_EDGES[lo:hi].tolist(),
                             bucket=counts[lo:hi].tolist())

