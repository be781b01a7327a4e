"""Cost of the fused statistics kernel inside recorded training steps, against another build.

Runs the transformer of probe_overhead.py (4 pre-LN blocks, d_model 64, seq 64, batch 32) under
a Recorder(every=1) and times every ``fused_stats`` call of a step (the tensors arrive as the
step made them, not hot in cache), then the same sizes measured hot (one tensor again and
again). Kernel builds alternate step by step in one process, with a plain step among them;
medians over the repeats. ``--old`` compiles another source of the kernel under its own name,
e.g. the committed one, to compare:

    git show HEAD~1:src/initscope/_fused_stats.cpp > /tmp/old.cpp
    TORCH_EXTENSIONS_DIR=/tmp/ext python benchmarks/fused_stats_instep.py --old /tmp/old.cpp

The machine should be otherwise idle: a busy core delays the pool's second thread by a
scheduler time slice (milliseconds) on every parallel call.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import probe_overhead  # noqa: E402
from initscope import _measure, _native  # noqa: E402
from initscope.recorder import Recorder  # noqa: E402

SIZES = (524288, 131072)  # the (32, 64, 256) and (32, 64, 64) activations


class _Timed:
    """Stands in for the loaded extension: forwards each call to ``target``, timing it."""

    def __init__(self, target: object) -> None:
        self.target, self.log = target, None

    def fused_stats(self, x: torch.Tensor, *args: object) -> None:
        start = time.perf_counter_ns()
        self.target.fused_stats(x, *args)
        if self.log is not None:
            self.log.append((x.numel(), (time.perf_counter_ns() - start) / 1e3))

    def set_isa(self, level: int) -> str:
        return self.target.set_isa(level)


def _hot(ext: object, numel: int, repeats: int) -> float:
    x = torch.randn(numel // 4096, 64, 64) if numel != 524288 else torch.randn(32, 64, 256)
    slab = _native.Slab()
    times = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        ext.fused_stats(x, x.shape[-1], 1, False, 0.0, 0.0, _measure._EDGE_BITS, True,
                        slab.scal, slab.counts, slab.nonzero, 0, 0)
        times.append((time.perf_counter_ns() - start) / 1e3)
    return statistics.median(times[repeats // 5:])


def _summary(name: str, logs: list, steps: list[float], hot: dict[int, float]) -> str:
    if not logs:
        return f"  {name:8s} step {statistics.median(steps):6.2f} ms"
    total = statistics.median(sum(t for _, t in log) for log in logs)
    by: dict[int, list[float]] = {}
    for log in logs:
        for n, t in log:
            by.setdefault(n, []).append(t)
    sizes = "  ".join(f"{n}: {statistics.median(by[n]):6.1f} in-step {hot[n]:6.1f} hot" for n in SIZES if n in by)
    return (f"  {name:8s} step {statistics.median(steps):6.2f} ms  kernel {total:6.0f} us in {len(logs[0])} calls"
            f"   {sizes}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", help="another source of the kernel, compiled as initscope_fused_old")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    builds = [("new", _native.load())]
    if args.old:
        from torch.utils import cpp_extension
        builds.insert(0, ("old", cpp_extension.load("initscope_fused_old", [args.old], extra_cflags=["-O3", "-fopenmp"],
                                                     extra_ldflags=["-fopenmp"])))
    timed = _Timed(builds[-1][1])
    _native._module = timed  # the Recorder takes the kernel from here
    _, factory, shape = probe_overhead.MODELS["transformer"]
    torch.manual_seed(0)
    model, x = factory(), torch.randn(shape)
    y = torch.randint(0, 10, shape[:2])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    variants = builds + [("plain", None)]
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        logs = {name: [] for name, _ in variants}
        steps = {name: [] for name, _ in variants}
        with Recorder(model, every=1) as rec:
            for r in range(args.repeats + 2):  # two warm-up rounds
                for name, ext in variants[r % len(variants):] + variants[:r % len(variants)]:
                    if ext is None:
                        rec._disarm()
                    if ext is not None:  # a plain step keeps the last build for the re-arming
                        timed.target, timed.log = ext, []
                    start = time.perf_counter()
                    probe_overhead._step(model, opt, x, y)
                    if ext is not None:
                        rec.step()
                    elapsed = time.perf_counter() - start
                    if ext is None:
                        rec._arm()
                    if r >= 2:
                        steps[name].append(elapsed * 1e3)
                        if ext is not None:
                            logs[name].append(timed.log)
                    timed.log = None
        hot = {name: {n: _hot(ext, n, 50) for n in SIZES} for name, ext in builds}
        print(f"{threads} thread(s): medians; per call us for the two activation sizes")
        for name, _ in variants:
            print(_summary(name, logs[name], steps[name], hot.get(name, {})))


if __name__ == "__main__":
    main()
