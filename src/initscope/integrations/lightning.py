"""A Lightning ``Callback`` that records the run (needs ``pip install lightning``).

Examples:
    ``lightning.Trainer(..., callbacks=[InitscopeLightningCallback(every=10)])``; after
    ``fit``, ``default_root_dir/initscope/run.parquet`` holds the run and ``report.html`` its report.
"""
from __future__ import annotations

import os
from typing import Any

from initscope.integrations.session import RunSession
from initscope.runs._deps import require

pl = require("lightning.pytorch", "InitscopeLightningCallback (the Lightning integration)",
             "pip install lightning (or initscope[lightning])")

__all__ = ["InitscopeLightningCallback"]


class InitscopeLightningCallback(pl.Callback):
    """Record per-layer statistics every ``every`` optimizer steps of a Lightning Trainer.

    A step ends when ``trainer.global_step`` advances (checked after each training batch), so
    with ``accumulate_grad_batches`` the micro-batches of one optimizer step merge into it.

    Args:
        every: record every ``every``-th optimizer step.
        directory: where the run file and report go (default ``trainer.default_root_dir/initscope``).
        **options: ``modules``, ``tensorboard``, ``report``, ``flush_every`` of
            :class:`~initscope.integrations.session.RunSession`.
    """

    def __init__(self, every: int = 10, directory: str | os.PathLike | None = None, **options: Any) -> None:
        self.every, self.directory, self.options = every, directory, options
        self.session: RunSession | None = None
        self._global_step = 0

    def on_train_start(self, trainer, pl_module):  # noqa: D102 - Lightning Callback API
        directory = self.directory or os.path.join(trainer.default_root_dir, "initscope")
        self.session = RunSession(directory, self.every, **self.options)
        self._global_step = trainer.global_step
        self.session.start(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: D102
        if self.session is not None and trainer.global_step != self._global_step:
            self._global_step = trainer.global_step
            self.session.step()

    def on_train_end(self, trainer, pl_module):  # noqa: D102
        if self.session is not None:
            self.session.finish()

    def on_exception(self, trainer, pl_module, exception):  # noqa: D102
        if self.session is not None:
            self.session.finish(exception)
