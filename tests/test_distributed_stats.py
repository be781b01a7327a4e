"""Global statistics under DDP and FSDP2 (gloo, 2 ranks): a run on halves of a batch gives the
single-process figures of the whole batch; LSUV applies the same scale on every rank."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # spawned ranks import the workers by module name
from dist_helpers import run  # noqa: E402
from dist_workers import _lsuv_all, _stats_worker  # noqa: E402


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_probe_and_recorder_reduce_over_ranks(mode):
    results = run(_stats_worker, 2, mode, timeout=150)
    for r in results:
        assert r["bad"] == []
        # recorded steps 0, 2, 4: the first exchanges the layout (2 all_reduce), the others one each;
        # the unrecorded steps 1 and 3 none
        assert r["per_step"] == [2, 0, 1, 0, 1]
    assert results[0]["first_mean"] == results[1]["first_mean"]  # every rank holds the global figures
    # only rank 0 feeds the Recorder's sinks: the recorded steps 0, 2, 4, already merged over ranks
    assert results[0]["sink"] == (True, [0, 2, 4], True)
    assert results[1]["sink"] == (False, [], False)


def test_lsuv_same_scale_on_every_rank():
    """A replicated model, DDP and FSDP2 (initialized shard-aware first), one group for the three."""
    for r in run(_lsuv_all, 2, timeout=200):
        assert {mode: v["bad"] for mode, v in r.items()} == {"plain": [], "ddp": [], "fsdp": [],
                                                             "fsdp, verify='pass'": []}


def test_cli_probe_on_two_ranks_rank0_prints_and_writes(tmp_path):
    from dist_workers import _cli_worker
    spec = "zoo:mlp?depth=3&width=16&batch=32"
    (c0, out0, wrote0), (c1, out1, wrote1) = run(_cli_worker, 2, spec, str(tmp_path), timeout=120)
    assert c0 == c1 == 0
    assert "initscope probe" in out0 and wrote0
    assert out1 == "" and not wrote1
