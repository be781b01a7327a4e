"""Recorder: which steps it records, the bounded history, hook hygiene, run-level findings."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from initscope.errors import ArgumentError, ModelError
from initscope.recorder import STATS, Recorder
from initscope.stats import tensor_stats


def net_and_opt(seed: int = 0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    return net, torch.optim.SGD(net.parameters(), lr=0.05)


def train(net, opt, rec=None, steps=6, batch=None, micro=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad()
        for _ in range(micro):
            x = torch.randn(32, 4, generator=g) if batch is None else batch
            net(x).pow(2).mean().backward()
        opt.step()
        if rec is not None:
            rec.step()


def hooks(net) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules()) + sum(
        len(p._backward_hooks or {}) for p in net.parameters())


def test_records_every_nth_step_in_long_format():
    net, opt = net_and_opt()
    with Recorder(net, every=3) as rec:
        train(net, opt, rec, steps=7)
    rows = rec.history
    assert sorted({r.step for r in rows}) == [0, 3, 6] and rec.step_count == 7
    assert {r.phase for r in rows} == {"forward", "backward", "param", "grad"}
    assert {r.stat for r in rows} <= set(STATS)
    [mean0] = [r.value for r in rows if (r.step, r.layer, r.phase, r.stat) == (0, "1", "forward", "mean")]
    assert mean0 > 0  # ReLU output
    assert not [r for r in rows if r.stat == "dead_frac" and r.phase == "param"]  # NaN stats are left out


def test_recorded_values_equal_the_tensor_statistics():
    net, opt = net_and_opt()
    x = torch.randn(32, 4)
    with Recorder(net) as rec:
        train(net, opt, rec, steps=1, batch=x)
    ref_net, _ = net_and_opt()
    ref = tensor_stats(ref_net[1](ref_net[0](x)), unit_dim=-1)
    got = {r.stat: r.value for r in rec.history if (r.layer, r.phase) == ("1", "forward")}
    assert got["mean"] == pytest.approx(ref.mean) and got["zero_frac"] == ref.zero_frac


def test_no_hooks_on_steps_it_does_not_record_nor_after_exit():
    net, opt = net_and_opt()
    with Recorder(net, every=2) as rec:
        assert hooks(net) > 0
        train(net, opt, rec, steps=1)
        assert hooks(net) == 0  # step 1 is not recorded: nothing registered at all
        train(net, opt, rec, steps=1)
        assert hooks(net) > 0
    assert hooks(net) == 0
    with pytest.raises(RuntimeError, match="inside"):
        with Recorder(net) as rec:
            raise RuntimeError("inside")
    assert hooks(net) == 0


def test_training_is_unchanged_by_recording():
    a, opt_a = net_and_opt()
    b = copy.deepcopy(a)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.05)
    train(a, opt_a, steps=4)
    with Recorder(b) as rec:
        train(b, opt_b, rec, steps=4)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_histograms_over_time():
    net, opt = net_and_opt()
    with Recorder(net, every=2) as rec:
        train(net, opt, rec, steps=6)
    steps, counts = rec.histograms("1")
    assert steps.tolist() == [0, 2, 4] and counts.shape == (3, 258)
    assert (counts.sum(1) == 32 * 16).all() and counts[:, 0].min() > 0  # the ReLU's zeros
    _, grads = rec.histograms("0", "backward")
    assert grads.shape == (3, 258)
    with pytest.raises(KeyError):
        rec.histograms("nope")


def test_history_is_bounded_and_thins_evenly():
    net, opt = net_and_opt()
    with Recorder(net, max_rows=400) as rec:
        train(net, opt, rec, steps=30)
    rows = rec.history
    steps = sorted({r.step for r in rows})
    assert len(rows) <= 400 and steps[0] == 0 and steps[-1] == 29
    assert len(rec.histograms("1")[0]) == len(steps)


def test_micro_batches_in_one_step_are_merged():
    net, opt = net_and_opt()
    with Recorder(net) as rec:
        train(net, opt, rec, steps=1, micro=3)
    assert rec.trace.layer("1").forward.count == 3 * 32 * 16
    assert rec.trace.layer("1").backward.count == 3 * 32 * 16


def test_run_level_trace_merges_steps():
    net, opt = net_and_opt()
    with Recorder(net, every=1) as rec:
        train(net, opt, rec, steps=5)
    r = rec.trace.layer("0")
    assert r.forward.count == 5 * 32 * 16 and r.weight_layer
    per_step = [v.value for v in rec.history if (v.layer, v.phase, v.stat) == ("0", "forward", "mean")]
    assert r.forward.mean == pytest.approx(np.mean(per_step))


def test_the_trace_of_many_steps_merges_every_one_once():
    """Before and after reading the trace: the same data at each step (lr 0, one batch) merges to n
    times one step's counts, the same mean and n times its M2."""
    net, opt = net_and_opt()
    opt.param_groups[0]["lr"] = 0.0
    batch = torch.randn(32, 4, generator=torch.Generator().manual_seed(3))
    with Recorder(net, every=1) as rec:
        train(net, opt, rec, steps=1, batch=batch)
        one = rec.trace
        train(net, opt, rec, steps=20, batch=batch)
        mid = rec.trace
        train(net, opt, rec, steps=14, batch=batch)
    for steps, trace in ((21, mid), (35, rec.trace)):
        for a, b in ((one.layer("0").forward, trace.layer("0").forward), (one.layer("2").backward, trace.layer("2").backward),
                     (one.params[0].value, trace.params[0].value)):
            assert b.count == steps * a.count and b.zeros == steps * a.zeros
            assert b.hist.tolist() == (steps * a.hist).tolist()
            assert b.mean == pytest.approx(a.mean, rel=1e-12, abs=1e-15)
            assert b.m2 == pytest.approx(steps * a.m2, rel=1e-9)


