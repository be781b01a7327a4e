"""What a step the Recorder does not record costs (issue 16: <= 1.01x), without the noise of whole
steps: the time of ``rec.step()`` on such a step against the training step itself, in one run.

On a step it does not record the Recorder has no hook on the model (checked here on every such
step: forward and forward-pre hooks of every module, hooks of every parameter), so the step
runs as a plain one and the only extra work is ``rec.step()``, which counts the step and arms
the hooks again before the next recorded one (that call, which also measures the parameter values
the recorded step starts from, is shown apart: it is the recorded step's cost, and
``probe_overhead.py`` counts it there). ``probe_overhead.py``'s "off-step" column times
the same thing as a ratio of whole steps, where the box's noise (+-5%) hides it.

Usage:
    python benchmarks/recorder_offstep.py [--models transformer,mlp,cnn] [--every 10] [--steps 40]
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from initscope.recorder import Recorder  # noqa: E402

_spec = importlib.util.spec_from_file_location("po", Path(__file__).with_name("probe_overhead.py"))
po = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(po)


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) + \
        sum(len(p._backward_hooks or {}) for p in model.parameters())


def bench(name: str, every: int, steps: int) -> str:
    model, x, y, opt = po.setup(name)
    own, arming, whole = [], [], []
    with Recorder(model, every=every) as rec:
        for i in range(steps):
            start = time.perf_counter()
            po._step(model, opt, x, y)
            elapsed = time.perf_counter() - start
            hooks = _hooks(model)
            start = time.perf_counter()
            rec.step()
            took = time.perf_counter() - start
            if i % every:  # a step it did not record
                if hooks:
                    raise RuntimeError(f"{name}: {hooks} hooks on the model during a step not recorded")
                whole.append(elapsed)
                # the last one before a recorded step arms the hooks and measures the parameters'
                # values that step starts from: that is the recorded step's cost, shown apart
                (arming if (i + 1) % every == 0 else own).append(took)
    t, s = statistics.median(own), statistics.median(whole)
    return (f"| {name} | {s * 1e3:.1f} ms | {t * 1e6:.1f} us | 0 | {1 + t / s:.5f}x "
            f"| {statistics.median(arming) * 1e3:.2f} ms |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="transformer,mlp,cnn")
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, Recorder(every={args.every}), "
          f"medians over the steps not recorded\n")
    print("| model | training step | rec.step() | hooks on the model | step + rec.step() / step "
          "| rec.step() before a recorded step (arms it) |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        print(bench(name, args.every, args.steps), flush=True)


if __name__ == "__main__":
    main()
