"""No hangs: a rank that raises, or ranks whose models differ, give every rank the same typed error."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # spawned ranks import the workers by module name
from dist_helpers import run  # noqa: E402
from dist_workers import _error_worker, _late_worker  # noqa: E402

from initscope import distributed  # noqa: E402
from initscope.errors import ArgumentError  # noqa: E402


def test_a_rank_that_raises_stops_every_rank():
    results = run(_error_worker, 2, "raises", timeout=60)
    assert [r[:2] for r in results] == [("DistributedError", 1)] * 2
    assert all("rank 1 raised" in r[3] and "boom on this rank" in r[3] for r in results)


def test_different_models_name_the_rank_and_parameter():
    results = run(_error_worker, 2, "differ", timeout=60)
    assert [r[:3] for r in results] == [("DistributedError", 1, "0.weight")] * 2
    assert all("models differ" in r[3] for r in results)


def test_a_rank_that_never_arrives_times_out():
    (kind, seconds, message), _ = run(_late_worker, 2, timeout=60)
    assert kind == "DistributedError" and "probe" in message
    # the bound set was 3 s; the sleeping rank only returns after 12 s: an answer before then came from
    # the bound, however slow the machine (no fixed ceiling that load alone could break)
    assert 3 <= seconds < 12


def test_without_a_group_nothing_is_reduced():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_writer()
    items = [("a", object())]
    assert distributed.reduce_stats(items, distributed.Reducer("x")) is items
    t = torch.ones(3, 2)
    local, offsets, shape = distributed.local_shard(t)
    assert local is t and offsets == (0, 0) and shape == (3, 2)


def test_timeout_must_be_positive():
    with pytest.raises(ArgumentError, match="timeout"):
        distributed.set_timeout(0)
