"""diagnose: each rule on synthetic traces, thresholds, and the forward rate against theory."""
import dataclasses
import math

import pytest
import torch
from torch import nn

from initscope.diagnose import Finding, Thresholds, diagnose, diagnose_run
from initscope.probe import LayerRecord, OutputRecord, Trace, probe
from initscope.stats import tensor_stats


def rec(name, typ, x=None, grad=None, weight=False, unit_dim=-1, band=None):
    fwd = None if x is None else tensor_stats(x, unit_dim=unit_dim, saturation=band)
    bwd = None if grad is None else tensor_stats(grad, unit_dim=unit_dim)
    return LayerRecord(name, typ, 0, (OutputRecord("", tuple(x.shape) if x is not None else (), "float32", fwd, bwd),),
                       weight)


def chain(stds, grad_stds=None, typ="ReLU"):
    """Weight layers whose outputs have the given stds, each followed by an activation."""
    g = torch.Generator().manual_seed(0)
    layers = []
    for i, s in enumerate(stds):
        x = torch.randn(256, 32, generator=g) * s
        gs = None if grad_stds is None else torch.randn(256, 32, generator=g) * grad_stds[i]
        layers += [rec(f"{2 * i}", "Linear", x, gs, weight=True), rec(f"{2 * i + 1}", typ, x.relu())]
    return Trace(tuple(layers))


def kinds(findings):
    return [f.kind for f in findings]


def test_vanishing_forward_reports_rate_and_total():
    [f] = [f for f in diagnose(chain([0.5**i for i in range(10)])) if f.kind == "vanishing_forward"]
    assert f.layer is None and f.severity == "warning"
    assert f.message.startswith("forward std falls by 0.5x per layer over 10 layers (total 0.002")
    assert "weights are too small for ReLU; use initscope.initialize(model, 'kaiming')" in f.message
    assert f.suggestion in f.message


def test_exploding_forward_and_kaiming_like_chain():
    assert "exploding_forward" in kinds(diagnose(chain([1.6**i for i in range(10)])))
    assert not {"vanishing_forward", "exploding_forward"} & set(kinds(diagnose(chain([1.0] * 10))))


def test_gradient_rates_look_back_towards_the_input():
    vanish = chain([1.0] * 8, grad_stds=[0.5 ** (8 - i) for i in range(8)])  # small near the input
    [f] = [f for f in diagnose(vanish) if f.kind == "vanishing_gradient"]
    assert "gradient std falls by 0.5x per layer going back over 8 layers" in f.message
    explode = chain([1.0] * 8, grad_stds=[2.0 ** (8 - i) for i in range(8)])
    assert "exploding_gradient" in kinds(diagnose(explode))


def test_too_few_layers_for_a_rate():
    assert "vanishing_forward" not in kinds(diagnose(chain([1.0, 0.01])))


def test_signal_exactly_zero():
    t = chain([1.0, 0.1, 0.0, 0.0])
    [f] = [f for f in diagnose(t) if f.kind == "vanishing_forward"]
    assert "exactly zero from `4` on" in f.message


def test_dead_units_need_enough_values_per_unit():
    x = torch.randn(64, 10).relu_()
    x[:, :4] = 0
    [f] = diagnose(Trace((rec("act", "ReLU", x),)))
    assert f.kind == "dead_units" and f.layer == "act" and "40% of units" in f.message and "(4 of 10)" in f.message
    small = torch.randn(2, 10).relu_()  # zeros in a batch of 2 are chance, not death
    small[:, :4] = 0
    assert diagnose(Trace((rec("act", "ReLU", small),))) == []


def test_saturation_and_mean_drift():
    y = torch.tanh(torch.randn(512, 8) * 10)
    [f] = diagnose(Trace((rec("t", "Tanh", y, band=(0.0, 1.0)),)))
    assert f.kind == "saturation" and "xavier" in f.suggestion
    drift = torch.randn(512, 8) * 0.1 + 2.0
    [f] = diagnose(Trace((rec("lin", "Linear", drift),)))
    assert f.kind == "mean_drift" and f.severity == "info" and "|mean|/std" in f.message
    sig = torch.sigmoid(torch.randn(512, 8) * 0.1)  # off-centre by design: not flagged
    assert diagnose(Trace((rec("s", "Sigmoid", sig),))) == []


