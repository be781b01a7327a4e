"""Our own time inside a recorded training step (issue 16), by where it is spent: the forward
hooks (Tap._forward: bookkeeping, the kernel, the gradient hooks' registration), the gradient
hooks run in Python (``StatsAccumulator.add`` for output and parameter gradients, kernel
included), the gradient hooks run in the kernel's extension (its own clock, where the checkout
has one), the parameter values queued as the step starts, and the rest of ``Recorder.step()``
(the flush of the step's statistics).

These are sums of time inside our functions, measured inside real steps, where a hook's Python
and the kernel meet caches the step's GEMMs have just filled; they move far less than a whole
step's wall time does on a shared box, so two versions of the code can be compared run against
run. Run it from a checkout: it imports that checkout's ``src``.

Usage:
    python benchmarks/recorder_hooks.py [--models transformer,mlp,cnn] [--steps 40] [--threads 2]
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from initscope import stats as S  # noqa: E402
from initscope.probe import Tap  # noqa: E402
from initscope.recorder import Recorder  # noqa: E402

_spec = importlib.util.spec_from_file_location("po", Path(__file__).with_name("probe_overhead.py"))
po = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(po)
_clock: dict[str, float] = {}


def _timed_add(add):
    def timed(self, key, *args, **kwargs):
        t = time.perf_counter()
        add(self, key, *args, **kwargs)
        kind = key[0] if isinstance(key[0], str) else key[2]  # "value", "grad", or a Tap key's "fwd" / "bwd"
        if kind != "fwd":  # a forward hook's add() is inside Tap._forward's time
            _clock[kind] = _clock.get(kind, 0.0) + time.perf_counter() - t
    return timed


def _timed_method(cls, name: str, label: str) -> None:
    fn = getattr(cls, name)
    def timed(self, *args, **kwargs):
        t = time.perf_counter()
        out = fn(self, *args, **kwargs)
        _clock[label] = _clock.get(label, 0.0) + time.perf_counter() - t
        return out
    setattr(cls, name, timed)


def bench(name: str, steps: int) -> str:
    model, x, y, opt = po.setup(name)
    per: list[dict[str, float]] = []
    with Recorder(model, every=1) as rec:
        for i in range(steps + 5):  # five steps of warm-up
            _clock.clear()
            sink = getattr(rec._acc, "_sink", None)
            ns = getattr(sink, "hook_ns", 0)
            po._step(model, opt, x, y)
            rec.step()
            _clock["ext"] = (getattr(sink, "hook_ns", 0) - ns) * 1e-9
            if i >= 5:
                per.append(dict(_clock))
    med = {k: statistics.median(p.get(k, 0.0) for p in per) * 1e6
           for k in ("forward", "bwd", "grad", "ext", "values", "step")}
    return (f"{name:<12} forward hooks {med['forward']:6.0f} us | gradient hooks: in Python, outputs {med['bwd']:5.0f} "
            f"+ parameters {med['grad']:5.0f} us, in the extension {med['ext']:5.0f} us | values queued "
            f"{med['values']:5.0f} us | Recorder.step() {med['step']:6.0f} us (values included) | sum "
            f"{sum(med[k] for k in ('forward', 'bwd', 'grad', 'ext', 'step')):6.0f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="transformer,mlp,cnn")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    S.StatsAccumulator.add = _timed_add(S.StatsAccumulator.add)
    _timed_method(Tap, "_forward", "forward")
    _timed_method(Recorder, "_measure_values", "values")
    _timed_method(Recorder, "step", "step")
    print(f"torch {torch.__version__}, {args.threads} threads, {ROOT.name}: median over {args.steps} recorded steps")
    for name in args.models.split(","):
        print(bench(name, args.steps), flush=True)


if __name__ == "__main__":
    main()
