"""What both trainer callbacks do: a Recorder with a run-file sink (and optionally
TensorBoard) from the start of training to its end, then the report of the run."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from initscope import distributed
from initscope.errors import ArgumentError
from initscope.probe import ModuleSelection
from initscope.recorder import Recorder

__all__ = ["RunSession"]


class RunSession:
    """Record one training run into ``directory``.

    A run file is never overwritten: when ``run.parquet`` is there already (a second
    ``trainer.train()`` with the same callback, or an earlier process), the run goes to
    ``run-2.parquet`` with ``report-2.html`` (and ``tensorboard-2``), then ``-3``, and so on.

    Args:
        directory: where ``run.parquet`` (the run file) and ``report.html`` go.
        every: record every ``every``-th optimizer step.
        modules: the layers to watch (:func:`initscope.probe.select_modules`).
        tensorboard: also write TensorBoard events: True for ``directory/tensorboard``, or a
            log directory, or a ``SummaryWriter``.
        report: write ``report.html`` at the end.
        flush_every: recorded steps per part of the run file.
    """

    def __init__(self, directory: str | os.PathLike, every: int = 10, *, modules: ModuleSelection = None,
                 tensorboard: Any = False, report: bool = True, flush_every: int = 50) -> None:
        if not isinstance(every, int) or every < 1:
            raise ArgumentError(f"every must be a whole number >= 1; got {every!r}")
        self.directory, self.every, self.modules = Path(directory), every, modules
        self.tensorboard, self.write_report, self.flush_every = tensorboard, report, flush_every
        self.recorder: Recorder | None = None
        self.run: Any = None
        self._suffix = ""  # "-2", "-3"... when earlier runs are in the directory (set by start)

    @property
    def run_path(self) -> Path:
        """The run file."""
        return self.directory / f"run{self._suffix}.parquet"

    @property
    def report_path(self) -> Path:
        """The HTML report."""
        return self.directory / f"report{self._suffix}.html"

    def _free_suffix(self) -> str:
        """"" for the first run in the directory, else "-k" for the first k >= 2 not taken."""
        k = 1
        while (self.directory / f"run{'' if k == 1 else f'-{k}'}.parquet").exists():
            k += 1
        return "" if k == 1 else f"-{k}"

    def start(self, model: nn.Module) -> None:
        """Attach a Recorder to ``model``."""
        from initscope.runs import RunWriter, TensorBoardSink

        self._suffix = self._free_suffix()
        sinks: list[Any] = [RunWriter(self.run_path, self.flush_every)]
        if self.tensorboard is not False and self.tensorboard is not None:
            tb = self.directory / f"tensorboard{self._suffix}" if self.tensorboard is True else self.tensorboard
            sinks.append(TensorBoardSink(tb))
        self.recorder = Recorder(model, every=self.every, modules=self.modules, sinks=sinks).__enter__()

    def step(self) -> None:
        """One optimizer step ended."""
        if self.recorder is not None:
            self.recorder.step()

    def finish(self, error: BaseException | None = None) -> None:
        """Detach, finish the run file and write the report (not after an error)."""
        rec, self.recorder = self.recorder, None
        if rec is None:
            return
        exc: Sequence[Any] = (type(error), error, None) if error is not None else (None, None, None)
        rec.__exit__(*exc)
        if error is None and distributed.is_writer() and self.run_path.exists():  # rank 0 writes
            from initscope.runs import Run

            self.run = Run.load(self.run_path)
            if self.write_report:
                self.run.report(self.report_path)
