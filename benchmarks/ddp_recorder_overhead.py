"""Recorder overhead on a DDP training step: gloo on CPU, 2 ranks, one process per rank.

Per round, interleaved: a plain step, then inside a Recorder(every=2) a recorded step (hooks,
statistics, the packed all_reduce that merges them over ranks) and a non-recorded one (no
hook, no collective). Medians over rounds on rank 0; targets: recorded <= 1.30x and
non-recorded <= 1.03x a plain step.

    python benchmarks/ddp_recorder_overhead.py [--rounds 15] [--width 1024] [--depth 8] [--batch 256]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.multiprocessing as mp
from torch import nn


def _rank(rank: int, world: int, port: int, args, out) -> None:
    import warnings

    import initscope
    warnings.simplefilter("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    layers = [m for _ in range(args.depth) for m in (nn.Linear(args.width, args.width), nn.ReLU())]
    model = nn.parallel.DistributedDataParallel(nn.Sequential(*layers, nn.Linear(args.width, 10)))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch // world, args.width)

    def step() -> float:
        start = time.perf_counter()
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        return time.perf_counter() - start

    times = {"plain": [], "recorded": [], "not recorded": []}
    for _ in range(3):
        step()
    for _ in range(args.rounds):
        times["plain"].append(step())
        with initscope.Recorder(model, every=2) as rec:
            start = time.perf_counter()
            step()
            rec.step()  # a recorded step ends with the merge over ranks: it counts
            times["recorded"].append(time.perf_counter() - start)
            start = time.perf_counter()
            step()
            rec.step()
            times["not recorded"].append(time.perf_counter() - start)
    out.put((rank, {k: statistics.median(v) for k, v in times.items()}))
    torch.distributed.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, args, out)) for r in range(2)]
    for proc in procs:
        proc.start()
    rows = sorted(out.get(timeout=1200) for _ in procs)
    for proc in procs:
        proc.join()
    print(f"DDP, gloo, 2 ranks x 1 thread: MLP {args.depth} x {args.width}, batch {args.batch} "
          f"({args.batch // 2} per rank), median of {args.rounds} interleaved rounds")
    for rank, med in rows:
        plain = med["plain"]
        print(f"  rank {rank}: plain {plain * 1e3:.1f} ms, recorded {med['recorded'] / plain:.3f}x (target <= 1.30), "
              f"not recorded {med['not recorded'] / plain:.3f}x (target <= 1.03)")


if __name__ == "__main__":
    main()
