"""The Recorder's array path (a recorded step stored from the kernel's results as arrays, no
Stats per tensor) against the Stats path it replaces: the same bits everywhere."""
import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from initscope import _native
from initscope.recorder import Recorder


def _net():
    torch.manual_seed(0)
    # ReLU (dead units), Tanh (saturation counted), a permuted view, a layer with no units
    return nn.Sequential(nn.Conv1d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 12, 16),
                         nn.Tanh(), nn.Linear(16, 4))


def _run(net, micro: int, columns: bool, monkeypatch, seen: list) -> Recorder:
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    real = Recorder._flush_columns
    def spy(self, tap):
        done = real(self, tap) if columns else False
        seen.append(done)
        return done
    monkeypatch.setattr(Recorder, "_flush_columns", spy)
    with Recorder(net, every=1) as rec:
        for step in range(4):
            opt.zero_grad()
            for _ in range(micro):
                x = torch.randn(6, 3, 12, generator=g) * (30.0 if step == 2 else 1.0)  # step 2 saturates tanh
                net(x).pow(2).mean().backward()
            opt.step()
            rec.step()
    monkeypatch.setattr(Recorder, "_flush_columns", real)
    return rec


@pytest.mark.skipif(_native.disabled() or _native.load() is None, reason="the array path needs the fused kernel")
@pytest.mark.parametrize("micro", [1, 2])  # 2: two forward calls a step, merged under one key
def test_array_path_gives_the_stats_path_bits(monkeypatch, micro):
    net = _net()
    seen_a, seen_b = [], []
    a = _run(copy.deepcopy(net), micro, True, monkeypatch, seen_a)
    b = _run(copy.deepcopy(net), micro, False, monkeypatch, seen_b)
    assert all(seen_a) and len(seen_a) == 4 and not any(seen_b)  # each path really ran
    assert len(a.steps) == len(b.steps) == 4
    for sa, sb in zip(a.steps, b.steps):
        assert sa.keys == sb.keys and sa.rows == sb.rows
        np.testing.assert_array_equal(sa.values, sb.values)  # NaN where NaN, else equal bits
        np.testing.assert_array_equal(sa.counts, sb.counts)
        assert sa.hists.keys() == sb.hists.keys()
        for k in sa.hists:
            np.testing.assert_array_equal(sa.hists[k], sb.hists[k])
    assert a.history == b.history
    ta, tb = a.trace, b.trace
    pairs = [(x.outputs[0].forward, y.outputs[0].forward) for x, y in zip(ta.layers, tb.layers)]
    pairs += [(x.outputs[0].backward, y.outputs[0].backward) for x, y in zip(ta.layers, tb.layers)]
    pairs += [(x.value, y.value) for x, y in zip(ta.params, tb.params)]
    pairs += [(x.grad, y.grad) for x, y in zip(ta.params, tb.params)]
    assert pairs and all(x is not None for x, _ in pairs)
    for x, y in pairs:
        for f in dataclasses.fields(x):
            u, v = getattr(x, f.name), getattr(y, f.name)
            if isinstance(u, np.ndarray) or u is None:
                np.testing.assert_array_equal(u, v)
            else:
                assert u == v or (u != u and v != v), f.name
    sat = [r for r in a.history if r.stat == "saturation_frac" and r.value > 0]
    dead = [r for r in a.history if r.stat == "dead_frac"]
    assert sat and dead  # the columns the array path computes itself were exercised
