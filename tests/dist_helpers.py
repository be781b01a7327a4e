"""Run a function on N gloo ranks in spawned processes, each run bounded in time.

A rank's return value (or its traceback) comes back through a queue; a group that does not
finish within the timeout is killed and the test fails instead of hanging.
"""
from __future__ import annotations

import os
import queue
import socket
import traceback
import warnings

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank: int, world: int, port: int, out, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      INITSCOPE_NO_NATIVE="1")  # no compile of the fused kernel in every spawned rank
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    try:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
        try:
            out.put((rank, True, fn(rank, world, *args)))
        finally:
            torch.distributed.destroy_process_group()
    except BaseException:
        out.put((rank, False, traceback.format_exc()))


def run(fn, world: int, *args, timeout: float = 90.0) -> list:
    """fn(rank, world, *args) on every rank; returns the ranks' results in rank order.

    Raises:
        AssertionError: a rank raised (its traceback is shown) or the group ran past ``timeout``.
    """
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world, port, out, args), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, object] = {}
    try:
        for _ in range(world):
            rank, ok, value = out.get(timeout=timeout)
            assert ok, f"rank {rank} failed:\n{value}"
            results[rank] = value
    except queue.Empty:
        raise AssertionError(f"the group of {world} did not finish within {timeout} s (ranks done: {sorted(results)})")
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world)]
