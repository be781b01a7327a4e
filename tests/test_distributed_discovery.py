"""initialize(example_input=...) on sharded models: discovery gathers no parameter (issue 13's
peak-memory goal), leaves FSDP2's hooks and state as found, and plans as one process does."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # spawned ranks import the workers by module name
from dist_discovery import _discovery_worker, _tp_worker  # noqa: E402
from dist_helpers import run  # noqa: E402


def test_fsdp2_discovery_gathers_nothing_and_plans_as_one_process():
    for rank, r in enumerate(run(_discovery_worker, 2, timeout=120)):
        # every Linear ran once, on a meta stand-in of its global weight: never on a gathered one
        # (before the meta run, FSDP2's pre-hook had unsharded it: "cpu")
        assert r["seen"] == ["meta"] and r["calls"] == 3
        assert r["hooks back"] and r["params back"] and r["lazy init"] is None
        assert r["plan"] and r["weights"]
        # a forward that fails on meta on rank 0 only (before any layer): rank 1's meta run
        # completes, yet every rank runs for real on gathered weights (no rank left waiting in
        # FSDP2's all-gather), with FSDP2's hooks back in place for it
        assert r["fallback seen"] == (["cpu"] if rank == 0 else ["cpu", "meta"])
        assert r["fallback hooks back"] and r["fallback weights"]


def test_tensor_parallel_with_example_input_plans_as_one_process():
    # plain DTensor weights: before the meta run on global shapes, a ForwardError ("mixed
    # torch.Tensor and DTensor"); parallelize_module's hooks, held back on meta: before, the real
    # run lost the input behind the hooks (producer "untracked tensor": the second layer's gain 1,
    # not ReLU's sqrt(2))
    assert run(_tp_worker, 2, timeout=120) == [{"plan": True, "weights": True, "hooked": True}] * 2
