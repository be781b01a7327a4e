"""Peak memory per rank of a sharded initialize: FSDP2, gloo on CPU, 2 ranks, >= 50M parameters.

Each rank builds the model on meta, ``fully_shard``s every Linear and the root, ``to_empty``s
its shards and touches them (so they are resident), then calls initialize. The peak resident
set during the call (ru_maxrss, which only rises) minus the resident set before it is the
scratch the call needed; printed as (local shard + scratch) / local shard. Goal <= 1.2.
With example_input, discovery runs on meta stand-ins of the global shapes with FSDP2's hooks
held back (``initscope._shard_meta``), so it gathers no block either.

    python benchmarks/sharded_init_memory.py [--layers 12] [--width 2048] [--world 2]
"""
from __future__ import annotations

import argparse
import os
import resource
import socket

import torch
import torch.multiprocessing as mp
from torch import nn


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rank(rank: int, world: int, port: int, layers: int, width: int, example: bool, out) -> None:
    import warnings

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from initscope import initialize
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    with torch.device("meta"):
        model = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(layers)])
    mesh = init_device_mesh("cpu", (world,))
    for block in model:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.to_local().zero_()  # resident before measuring
    local = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    x = torch.randn(4, width) if example else None
    before, peak_before = _rss(), _peak()
    initialize(model, "kaiming", x, seed=0)
    scratch = max(0, _peak() - max(before, peak_before if peak_before > before else before))
    out.put((rank, total, local, scratch, _peak() > peak_before))
    torch.distributed.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--world", type=int, default=2)
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    for example in (False, True):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = ctx.Queue()
        procs = [ctx.Process(target=_rank, args=(r, args.world, port, args.layers, args.width, example, out))
                 for r in range(args.world)]
        for proc in procs:
            proc.start()
        rows = sorted(out.get(timeout=900) for _ in procs)
        for proc in procs:
            proc.join()
        block = args.width * args.width * 4
        how = "with example_input (discovery on meta, global shapes)" if example else "without example_input"
        print(f"initialize {how}: {rows[0][1] / 1e6:.1f}M parameters, {args.world} ranks, one block {block / 2**20:.0f} MiB")
        for rank, _, local, scratch, rose in rows:
            print(f"  rank {rank}: local shard {local / 2**20:.1f} MiB, scratch {scratch / 2**20:.1f} MiB, "
                  f"peak / local shard {(local + scratch) / local:.3f}{'' if rose else ' (peak below an earlier one: upper bound 1)'}")


if __name__ == "__main__":
    main()
