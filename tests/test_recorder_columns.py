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


class _Branchy(nn.Module):
    """Calls ``extra`` only on some steps, so a recorded step's calls differ from the last one's."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.act, self.extra, self.b = nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3)
        self.use_extra = False

    def forward(self, x):
        h = self.act(self.a(x))
        return self.b(self.extra(h) if self.use_extra else h)


@pytest.mark.skipif(_native.disabled() or _native.load() is None, reason="the array path needs the fused kernel")
def test_cached_selection_and_merge_follow_changing_calls(monkeypatch):
    """Steps whose calls change (a branch taken on some steps only), repeat, and change back: the
    array path's cached history keys and merged rows give the Stats path's bits throughout."""
    plan = [False, False, True, True, False, True]
    recs = []
    for columns in (True, False):
        net, seen = _Branchy(), []
        real = Recorder._flush_columns
        monkeypatch.setattr(Recorder, "_flush_columns",
                            lambda self, tap: seen.append(real(self, tap) if columns else False) or seen[-1])
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(2)
        with Recorder(net, every=1) as rec:
            for use in plan:
                net.use_extra = use
                opt.zero_grad()
                net(torch.randn(7, 5, generator=g)).pow(2).mean().backward()
                opt.step()
                rec.step()
        monkeypatch.setattr(Recorder, "_flush_columns", real)
        assert all(seen) if columns else not any(seen)
        recs.append(rec)
    a, b = recs
    assert [("extra", "forward") in s.keys for s in a.steps] == plan
    for sa, sb in zip(a.steps, b.steps):
        assert sa.keys == sb.keys
        np.testing.assert_array_equal(sa.values, sb.values)
    for x, y in zip(a.trace.layers, b.trace.layers):
        for u, v in ((x.outputs[0].forward, y.outputs[0].forward), (x.outputs[0].backward, y.outputs[0].backward)):
            np.testing.assert_array_equal(u.unit_nonzero, v.unit_nonzero)
            assert (u.count, u.mean, u.m2, u.zeros) == (v.count, v.mean, v.m2, v.zeros)
            assert u.unit_nonzero.sum() == u.count - u.zeros  # units merged as often as the counts
    extra = a.trace.layers[[r.name for r in a.trace.layers].index("extra")].outputs[0].forward
    assert extra.count == 3 * 7 * 8  # merged over the three steps that called it