def test_findings_name_the_step_where_values_turn_nonfinite():
    net, opt = net_and_opt()
    with Recorder(net) as rec:
        train(net, opt, rec, steps=3)
        with torch.no_grad():
            net[0].weight[0, 0] = float("nan")
        train(net, opt, rec, steps=1)
    [f] = [f for f in rec.findings if f.kind == "nonfinite"]
    assert f.severity == "error" and "step 3" in f.message


def test_bad_arguments():
    net, _ = net_and_opt()
    with pytest.raises(ArgumentError, match="every"):
        Recorder(net, every=0)
    with pytest.raises(ModelError):
        Recorder(object())  # type: ignore[arg-type]


def test_the_stored_table_equals_the_stats_definitions():
    from initscope._steptable import arrays_of, table_of
    from initscope.stats import Stats

    xs = [torch.randn(64, 8).relu(), torch.tensor([[1e-8, 7e4], [0.0, float("nan")]]), torch.tanh(torch.randn(5, 3) * 4),
          torch.tensor([float("inf"), -float("inf"), 1.0])]
    stats = [tensor_stats(xs[0], unit_dim=1), tensor_stats(xs[1], unit_dim=1), tensor_stats(xs[2], saturation=(0, 1)),
             tensor_stats(xs[3]), Stats.empty(4, True)]
    count, m, ints, has, _, fmt, units = arrays_of(stats)
    table = table_of(count, m, ints, has, fmt, units)
    for s, row in zip(stats, table):
        for (name, fn), got in zip(STATS.items(), row):
            want = float(fn(s))
            assert (math.isnan(want) and math.isnan(got)) or got == want, name


def test_a_step_with_nothing_measurable_records_no_rows():
    class Sign(nn.Module):
        def forward(self, x):
            return (x > 0).long()  # an integer output: noted, not measured

    net = nn.Sequential(Sign())
    with Recorder(net) as rec:
        net(torch.randn(3))
        rec.step()
    assert rec.history == [] and rec.step_count == 1


def _param_rows(rec, step: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for r in rec.history:
        if r.step == step and r.phase == "param":
            out.setdefault(r.layer, {})[r.stat] = r.value
    return out


def _expected(p: torch.Tensor) -> dict[str, float]:
    s = tensor_stats(p.detach().clone())
    return {"mean": s.mean, "std": s.std, "min": s.min, "max": s.max}


def test_parameter_values_are_those_the_step_began_with():
    """Values are measured as each step begins, for parameters with and without a gradient
    (frozen, or unused by the loss): a snapshot taken before each step's forward gives the same
    bits. (Measuring them when the gradient arrives instead was tried and was slower: see
    benchmarks/RESULTS.md.)"""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1), nn.Linear(1, 1))
    net[3].requires_grad_(False)  # frozen: no gradient hook, measured when the step is stored
    unused = nn.Linear(3, 3)  # requires grad but takes no part in the loss: no gradient arrives
    model = nn.ModuleDict({"net": net, "unused": unused})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(3)
    snaps = []
    with Recorder(model) as rec:
        for _ in range(4):
            snaps.append({n: _expected(p) for n, p in model.named_parameters()})
            opt.zero_grad()
            net(torch.randn(8, 4, generator=g)).pow(2).mean().backward()
            opt.step()
            rec.step()
    for step, snap in enumerate(snaps):
        got = _param_rows(rec, step)
        assert set(got) == set(snap)
        for name, want in snap.items():
            assert {k: got[name][k] for k in want} == want, (step, name)
    assert snaps[0]["net.0.weight"] != snaps[1]["net.0.weight"]  # the values did change between steps

