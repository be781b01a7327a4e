"""Where a recorded training step's extra time goes (issue 16): the statistics kernel
(the fused kernel's calls from Python and the time of the gradient hooks the extension runs by
its own clock, or ``stats._measure`` on the torch-ops path, timed by a wrapper), the rest of the hooks, and the flush in
``Recorder.step()``; plus minor page faults. One Recorder(every=1) is kept for the run; plain
steps disarm its hooks; the two kinds of step alternate; medians.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/recorder_breakdown.py [repeats] [threads] [models]``
"""
from __future__ import annotations

import importlib.util
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from initscope import _native
from initscope import stats as S
from initscope.recorder import Recorder

_spec = importlib.util.spec_from_file_location("po", Path(__file__).with_name("probe_overhead.py"))
po = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(po)
_clock = {"s": 0.0, "calls": 0}
_measure = S._measure


def _timed(fn):
    def timed(*args, **kwargs):
        _clock["calls"] += 1
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        _clock["s"] += time.perf_counter() - t
        return out
    return timed


def _one(model, opt, x, y, rec) -> tuple[float, float, float, int, int]:
    """(fwd+bwd+opt s, step() s, kernel s inside fwd+bwd, tensors measured there, minor faults)."""
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    _clock["s"], _clock["calls"] = 0.0, 0
    sink = getattr(rec._acc, "_sink", None) if rec is not None else None
    ns = getattr(sink, "hook_ns", 0)
    t0 = time.perf_counter()
    po._step(model, opt, x, y)
    t1 = time.perf_counter()
    # step() re-arms: the next step's parameter values
    kern, calls = _clock["s"] + (getattr(sink, "hook_ns", 0) - ns) * 1e-9, _clock["calls"]
    if sink is not None:  # the slab's rows: the step's tensors, the parameter values queued before it
        calls = rec._acc._slab.rows - len(rec._value_keys)
    if rec is not None:
        rec.step()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, kern, calls, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0


def bench(name: str, reps: int) -> str:
    model, x, y, opt = po.setup(name)
    rec = Recorder(model, every=1).__enter__()
    rec.step()
    plain, recd = [], []
    for r in range(reps + 2):  # the first two rounds are warm-up
        for kind in ("plain", "rec") if r % 2 else ("rec", "plain"):
            if kind == "plain":
                rec._disarm()
                out = _one(model, opt, x, y, None)
                rec._arm()
            else:
                out = _one(model, opt, x, y, rec)
            (plain if kind == "plain" else recd).append(out) if r >= 2 else None
    calls = recd[-1][3]
    rec.__exit__(None, None, None)
    p = statistics.median(o[0] for o in plain)
    step, flush, kern = (statistics.median(o[i] for o in recd) for i in range(3))
    flt = statistics.median(o[4] for o in recd) - statistics.median(o[4] for o in plain)
    return (f"{name:<12} plain {p * 1e3:6.1f} ms | recorded {(step + flush) / p:5.3f}x: kernel in fwd+bwd {kern / p:6.1%}, "
            f"other hook cost {(step - p - kern) / p:6.1%}, step() (flush, re-arm) {flush / p:5.1%} | {calls} tensors, "
            f"{kern / max(calls, 1) * 1e6:.0f} us each | extra minor faults {flt:.0f}")


def main() -> None:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    if len(sys.argv) > 2:
        torch.set_num_threads(int(sys.argv[2]))
    ext = None if _native.disabled() else _native.load()
    if ext is not None:  # every call of the fused kernel, whichever path makes it
        ext.fused_stats = _timed(ext.fused_stats)
        if hasattr(ext, "measure_row"):  # add()'s usual path, which calls the kernel inside C++
            ext.measure_row = _timed(ext.measure_row)
        if hasattr(ext, "Sink"):  # the slab's owner: add() and the forward hooks call the kernel through it
            ext.Sink.measure_watch = _timed(ext.Sink.measure_watch)
    else:  # the torch-ops path
        S._measure = _timed(_measure)
    for name in sys.argv[3].split(",") if len(sys.argv) > 3 else ("cnn", "mlp", "transformer"):
        print(bench(name, reps), flush=True)


if __name__ == "__main__":
    main()
