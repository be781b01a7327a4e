"""Record per-layer statistics during training, every Nth step, into a bounded history.

Call :meth:`Recorder.step` once per training step, after ``optimizer.step()``. On a recorded
step the Recorder's hooks measure each watched layer's output and the gradient with respect
to it, and each parameter's value and gradient, all on device; :meth:`Recorder.step` moves
them to the host in one transfer. On the other steps no hook is registered at all, so they
cost nothing. Several forward calls of one module in a step (micro-batches) are merged.

The history is long format, rows of (step, layer, phase, stat, value), with phases
"forward", "backward" (gradient w.r.t. the layer's output), "param" and "grad". When it
outgrows ``max_rows``, every other recorded step is dropped (the newest is always kept), so
the history thins out evenly instead of forgetting the start of the run.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> with Recorder(net, every=2) as rec:
    ...     for _ in range(5):
    ...         opt.zero_grad()
    ...         net(torch.randn(32, 4)).pow(2).mean().backward()
    ...         opt.step()
    ...         rec.step()
    >>> sorted({row.step for row in rec.history})
    [0, 2, 4]
    >>> steps, counts = rec.histograms("1")  # the "colorful dimension": [steps, bins]
    >>> counts.shape
    (3, 258)

Sinks (issue 14): objects with ``open(summary)``, ``write(step)`` and ``close()``, such as
:class:`initscope.runs.RunWriter` and :class:`initscope.runs.TensorBoardSink`, get each
recorded step as a :class:`RecordedStep` right after it is stored (also steps the history
later thins out), and are closed when the context exits. :meth:`Recorder.save`,
:meth:`Recorder.load` and :meth:`Recorder.to_pandas` delegate to :mod:`initscope.runs`.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import nn

from initscope import distributed
from initscope import _validate as check
from initscope._merged import MergedStats
from initscope._steptable import STATS, arrays_of, decode_fields, table_of
from initscope.diagnose import Finding, diagnose_run
from initscope.errors import ArgumentError
from initscope.probe import (LayerRecord, ModuleSelection, OutputRecord, ParamRecord, Tap, Trace, measured_params,
                             select_modules)
from initscope.stats import Stats, StatsAccumulator

if TYPE_CHECKING:
    import os

    from initscope.runs import Run

__all__ = ["Recorder", "Row", "STATS", "RecordedStep"]


class Row(NamedTuple):
    """One number of the history."""

    step: int
    layer: str
    phase: str
    stat: str
    value: float


class Recorder:
    """Context manager that records statistics on every ``every``-th training step.

    Args:
        model: the network being trained; it is never changed, and no hook outlives the context.
        every: record steps 0, every, 2*every, ... (counted by :meth:`step`).
        modules: which layers to watch; see :func:`initscope.probe.select_modules`.
        max_rows: bound on the history's rows (thinned as described in the module notes).
        sinks: objects that receive every recorded step (see the module notes), e.g.
            ``initscope.runs.RunWriter(path)`` or ``initscope.runs.TensorBoardSink(log_dir)``.
            In a process group only rank 0 feeds its sinks (the statistics are merged over
            ranks); inside ``initscope.distributed.per_rank()`` every rank feeds its own.

    Raises:
        ModelError: ``model`` is not a module, or the selection is empty.
        ArgumentError: ``every`` or ``max_rows`` below 1.
    """

    def __init__(self, model: nn.Module, every: int = 1, *, modules: ModuleSelection = None,
                 max_rows: int = 200_000, sinks: Sequence[Any] = ()) -> None:
        check.module(model, "Recorder")
        for name, v in (("every", every), ("max_rows", max_rows)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ArgumentError(f"{name} must be a whole number >= 1; got {v!r}")
        self.model, self.every, self.max_rows = model, every, max_rows
        self.watched = select_modules(model, modules)
        self._take_params()
        self._step = 0
        self._tap: Tap | None = None
        self._acc = StatsAccumulator()
        self._param_hooks: list = []
        self._steps: list[_Step] = []
        self._n_rows = 0
        self._merged = MergedStats()  # every recorded step, merged
        self._layers: dict[str, tuple[str, bool]] = {}
        self._last_selection: tuple | None = None  # (signature, _selection's answer) of the last recorded step
        self._open = False
        self._reducer = distributed.Reducer("Recorder step") if distributed.active() else None
        self.sinks, self._sinks_open = list(sinks), False

    def __enter__(self) -> Recorder:
        self._open = True
        self._arm()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self._flush()
        finally:
            self._disarm()
            self._open = False
            self._close_sinks()

    @property
    def step_count(self) -> int:
        """Training steps counted so far."""
        return self._step

    def step(self) -> None:
        """Mark the end of a training step: store a recorded step's statistics, arm or disarm."""
        self._flush()
        self._step += 1
        if self._open and self._tap is not None and not self._step % self.every and not distributed.active():
            self._acc.clear()  # recorded again: the hooks stay, the step's state starts afresh
            self._tap.reset()
            self._measure_values()
            return
        self._disarm()
        if self._open:
            self._arm()

    def _arm(self) -> None:
        if self._step % self.every or self._tap is not None:
            return
        self._acc.clear()  # one accumulator for the run: its buffers are reused step after step
        if distributed.active():  # FSDP2 replaces its parameter objects on its first forward
            self._take_params()
        self._tap = Tap(self.model, self.watched, self._acc).__enter__()
        acc = self._tap.acc
        for name, p in self._params:
            if p.requires_grad and not distributed.is_dtensor(p):  # FSDP2 sets a DTensor's grad outside autograd
                # the kernel's extension called straight from autograd's Python hook, else the
                # accumulator's add itself, the key bound: no frame of ours between (both return None)
                key = ("grad", name)
                self._param_hooks.append(p.register_hook(acc.grad_writer(key, p) or functools.partial(acc.add, key)))
        self._measure_values()

    def _take_params(self) -> None:
        """The parameters measured, and whether any is a DTensor (whose steps take the Stats path)."""
        self._params = measured_params(self.model)
        self._value_keys, self._values = [("value", n) for n, _ in self._params], [p for _, p in self._params]
        self._any_dtensor = any(distributed.is_dtensor(p) for _, p in self._params)

    def _measure_values(self) -> None:
        """Queue the parameters' values, as the step starts."""
        if self._any_dtensor:
            for name, p in self._params:
                self._acc.add(("value", name), distributed.local(p))
        else:
            self._acc.add_many(self._value_keys, self._values)

    def _disarm(self) -> None:
        hooks, self._param_hooks = self._param_hooks, []
        for h in hooks:
            h.remove()
        if self._tap is not None:
            self._tap.__exit__(None, None, None)
            self._tap = None

    def _flush(self) -> None:
        if self._tap is None or not self._tap.calls:  # armed, but no forward ran
            return
        tap = self._tap
        if self._reducer is None and self._flush_columns(tap):
            return
        with distributed.section(self._reducer):
            host = self._host(tap)
        per: dict[tuple[str, str], Stats] = {}
        for key, s in host:
            k = self._history_key(tap, key)
            if k is not None:
                per[k] = per[k].merge(s) if k in per else s
        self._store(per)

    def _history_key(self, tap: Tap, key: tuple) -> tuple[str, str] | None:
        """The (layer, phase) a measured tensor's key is stored under, or None (not in the history)."""
        if key[0] in ("value", "grad"):
            return key[1], "param" if key[0] == "value" else "grad"
        call = tap.calls[key[0]]
        self._layers.setdefault(call.name, (call.type, call.weight_layer))
        if key[1] != call.main:
            return None  # the history follows each layer's main output
        return call.name, "forward" if key[2] == "fwd" else "backward"

    def _flush_columns(self, tap: Tap) -> bool:
        """The step stored from the statistics as arrays, without a Stats per tensor; False (and
        nothing done) unless every tensor went through the fused kernel, one per history key, and
        no parameter is a DTensor (their gradients are added at the flush)."""
        keys = None if self._any_dtensor else tap.acc.fused_keys()
        if keys is None:
            return False
        sel, hkeys, repeated = self._selection(tap, keys)
        if repeated:  # several tensors under one key: merged as Stats
            fields = decode_fields(tap.acc.to_columns()[1], sel)
            per: dict[tuple[str, str], Stats] = {}
            for k, f in zip(hkeys, fields):
                s = Stats._of(f)
                per[k] = per[k].merge(s) if k in per else s
            self._store(per)
            return True
        count, m, ints, has, hist, fmt, units, values = tap.acc.to_table(sel)
        hists = {k: hist[j] for j, k in enumerate(hkeys) if k[1] in ("forward", "backward")}
        self._merged.add_arrays(hkeys, count, m, ints, has, hist, fmt, units)
        self._keep(_Step(self._step, hkeys, values, int(np.count_nonzero(values == values)), hists, count))
        return True

    def _selection(self, tap: Tap, keys: list) -> tuple[list[int], list[tuple[str, str]], bool]:
        """Which of a step's measured tensors the history keeps, and under which keys: the rows
        ``sel``, their (layer, phase), and whether a key repeats. A recorded step usually repeats
        the last one's calls, so the answer is kept for the last signature (keys, and each call's
        name and outputs)."""
        sig = (tuple(keys), tuple((c.name, len(c.outputs), c.main) for c in tap.calls))
        if self._last_selection is not None and self._last_selection[0] == sig:
            return self._last_selection[1]
        sel, hkeys = [], []
        for i, key in enumerate(keys):
            k = self._history_key(tap, key)
            if k is not None:
                sel.append(i)
                hkeys.append(k)
        self._last_selection = (sig, (sel, hkeys, len(set(hkeys)) != len(hkeys)))
        return self._last_selection[1]

    def _host(self, tap: Tap) -> list:
        """This step's statistics on the host (one transfer); in a process group, merged over ranks."""
        for name, p in self._params:
            if distributed.is_dtensor(p) and p.grad is not None:
                tap.acc.add(("grad", name), distributed.local(p.grad))
        return distributed.reduce_stats(tap.acc.to_host(), self._reducer,
                                        local_keys=distributed.replicated_keys(self._params),
                                        signature=distributed.model_signature(self._params))

    def _store(self, per: dict[tuple[str, str], Stats]) -> None:
        keys = list(per)
        count, m, ints, has, hist, fmt, units = arrays_of(list(per.values()))
        values = table_of(count, m, ints, has, fmt, units)
        hists = {k: s.hist for k, s in per.items() if k[1] in ("forward", "backward")}
        if keys:
            self._merged.add_arrays(keys, count, m, ints, has, hist, fmt, units)
        self._keep(_Step(self._step, keys, values, int(np.count_nonzero(values == values)), hists, count))

    def _keep(self, step: _Step) -> None:
        """Append a recorded step, feed the sinks, and thin the history when it outgrows max_rows."""
        self._steps.append(step)
        self._emit(step)
        self._n_rows += step.rows
        while self._n_rows > self.max_rows and len(self._steps) > 1:
            self._steps = self._steps[:-1][::2] + self._steps[-1:]
            self._n_rows = sum(st.rows for st in self._steps)

    @property
    def history(self) -> list[Row]:
        """All rows, oldest first (made on each access from the stored tables)."""
        names = list(STATS)
        return [Row(st.step, layer, phase, names[j], float(v))
                for st in self._steps for (layer, phase), row in zip(st.keys, st.values.tolist())
                for j, v in enumerate(row) if v == v]

    def histograms(self, layer: str, phase: str = "forward") -> tuple[np.ndarray, np.ndarray]:
        """A layer's log2|x| histogram at each recorded step (fastai's "colorful dimension").

        Returns:
            (steps, counts): the recorded step numbers, and int64 counts [steps, bins] with the
            bins of :attr:`initscope.stats.Stats.hist`.
        """
        kept = [(st.step, st.hists[layer, phase]) for st in self._steps if (layer, phase) in st.hists]
        if not kept:
            raise KeyError(f"no {phase} histogram of layer {layer!r}; recorded layers: {sorted(self._layers)[:10]}")
        return np.array([s for s, _ in kept]), np.stack([h for _, h in kept])

    @property
    def trace(self) -> Trace:
        """Statistics merged over every recorded step, as one Trace (one record per layer)."""
        merged = self._merged
        def rec(name: str) -> LayerRecord:
            typ, weight = self._layers[name]
            out = OutputRecord("", (), "", merged.get((name, "forward")), merged.get((name, "backward")))
            return LayerRecord(name, typ, 0, (out,), weight)

        params = tuple(ParamRecord(n, tuple(p.shape), str(p.dtype).replace("torch.", ""), merged.get((n, "param")),
                                   merged.get((n, "grad"))) for n, p in self._params if (n, "param") in merged)
        return Trace(tuple(rec(n) for n in self._layers), params)

    @property
    def findings(self) -> list[Finding]:
        """Judge the whole run with the default thresholds: merged statistics plus trends
        across recorded steps. For others: ``diagnose_run(rec.trace, rec.history, thresholds)``."""
        return diagnose_run(self.trace, self.history)


    # --- sinks and run files (issue 14) ---
    def _emit(self, step: RecordedStep) -> None:
        # in a process group the statistics are already merged over ranks: rank 0 alone writes
        # (under distributed.per_rank() each rank is its own writer)
        if not self.sinks or not distributed.is_writer():
            return
        if not self._sinks_open:
            self._sinks_open = True
            for sink in self.sinks:
                sink.open(self.summary())
        for sink in self.sinks:
            sink.write(step)

    def _close_sinks(self) -> None:
        """Close every sink, also when one of them raises; the first error is raised after."""
        if self._sinks_open:
            self._sinks_open = False
            errors = []
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception as e:  # noqa: BLE001  the others still flush and close
                    errors.append(e)
            if errors:
                raise errors[0]

    @property
    def steps(self) -> tuple[RecordedStep, ...]:
        """The recorded steps the history holds, oldest first."""
        return tuple(self._steps)

    def summary(self) -> dict:
        """The model summary a run file keeps: layers seen so far, parameters, ``every``, versions."""
        from initscope import __version__

        return {"initscope": __version__, "torch": torch.__version__, "every": self.every,
                "model": type(self.model).__name__,
                "layers": [{"name": n, "type": t, "weight_layer": w} for n, (t, w) in self._layers.items()],
                "params": [{"name": n, "shape": list(p.shape), "dtype": str(p.dtype).replace("torch.", "")}
                           for n, p in self._params]}

    def to_run(self) -> Run:
        """The history as an :class:`initscope.runs.Run`."""
        from initscope.runs import Run

        return Run.from_steps(self._steps, self.summary())

    def save(self, path: str | os.PathLike) -> Any:
        """Write the history as a run file (see :mod:`initscope.runs`); returns its path."""
        return self.to_run().save(path)

    @staticmethod
    def load(path: str | os.PathLike) -> Run:
        """Read a run file written by :meth:`save` or a ``RunWriter`` sink."""
        from initscope.runs import Run

        return Run.load(path)

    def to_pandas(self) -> Any:
        """The history as a long pandas table; see :meth:`initscope.runs.Run.to_pandas`."""
        return self.to_run().to_pandas()


class _Step(NamedTuple):
    """One recorded step: a float64 table [keys, STATS] (NaN where a statistic does not apply),
    and the forward and backward histograms. Arrays, not rows of Python objects, so that a long
    run does not fill the garbage collector's generations (a full collection walks them all)."""

    step: int
    keys: list[tuple[str, str]]
    values: np.ndarray
    rows: int
    hists: dict[tuple[str, str], np.ndarray]
    counts: np.ndarray | None = None  # values per key


RecordedStep = _Step

