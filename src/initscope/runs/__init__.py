"""Training runs you can keep: run files, pandas tables, TensorBoard, findings over steps.

- :class:`Run`: a recorded run as columns (``rec.to_run()``, :meth:`Run.load`), with
  :meth:`Run.to_pandas`, :attr:`Run.findings` and :meth:`Run.report`.
- :class:`RunWriter`: a Recorder sink appending to a run file while training.
- :class:`TensorBoardSink`: a Recorder sink writing scalars and histograms to TensorBoard.
- :mod:`~initscope.runs.parquet`: the file format (a directory of Parquet parts) and its errors.

pyarrow, pandas and tensorboard are optional (``pip install initscope[runs]``); they are
imported where they are used, and a missing one raises
:class:`~initscope.errors.MissingDependencyError` saying how to install it.
"""
from __future__ import annotations

from initscope.runs.findings import RunThresholds, run_findings
from initscope.runs.run import STAT_COLUMNS, Run
from initscope.runs.sinks import RunWriter
from initscope.runs.tensorboard import TensorBoardSink

__all__ = ["Run", "RunWriter", "TensorBoardSink", "RunThresholds", "run_findings", "STAT_COLUMNS"]
