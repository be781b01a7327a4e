"""The Recorder's array path (a recorded step stored from the kernel's results as arrays, no
Stats per tensor) against the Stats path it replaces: the same bits everywhere."""
import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from initscope import _native
from initscope import _decode
from initscope._steptable import table_of
from initscope.recorder import Recorder
from initscope.stats import StatsAccumulator


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


def _adversarial() -> list[tuple[torch.Tensor, int | None, tuple[float, float] | None]]:
    """Tensors that reach every column the step table decodes: NaN and infinities, float32
    subnormals and values below 2^-129, values past each format's overflow edge and under its
    smallest normal, all zeros (every unit dead), units in rows, runs and separate layouts, a band."""
    g = torch.Generator().manual_seed(3)
    special = torch.randn(4, 16, generator=g) * 1e3
    special[0, 3], special[1, 5], special[2, 7] = float("nan"), float("inf"), -float("inf")
    tiny = torch.tensor([1e-40, 1e-45, 3e-39, 0.0, 0.0, 1.0, -2e-38, 5e-39])
    edges = torch.tensor([7e4, 6.6e4, 1e-8, 1e-5, 5e-8, 3e38, 448.0, 500.0, 6e4, -5.8e4, 1e-3, 2e-7])
    return [(special, 1, None), (tiny, None, None), (edges.reshape(3, 4), 1, (0.0, 1.0)),
            (torch.zeros(8, 16), 1, None), (torch.randn(2, 3, 4, generator=g), 1, (0.5, 2.0)),
            (torch.randn(64, 1024, generator=g), -1, None), (torch.randn(5, 7, generator=g) * 1e-30, 0, None),
            (torch.empty(0), None, None)]


@pytest.mark.skipif(_native.disabled() or _native.load() is None, reason="the step table needs the fused kernel")
def test_step_table_gives_the_numpy_decode_bits():
    """The extension's step table (one call) against the numpy decode it replaces in the Recorder
    (_decode.columns, then _steptable.table_of), rows picked out of order: equal bits."""
    cases = _adversarial()[:-1]
    acc = StatsAccumulator()
    for i, (x, unit_dim, band) in enumerate(cases):
        acc.add(i, x, unit_dim=unit_dim, saturation=band)
    assert acc.fused_keys() == list(range(len(cases)))
    group = [p for _, p in acc._queued()]
    c = _decode.columns(*acc._slab.read([p.slot for p in group]), group)
    sel = [6, 2, 0, 5, 3, 1, 4]
    count, m, ints, has, hist, fmt, units, table = acc.to_table(sel)
    ix = np.array(sel)
    ref_ints = np.stack([c.zeros[ix], c.nan[ix], c.posinf[ix], c.neginf[ix],
                         np.where(c.has_sat[ix], c.sat[ix], 0).astype(np.int64)], axis=1)
    ref_m = np.stack([c.mean[ix], c.m2[ix], c.lo[ix], c.hi[ix]], axis=1)
    ref_units = [c.units[i] for i in sel]
    for got, want in [(count, c.count[ix]), (m, ref_m), (ints, ref_ints), (has, c.has_sat[ix]),
                      (hist, c.hist[ix]), (fmt, c.fmt[ix]),
                      (table, table_of(c.count[ix], ref_m, ref_ints, c.has_sat[ix], c.fmt[ix], ref_units))]:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)  # NaN where NaN, else the same bits
    assert [u is None for u in units] == [u is None for u in ref_units]
    for u, v in zip(units, ref_units):
        np.testing.assert_array_equal(u, v)
    # every column was reached: NaN and infinities, subnormals, fp16 and bf16 under- and overflow
    assert ints[:, 1:4].sum(0).all() and hist[:, 1].any() and fmt[:, :2, :].any(axis=(0, 2)).all()
    assert (table[:, 6] == 1.0).any() and (table[:, 7] > 0).any() and len(acc) == 0


@pytest.mark.skipif(_native.disabled() or _native.load() is None, reason="one call for many needs the fused kernel")
def test_add_many_gives_what_add_gives():
    """Parameter values in one call of the kernel: each tensor's Stats equal add()'s bit for bit,
    and tensors the kernel does not take (float64, a gappy view, empty) go through add()."""
    tensors = [x for x, _, _ in _adversarial()] + [torch.randn(6, 4, dtype=torch.float64),
                                                  torch.randn(8, 6)[:, ::2], torch.randn(3, 3, requires_grad=True)]
    one, many = StatsAccumulator(), StatsAccumulator()
    for i, x in enumerate(tensors):
        one.add(i, x)
    many.add_many(list(range(len(tensors))), tensors)
    assert len(many._items) == 2  # float64 and the empty one went through add() (the gappy view: a copy, a slab row)
    a, b = dict(one.to_host()), dict(many.to_host())
    assert list(a) == list(b) == list(range(len(tensors)))
    for i in a:
        for f in dataclasses.fields(a[i]):
            u, v = getattr(a[i], f.name), getattr(b[i], f.name)
            if isinstance(u, np.ndarray) or u is None:
                np.testing.assert_array_equal(u, v)
            else:
                assert u == v or (u != u and v != v), (i, f.name)


@pytest.mark.gpu
def test_add_many_on_a_gpu_gives_what_add_gives():
    """Parameter values on a GPU go through add() one by one (the CPU kernel is not loaded for
    them): the same Stats as add(), bit for bit."""
    xs = [torch.randn(6, 4, device="cuda"), torch.randn(7, device="cuda"), torch.randn(3, 5, device="cuda").t()]
    one, many = StatsAccumulator(), StatsAccumulator()
    for i, x in enumerate(xs):
        one.add(i, x)
    many.add_many(list(range(len(xs))), xs)
    assert many._slab is None  # nothing of the CPU kernel's
    for (i, a), (j, b) in zip(one.to_host(), many.to_host()):
        assert i == j and a.count == b.count and a.hist.tolist() == b.hist.tolist()
        assert (a.mean, a.m2, a.min, a.max) == (b.mean, b.m2, b.min, b.max)
