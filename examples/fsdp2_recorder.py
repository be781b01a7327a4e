"""Train a small transformer with FSDP2 and the Recorder, on CPU with gloo.

    torchrun --nproc-per-node 2 examples/fsdp2_recorder.py [--steps 20] [--out fsdp2-report]

Every rank initializes its shards with the counter-based generator (the gathered weights
equal a single-process run's), trains on its part of each batch, and records statistics
every few steps; the Recorder merges them over the ranks (one all_reduce per recorded
step), so rank 0 holds the figures of the whole batch. Rank 0 writes the report: the
run file (written while training), the report of the run, and the probe HTML report of the
statistics merged over ranks and steps.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import initscope
from initscope import distributed, zoo
from initscope.runs import RunWriter


def build(world: int) -> nn.Module:
    """zoo.transformer with every block and the root fully_shard-ed, built on meta, then to_empty."""
    with torch.device("meta"):
        model = zoo.transformer(depth=2, d_model=64, heads=4)
    mesh = init_device_mesh("cpu", (world,))
    for block in model.modules():
        if isinstance(block, zoo.TransformerBlock):
            fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device="cpu")
    return model


def write_report(rec: initscope.Recorder, out: Path) -> None:
    """Rank 0: the report of the run (from the run file the Recorder's sink wrote while
    training) and the probe-style report of the statistics merged over ranks and steps."""
    from initscope.report.html import Run as Section, report_html, write_report as write_html
    from initscope.runs import Run
    Run.load(out / "run.parquet").report(out / "report.html")
    write_html(out / "index.html", report_html("FSDP2 + Recorder", [Section("merged over ranks and steps", rec.trace)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--out", default="fsdp2-report")
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same batches on every rank; each trains on its part
    model = build(world)
    x = torch.randn(8, 16, 64)
    plan = initscope.initialize(model, "kaiming", distributed.batch_shard(x), seed=7)  # rng="auto": philox
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = Path(args.out)
    if rank == 0:  # the Recorder feeds its sinks on rank 0 only; the run file is written while training
        out.mkdir(parents=True, exist_ok=True)
    sinks = [RunWriter(out / "run.parquet", flush_every=2)] if rank == 0 else []
    with initscope.Recorder(model, every=args.every, sinks=sinks) as rec:
        for step in range(args.steps):
            batch = distributed.batch_shard(torch.randn(8, 16, 64))
            opt.zero_grad()
            loss = model(batch).pow(2).mean()
            loss.backward()
            opt.step()
            rec.step()
    if rank == 0:
        print(f"world {world}: {len(plan.rows)} plan rows ({plan.notes[-1][:60]}...), "
              f"{rec.step_count} steps, {len(rec.history)} history rows")
        for finding in rec.findings[:5]:
            print("finding:", finding.message)
        write_report(rec, out)
        print(f"run file: {os.path.abspath(out)}/run.parquet; reports: report.html (the run), index.html (merged)")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
