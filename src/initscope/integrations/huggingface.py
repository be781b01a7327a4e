"""A transformers ``TrainerCallback`` that records the run (needs ``pip install transformers``).

Examples:
    The callback in a Trainer (``Trainer(..., callbacks=[InitscopeCallback(every=10)])``);
    after ``trainer.train()``, ``output_dir/initscope/run.parquet`` holds the run and
    ``output_dir/initscope/report.html`` its report.
"""
from __future__ import annotations

import os
from typing import Any

from initscope.integrations.session import RunSession
from initscope.runs._deps import require

transformers = require("transformers", "InitscopeCallback (the transformers integration)",
                       "pip install transformers (or initscope[models])")

__all__ = ["InitscopeCallback"]


class InitscopeCallback(transformers.TrainerCallback):
    """Record per-layer statistics every ``every`` optimizer steps of a transformers Trainer.

    The Trainer calls ``on_step_end`` once per optimizer step, after all micro-batches of
    gradient accumulation, so every forward and backward of a recorded step is merged into it.

    Args:
        every: record every ``every``-th optimizer step (0, every, 2*every, ...).
        directory: where the run file and report go (default ``args.output_dir/initscope``).
        **options: ``modules``, ``tensorboard``, ``report``, ``flush_every`` of
            :class:`~initscope.integrations.session.RunSession`.

    Note:
        The Trainer calls no callback when training raises, so the Recorder's hooks would stay
        on the model: call :meth:`close` in an ``except`` or ``finally`` around
        ``trainer.train()`` (the next ``on_train_begin`` also closes a run left open).

        Evaluation forwards that run while a recorded step is armed (between the end of the
        step before it and its own end) are merged into it; set ``every`` so that recorded
        steps do not follow an evaluation, or evaluate after training.
    """

    def __init__(self, every: int = 10, directory: str | os.PathLike | None = None, **options: Any) -> None:
        self.every, self.directory, self.options = every, directory, options
        self.session: RunSession | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: D102 - TrainerCallback API
        self.close()  # a run that a raising train() left open
        directory = self.directory or os.path.join(args.output_dir, "initscope")
        self.session = RunSession(directory, self.every, **self.options)
        self.session.start(model)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: D102
        if self.session is not None:
            self.session.step()

    def on_train_end(self, args, state, control, **kwargs):  # noqa: D102
        if self.session is not None:
            self.session.finish()

    def close(self) -> None:
        """End a run that ``trainer.train()`` left open by raising: remove the hooks from the
        model, write the steps recorded so far to the run file, close the sinks; no report.
        Does nothing when no run is open (after ``on_train_end``, or a second time)."""
        if self.session is not None and self.session.recorder is not None:
            self.session.finish(RuntimeError("training stopped before on_train_end"))