def test_fp16_underflow_and_overflow():
    tiny = torch.randn(256, 8) * 1e-6
    [f] = diagnose(Trace((rec("a", "Linear", torch.randn(256, 8), grad=tiny),)))
    assert f.kind == "fp16_underflow" and "gradient values at `a`" in f.message and "GradScaler" in f.suggestion
    big = torch.randn(256, 8) * 1e6
    found = diagnose(Trace((rec("b", "Linear", big),)))
    assert "fp16_overflow" in kinds(found) and "bf16_overflow" not in kinds(found)
    [f] = [f for f in found if f.kind == "fp16_overflow"]
    assert "beyond fp16's max 65504" in f.message and f.severity == "warning"


def test_first_nonfinite_layer_forward_and_backward():
    ok, bad = torch.randn(16, 4), torch.randn(16, 4)
    bad[0, 0] = float("nan")
    t = Trace((rec("0", "Linear", ok), rec("1", "Linear", bad), rec("2", "ReLU", bad)))
    errors = [f for f in diagnose(t) if f.severity == "error"]
    assert [(f.kind, f.layer) for f in errors] == [("nonfinite", "1")]
    assert "from finite inputs: 1 NaN, 0 +inf, 0 -inf of 64 values" in errors[0].message
    g = Trace((rec("0", "Linear", ok, grad=bad), rec("1", "Linear", ok, grad=bad), rec("2", "Linear", ok, grad=ok)))
    [f] = [f for f in diagnose(g) if f.kind == "nonfinite"]
    assert f.layer == "1" and "gradient first becomes non-finite" in f.message


def test_thresholds_are_named_overridable_and_frozen():
    t = chain([0.5**i for i in range(10)])
    assert "vanishing_forward" not in kinds(diagnose(t, Thresholds(vanishing_total=1e-30)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        Thresholds().dead_frac = 0.5  # type: ignore[misc]


def test_errors_come_first():
    bad = torch.randn(64, 10).relu_()
    bad[:, :5] = 0
    bad[0, 9] = float("inf")
    found = diagnose(Trace((rec("a", "ReLU", bad),)))
    assert found[0].severity == "error" and isinstance(found[0], Finding)


def test_forward_rate_matches_he_theory():
    """Prince's experiment: ReLU layers, weights N(0, s2): the variance changes by width * s2 / 2 per layer."""
    width = 400
    for s2, kind in ((0.5 / width, "vanishing_forward"), (8.0 / width, "exploding_forward")):
        torch.manual_seed(0)
        net = nn.Sequential(*[m for _ in range(20) for m in (nn.Linear(width, width), nn.ReLU())])
        for m in net[::2]:
            nn.init.normal_(m.weight, std=math.sqrt(s2))
            nn.init.zeros_(m.bias)
        [f] = [f for f in probe(net, torch.randn(256, width)).findings if f.kind == kind]
        rate = float(f.message.split("by ")[1].split("x")[0])
        # theory sqrt(width * s2 / 2) = 0.5 and 2.0. The fitted log-slope sits ~2% low at width 400
        # (layer-to-layer fluctuation of the ReLU's kept fraction, averaged in log space; the bias
        # is O(1/width)), seeds move it ~1%, and the message rounds to 2 digits (<= 2.6%): 6%.
        assert rate == pytest.approx(math.sqrt(width * s2 / 2), rel=0.06)


def test_run_rules_from_history():
    t = chain([1.0] * 4)
    rows = []
    for step in (0, 10, 20):
        for i in range(4):
            rows.append((step, str(2 * i), "backward", "std", 1.0 if step == 0 else 1e-4))
            rows.append((step, str(2 * i + 1), "forward", "dead_frac", 0.0 if step == 0 else 0.5))
    rows.append((20, "3", "forward", "nonfinite", 2.0))
    found = diagnose_run(t, rows)
    assert found[0].kind == "nonfinite" and "step 20" in found[0].message and found[0].layer == "3"
    [trend] = [f for f in found if f.kind == "signal_trend"]
    assert "median gradient std fell 1e+04x between step 0 (1) and step 20 (0.0001)" in trend.message
    [dead] = [f for f in found if f.kind == "dead_trend"]
    assert "grew from 0% at step 0 to 50% at step 20; 4 layers in all" in dead.message
