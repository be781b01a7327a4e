"""Sinks a :class:`~initscope.recorder.Recorder` feeds on every recorded step, written off the
training step's critical path.

``write(step)`` only appends the step (its arrays are already on the host) to a buffer; the
formatting and file writing run in one background thread per sink (:class:`Background`).
Python's GIL is shared, but the training step spends its time inside torch kernels that
release it, so the writer runs in between. An error in the writer thread is raised again,
as it was, at the next ``write`` or at ``close``.
"""
from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from initscope.errors import ArgumentError
from initscope.recorder import RecordedStep
from initscope.runs.parquet import parts, write_part
from initscope.runs.run import Run

__all__ = ["Background", "RunWriter"]


class Background:
    """One daemon thread running submitted calls in order."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        _lowest_priority()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if self._error is None:
                    job()
            except BaseException as e:  # noqa: BLE001 - handed to the training thread
                self._error = e

    def submit(self, job: Callable[[], Any]) -> None:
        """Queue ``job``; raise the error of an earlier job, if any."""
        self.check()
        self._jobs.put(job)

    def check(self) -> None:
        """Raise the error of an earlier job, if any."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Finish every queued job, stop the thread, raise the error of any job."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self.check()


def _lowest_priority() -> None:
    """Give the calling thread the lowest CPU priority (Linux: a thread's own nice value), so
    that the writer takes cores the training step leaves idle instead of preempting one of
    torch's intra-op threads, which would stall the whole parallel region. Elsewhere: no-op."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not allowed
        pass


class RunWriter:
    """Append recorded steps to a run file while training (:mod:`initscope.runs.parquet`).

    Args:
        path: the run directory (created; it must not hold a run already).
        flush_every: recorded steps per part. A crash loses at most the steps not yet flushed.

    Examples:
        >>> import tempfile, torch
        >>> from torch import nn
        >>> from initscope import Recorder
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> path = tempfile.mkdtemp() + "/run.parquet"
        >>> with Recorder(net, every=2, sinks=[RunWriter(path, flush_every=2)]) as rec:
        ...     for _ in range(6):
        ...         net(torch.randn(16, 4)).pow(2).mean().backward()
        ...         rec.step()
        >>> Run.load(path).steps.tolist(), len(parts(path))
        ([0, 2, 4], 2)
    """

    def __init__(self, path: str | os.PathLike, flush_every: int = 50) -> None:
        if not isinstance(flush_every, int) or flush_every < 1:
            raise ArgumentError(f"flush_every must be a whole number >= 1; got {flush_every!r}")
        self.path, self.flush_every = Path(path), flush_every
        if parts(self.path):
            raise ArgumentError(f"run file {str(self.path)!r} already holds a run; pass a new path or delete it")
        self._buffer: list[RecordedStep] = []
        self._summary: dict = {}
        self._index = 0
        self._thread: Background | None = None

    def open(self, summary: dict) -> None:
        """Start the writer thread (called by the Recorder at the first recorded step)."""
        self._summary = summary
        self._thread = Background(f"initscope-run-writer:{self.path.name}")

    def write(self, step: RecordedStep) -> None:
        """Buffer one step; every ``flush_every`` steps hand the buffer to the writer thread."""
        self._buffer.append(step)
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write the buffered steps as one part (in the background)."""
        if not self._buffer or self._thread is None:
            return
        steps, self._buffer, index = self._buffer, [], self._index
        self._index += 1
        summary = self._summary
        self._thread.submit(lambda: write_part(self.path, index, Run.from_steps(steps, summary)))

    def close(self) -> None:
        """Flush what is left and wait for the writer thread."""
        self.flush()
        if self._thread is not None:
            self._thread.close()
