"""How far lsuv() is from its floor: lsuv() verified in flight (one pass) and by a second pass,
one and two plain eval forwards and the ``lsuv`` package, interleaved in one process on fresh
copies of one model; medians, minor page faults.

The floor is one forward (two with ``verify="pass"``) plus the orthogonal pre-init (which the
peer pays too), so peer / (forwards + pre-init) bounds each speedup.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/lsuv_floor.py [threads] [repeats] [model]``
"""
from __future__ import annotations

import contextlib
import copy
import io
import resource
import statistics
import sys
import time

import lsuv as peer
import torch

from initscope import zoo
from initscope.lsuv import _pre_init, _select, lsuv


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    name = sys.argv[3] if len(sys.argv) > 3 else "plain_cnn"
    base, x = zoo.build(name, batch=32, seed=0)

    def ours(m):
        lsuv(m, x, tol=0.1)

    def ours_pass(m):
        lsuv(m, x, tol=0.1, verify="pass")

    def fwd1(m):
        with torch.no_grad():
            m.eval()
            m(x)

    def fwd2(m):
        with torch.no_grad():
            m.eval()
            m(x)
            m(x)

    def pre_init(m):
        _pre_init(_select(m, None), "orthogonal", None)

    def theirs(m):
        with contextlib.redirect_stdout(io.StringIO()):
            peer.lsuv_with_singlebatch(m, x, std_tol=0.1, verbose=False, device=torch.device("cpu"))

    runs = {"ours": ours, "ours, verify='pass'": ours_pass, "one forward": fwd1, "two forwards": fwd2,
            "pre-init": pre_init, "peer": theirs}
    times: dict[str, list[float]] = {k: [] for k in runs}
    faults: dict[str, list[int]] = {k: [] for k in runs}
    for fn in runs.values():  # warm-up
        fn(copy.deepcopy(base))
    for r in range(reps):
        for k in list(runs)[:: 1 if r % 2 == 0 else -1]:
            m = copy.deepcopy(base)
            f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            runs[k](m)
            times[k].append(time.perf_counter() - t0)
            faults[k].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{name}, {torch.get_num_threads()} thread(s), {reps} interleaved repeats: " + ", ".join(
        f"{k} {med[k] * 1e3:.0f} ms ({statistics.median(faults[k]):.0f} faults)" for k in runs))
    slow = "ours, verify='pass'"
    print(f"speedup {med['peer'] / med['ours']:.1f}x (bound peer / (one forward + pre-init) "
          f"{med['peer'] / (med['one forward'] + med['pre-init']):.1f}x); verify='pass': "
          f"{med['peer'] / med[slow]:.1f}x (bound peer / (two forwards + pre-init) "
          f"{med['peer'] / (med['two forwards'] + med['pre-init']):.1f}x)")


if __name__ == "__main__":
    main()
