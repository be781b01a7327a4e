"""moments() of a callable against a Monte Carlo estimate of the same accuracy.

For each activation, moments() is timed; then the Monte Carlo sample size that
would reach moments()'s error is derived from the MC standard error
(sd(phi^2) / sqrt(n)), and a Monte Carlo run of that size (capped, then
extrapolated linearly in n) is timed in the same process. Prints the ratio.

Run: .venv/bin/python benchmarks/moments_vs_montecarlo.py
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from initscope.moments import moments

CASES = {
    "relu - 0.5 (callable)": (lambda x: torch.relu(x) - 0.5, 0.75 - 1 / math.sqrt(2 * math.pi)),
    "GeneralRelu(0.1, 0.4)": (lambda x: F.leaky_relu(x, 0.1) - 0.4, None),
    "tanh (callable)": (torch.tanh, None),
    "mish (callable)": (F.mish, None),
}
MC_CAP = 20_000_000  # samples actually drawn; larger sizes are extrapolated linearly


def _time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _mc(fn, n: int, gen: torch.Generator) -> float:
    total, done = 0.0, 0
    while done < n:
        k = min(n - done, 2_000_000)
        z = torch.randn(k, dtype=torch.float64, generator=gen)
        total += float(fn(z).pow(2).sum())
        done += k
    return total / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| activation | moments() time | its error | MC n for that error | MC time | MC / moments() |")
    print("|---|---|---|---|---|---|")
    rows = []
    for name, (fn, exact) in CASES.items():
        t_ours = _time(lambda: moments(fn), args.repeat)
        m = moments(fn)
        # the error of moments(): against the closed form where known, else the 1e-12 it reaches on them
        err = abs(m.second - exact) if exact is not None else 1e-12 * m.second
        err = max(err, 1e-16 * m.second)
        z = torch.randn(1_000_000, dtype=torch.float64, generator=gen)
        sd = float(fn(z).pow(2).std())
        n_needed = (sd / err) ** 2
        n_run = int(min(n_needed, MC_CAP))
        t_run = _time(lambda: _mc(fn, n_run, gen), 1)
        t_mc = t_run * n_needed / n_run
        print(f"| {name} | {t_ours * 1e3:.2f} ms | {err:.1e} | {n_needed:.1e} | {t_mc:.3g} s "
              f"{'(extrapolated)' if n_needed > n_run else ''} | {t_mc / t_ours:.2e} |")
        rows.append((name, t_ours, sd))
    print("\nMeasured, not extrapolated: Monte Carlo with 10^6 samples against moments()")
    print("| activation | MC error (1 sd) | MC time / moments() time |")
    print("|---|---|---|")
    for name, t_ours, sd in rows:
        fn = CASES[name][0]
        t_small = _time(lambda: _mc(fn, 1_000_000, gen), args.repeat)
        print(f"| {name} | {sd / 1e3:.1e} | {t_small / t_ours:.0f}x |")


if __name__ == "__main__":
    main()
