"""MergedStats (the Recorder's run-level merge, vectorised) against a chain of Stats.merge."""
import math

import numpy as np
import pytest
import torch

from initscope._merged import MergedStats
from initscope.errors import ShapeError
from initscope.stats import Stats, tensor_stats

INF, NAN = float("inf"), float("nan")


def step_stats(rng: np.random.Generator, key: int, step: int) -> Stats:
    """A key's Stats at a step: data of any size (also none), now and then NaN or infinities,
    with or without a saturation band (the same per key but for key 3, where it varies)."""
    n = int(rng.integers(0, 4)) * int(rng.integers(1, 30))
    x = rng.normal(loc=rng.normal() * 10, scale=rng.uniform(0.01, 5), size=(n, 4))
    if n and rng.random() < 0.15:
        x.flat[rng.integers(0, x.size)] = rng.choice([NAN, INF, -INF])
    band = (0.0, 1.0) if key % 2 or (key == 3 and step % 3) else None
    t = torch.from_numpy(x).float()
    return tensor_stats(t, unit_dim=1, saturation=band) if n else Stats.empty(4, band is not None)


def same_bits(a: Stats, b: Stats) -> bool:
    scalars = ("count", "mean", "m2", "min", "max", "zeros", "nan", "posinf", "neginf", "saturated")
    same = all((isinstance(getattr(a, f), float) and math.isnan(getattr(a, f)) and math.isnan(getattr(b, f)))
               or getattr(a, f) == getattr(b, f) for f in scalars)
    return same and a.hist.tolist() == b.hist.tolist() and a.formats.tolist() == b.formats.tolist() \
        and a.unit_nonzero.tolist() == b.unit_nonzero.tolist()


@pytest.mark.parametrize("seed", range(6))
def test_the_same_bits_as_a_chain_of_merges(seed):
    rng = np.random.default_rng(seed)
    merged, chain = MergedStats(rows=2), {}  # 2 rows: the arrays grow
    for step in range(12):
        keys = [k for k in range(5) if rng.random() < 0.8]  # keys come and go
        per = {k: step_stats(rng, k, step) for k in keys}
        merged.add(per)
        for k, s in per.items():
            chain[k] = chain[k].merge(s) if k in chain else s
        for k, s in chain.items():
            assert same_bits(merged.get(k), s), (seed, step, k)
    assert merged.get(99) is None and 99 not in merged and 0 in merged


def test_units_that_change_are_refused_as_merge_refuses_them():
    merged = MergedStats()
    merged.add({"a": tensor_stats(torch.randn(4, 3), unit_dim=1)})
    with pytest.raises(ShapeError):
        merged.add({"a": tensor_stats(torch.randn(4, 2), unit_dim=1)})
