"""Ranks that take different paths (issue 13 review): LSUV on ranks that run different layers,
the Recorder on a model with an integer parameter, a rank whose share of the batch is empty."""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))  # spawned ranks import the workers by module name
from dist_helpers import run  # noqa: E402
from dist_workers import _paths_worker  # noqa: E402

from initscope import distributed  # noqa: E402


def test_ranks_on_different_paths_fail_together_or_merge():
    results = run(_paths_worker, 2, timeout=90)
    # B4: rank 1 skips `b`; its `c` met rank 0's `b`: the same error on both ranks, weights restored
    for r in results:
        kind, bad_rank, name, message, restored = r["lsuv"]
        assert (kind, bad_rank, restored) == ("DistributedError", 1, True)
        assert name == "`c` (call 1 in pass 1)" and "rank 0 reached `b` (call 1 in pass 1)" in message
    assert results[0]["lsuv"] == results[1]["lsuv"]
    # B5: the integer parameter is left out, as without a group
    assert results[0]["recorder"] == results[1]["recorder"] == ["", "lin", "lin.bias", "lin.weight"]
    # B7: 1 sample over 2 ranks: rank 1's share is empty, and both ranks hold the one sample's figures
    # (4 input values, 4 outputs of the Linear)
    assert [r["one_sample"] for r in results] == [(1, 4, 4), (0, 4, 4)]
    # zero samples on every rank: the same ShapeError on each, no DistributedError, no wait
    assert all(r["empty"][0] == "ShapeError" and "every rank" in r["empty"][1] for r in results)


def test_batch_shard_gives_every_rank_a_part(monkeypatch):
    """5 samples over 4 ranks: 2, 1, 1, 1 (torch.chunk gave 2, 2, 1 and nothing to rank 3)."""
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    x = torch.arange(10.0).view(5, 2)
    parts = []
    for r in range(4):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        parts.append(distributed.batch_shard({"x": [x], "n": 3})["x"][0])
    assert [p.shape[0] for p in parts] == [2, 1, 1, 1]
    assert torch.equal(torch.cat(parts), x)
    assert distributed.batch_shard(torch.tensor(2.0)) == 2.0  # a 0-dim tensor: the same on every rank
