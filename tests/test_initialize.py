"""initscope.initialize / plan: the producer rule and its alternatives, mixed and shared
cases, residual options, schemes, determinism, meta, all-or-nothing, hygiene, the record,
and bad input."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import importlib

# `initscope.initialize` the attribute is the function; the module is reached through importlib
initialize_module = importlib.import_module("initscope.initialize")
from initscope import zoo
from initscope.errors import ArgumentError, ForwardError, ModelError, UnknownOptionError
from initscope.initialize import initialize, param_seed, plan
from initscope.moments import moments

X10 = torch.randn(8, 10, generator=torch.Generator().manual_seed(1))


def relu_net(widths=(10, 100, 200, 1)):
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


# --- which activation decides the gain -----------------------------------------------------
def test_producer_rule_raw_input_gain_one_then_relu_sqrt2():
    p = plan(relu_net(), example_input=X10)
    first, second = p.row("0.weight"), p.row("2.weight")
    assert first.gain == 1.0 and first.std == pytest.approx(1 / math.sqrt(10), rel=1e-12)
    assert "raw data" in first.reason and "would give 1.414" in first.reason  # torch's relu-everywhere habit
    assert second.gain == pytest.approx(math.sqrt(2), rel=1e-12) and second.before == ("ReLU [observed 1]",)


def test_fan_out_uses_the_consumer_derivative_and_fan_avg_gives_the_textbook_relu_formula():
    model = nn.Sequential(nn.Linear(10, 100), nn.Tanh(), nn.Linear(100, 10))
    row = plan(model, example_input=X10, mode="fan_out").row("0.weight")
    assert row.std == pytest.approx(moments("tanh").backward_gain / math.sqrt(100), rel=1e-12)
    row = plan(relu_net(), example_input=X10, mode="fan_avg").row("2.weight")  # 100 -> 200, relu both sides
    assert row.std ** 2 == pytest.approx(4 / (100 + 200), rel=1e-12)


def test_torch_convention_uses_calculate_gain_of_the_consumer():
    model = nn.Sequential(nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 10), nn.GELU(), nn.Linear(10, 1))
    p = plan(model, example_input=X10, convention="torch")
    assert p.row("0.weight").gain == pytest.approx(5 / 3, rel=1e-12)
    assert p.row("4.weight").gain == 1.0  # the output: linear
    assert p.row("2.weight").gain == pytest.approx(moments("gelu").forward_gain, rel=1e-12)
    assert any("no gain for GELU" in n for n in p.notes)


ACTS = ["tanh", "gelu", "relu"]


def mixed_net(depth=12, width=512):
    mods = {"tanh": nn.Tanh, "gelu": nn.GELU, "relu": nn.ReLU}
    layers = []
    for i in range(depth):
        layers += [nn.Linear(width, width), mods[ACTS[i % 3]]()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def preact(model, x):
    out = []
    hooks = [m.register_forward_pre_hook(lambda m, a: out.append(a[0].pow(2).mean().item()))
             for m in model if not isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


def test_mixed_activations_producer_rule_holds_the_fixed_point_and_a_consumer_rule_drifts():
    depth, width = 12, 512
    x = torch.randn(256, width, generator=torch.Generator().manual_seed(0))
    model = mixed_net(depth, width)
    initialize(model, example_input=x, seed=0)
    producer = preact(model, x)
    # The consumer rule: each layer takes the forward gain of the activation *after* it, the
    # habit of "kaiming with the layer's own nonlinearity".
    initialize(model, example_input=x, seed=0, nonlinearity={str(2 * i): ACTS[i % 3] for i in range(depth)})
    consumer = preact(model, x)
    # Width 512 and batch 256: each layer's measured second moment carries ~sqrt(2/512) = 6%
    # relative noise from its weights, a random walk over 12 layers (~20%); 0.25 in log2 (19%)
    # is ~4 sd for one layer, and the producer run measured max |log2 q| = 0.12.
    drift = lambda q: max(abs(math.log2(v)) for v in q)  # noqa: E731
    assert drift(producer) < 0.25
    # Theory of the consumer rule: q_1 = g(tanh)^2 = 1/E[tanh^2] = 2.54, then
    # q_{l+1} = E[phi_l(sqrt(q_l) z)^2] / E[phi_{l+1}(z)^2]: 2.54, 1.32, 1.17, 1.48, 1.10, ...
    q, theory = 1.0, []
    for i in range(depth):
        q = (1.0 if i == 0 else moments(ACTS[(i - 1) % 3], q).second) / moments(ACTS[i % 3]).second
        theory.append(q)
    assert consumer[:3] == pytest.approx(theory[:3], rel=0.05)  # first layers: little finite-width noise yet
    assert drift(consumer) > 1.3 and consumer[0] > 2.4  # measured 2.55x at the first layer: log2 = 1.35
    assert drift(consumer) > 5 * drift(producer)


class Mixed(nn.Module):
    """One layer reads a cat of relu and tanh features; a shared layer is called after each."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.shared = nn.Linear(10, 8), nn.Linear(10, 8), nn.Linear(16, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.c(torch.cat([F.relu(self.a(x)), torch.tanh(self.b(x))], dim=1))
        return self.shared(F.relu(h)) + self.shared(torch.tanh(h))


def test_mixed_producers_and_a_module_called_twice_combine_by_the_average_of_second_moments():
    p = plan(Mixed(), example_input=X10)
    expected = 1 / math.sqrt((moments("relu").second + moments("tanh").second) / 2)
    for name in ("c.weight", "shared.weight"):
        assert p.row(name).gain == pytest.approx(expected, rel=1e-12)
        assert "mixed producers (relu, tanh): average of E[phi^2]" in p.row(name).reason


def test_a_parameter_shared_by_two_layers_is_written_once_with_combined_gains():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
    model[4].weight = model[2].weight  # tied: layer 2 is fed by ReLU, layer 4 by Tanh
    p = plan(model, example_input=torch.randn(4, 8))
    row = p.row("2.weight")
    assert row.gain == pytest.approx(1 / math.sqrt((0.5 + moments("tanh").second) / 2), rel=1e-12)
    assert "shared by 2, 4" in row.reason
    assert [u.reason for u in p.untouched if u.name == "4.weight"] == ["same tensor as `2.weight`: initialized there"]


def test_an_unknown_activation_gets_its_gain_from_moments():
    class Scaled(nn.Module):
        def forward(self, x):
            return 3.0 * torch.tanh(x)

    model = nn.Sequential(nn.Linear(10, 10), Scaled(), nn.Linear(10, 1))
    row = plan(model, example_input=X10).row("2.weight")
    assert row.gain == pytest.approx(1 / (3 * math.sqrt(moments("tanh").second)), rel=1e-6)


# --- residual options ------------------------------------------------------------------------
def test_auto_residual_zeros_the_last_norm_of_resnet_branches_and_scales_transformer_branches():
    model, x = zoo.build("resnet", depth=2)
    p = initialize(model, example_input=x)
    assert p.residual == "auto: zero_last_norm on 2 of 2 branches"
    assert torch.count_nonzero(model[3].bn2.weight) == 0 and torch.equal(model[3].bn1.weight, torch.ones(16))
    model, x = zoo.build("transformer", depth=3)
    p = plan(model, example_input=x)
    assert p.residual == "auto: scale_depth on 6 of 6 branches"
    for name in ("blocks.2.fc2.weight", "blocks.0.attn.out_proj.weight"):
        assert p.row(name).residual == pytest.approx(6 ** -0.5) and "scale_depth" in p.row(name).reason
    assert p.row("blocks.0.attn.in_proj_weight", "q").residual == 1.0


def test_fixup_scales_inner_layers_and_zeros_last_layers_and_the_classifier():
    model, x = zoo.build("resnet", depth=4)
    p = initialize(model, example_input=x, residual="fixup")
    inner = p.row("3.conv1.weight")
    assert inner.residual == pytest.approx(4 ** -0.5)  # L = 4 branches, m = 2: L^(-1/(2m-2))
    assert inner.std == pytest.approx(math.sqrt(2 / 144) * 4 ** -0.5)
    assert torch.count_nonzero(model[3].conv2.weight) == 0 and torch.count_nonzero(model[9].weight) == 0
    assert torch.equal(model[3].bn2.weight, torch.ones(16))


def test_scale_depth_without_branches_and_none_are_said_in_the_plan():
    p = plan(relu_net(), example_input=X10, residual="scale_depth")
    assert any("no residual branch" in n for n in p.notes)
    model, x = zoo.build("resnet", depth=2)
    p = plan(model, example_input=x, residual="none")
    assert all(r.residual == 1.0 for r in p.rows) and any("2 residual branches found" in n for n in p.notes)


# --- schemes ---------------------------------------------------------------------------------
def test_schemes_xavier_lecun_orthogonal_delta():
    model, x = zoo.build("plain_cnn", depth=3, channels=8)
    p = plan(model, "xavier", example_input=x)
    assert p.mode == "fan_avg" and all(r.gain == pytest.approx(1.0) for r in p.rows if r.distribution == "normal")
    assert {r.distribution for r in plan(model, "lecun", example_input=x).rows} == {"truncated_normal", "zeros"}
    initialize(model, "delta_orthogonal", example_input=x)
    w = model[2].weight  # 8 -> 16 channels, fed by ReLU: std^2 = 2 / (8 * 9)
    assert torch.count_nonzero(w[:, :, 0, 0]) == 0 and torch.count_nonzero(w[:, :, 1, 1]) == 16 * 8
    centre = w[:, :, 1, 1]  # orthonormal columns times std * sqrt(16)
    torch.testing.assert_close(centre.T @ centre, torch.eye(8) * (2 / 72 * 16), rtol=1e-4, atol=1e-5)
    head = model[-1].weight  # not a conv: orthogonal rows
    torch.testing.assert_close(head @ head.T / (head @ head.T)[0, 0], torch.eye(10), rtol=1e-4, atol=1e-5)


def test_torch_default_reproduces_reset_parameters_deterministically():
    model, x = zoo.build("transformer", depth=1)
    p = initialize(model, "torch_default", seed=5)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    initialize(model, "torch_default", seed=5)
    assert all(torch.equal(first[k], v) for k, v in model.state_dict().items())
    fc1 = model.blocks[0].fc1
    ref = nn.Linear(64, 256)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(param_seed(5, "blocks.0.fc1", ()))
        ref.reset_parameters()
    assert torch.equal(fc1.weight, ref.weight) and torch.equal(fc1.bias, ref.bias)
    assert torch.count_nonzero(model.blocks[0].attn.out_proj.bias) == 0  # MHA zeroes it, as in torch
    assert p.row("blocks.0.fc1.weight").bound == pytest.approx(1 / 8)


def test_embeddings_get_std_one_and_a_zero_padding_row():
    model = nn.Sequential(nn.Embedding(500, 64, padding_idx=0), nn.Linear(64, 1))
    p = initialize(model, example_input=torch.randint(0, 500, (2, 5)), mode="fan_out")
    assert p.row("0.weight").std == 1.0 and "embedding" in p.row("0.weight").reason
    w = model[0].weight
    assert torch.count_nonzero(w[0]) == 0 and w[1:].std().item() == pytest.approx(1.0, abs=0.02)  # 32k draws: sd 0.004


# --- determinism and placement -------------------------------------------------------------------
class Named(nn.Module):
    def __init__(self, extra=False):
        super().__init__()
        self.layers = nn.ModuleDict({"a": nn.Linear(10, 16)})
        if extra:
            self.layers["new"] = nn.Linear(16, 16)
        self.layers.update({"b": nn.Linear(16, 16), "c": nn.Linear(16, 1)})

    def forward(self, x):
        for name, layer in self.layers.items():
            x = layer(x) if name == "c" else F.relu(layer(x))
        return x


def test_inserting_a_layer_leaves_the_other_values_unchanged():
    small, big = Named(), Named(extra=True)
    initialize(small, example_input=X10, seed=3)
    initialize(big, example_input=X10, seed=3)
    big_params = dict(big.named_parameters())
    assert all(torch.equal(p, big_params[n]) for n, p in small.named_parameters())
    initialize(big, example_input=X10, seed=4)
    assert not torch.equal(big.layers["a"].weight, small.layers["a"].weight)


def test_meta_plan_materializes_nothing_and_to_empty_matches_cpu():
    with torch.device("meta"):
        meta = zoo.transformer(depth=1)
    p = plan(meta, example_input=torch.empty(2, 16, 64, device="meta"))
    assert len(p.rows) > 10 and all(t.is_meta for t in [*meta.parameters(), *meta.buffers()])
    cpu, x = zoo.build("transformer", depth=1)
    meta.to_empty(device="cpu")
    initialize(meta, example_input=x, seed=9)
    initialize(cpu, example_input=x, seed=9)
    assert all(torch.equal(a, b) for a, b in zip(meta.parameters(), cpu.parameters()))


def test_a_failure_before_the_writes_leaves_every_parameter_as_it_was(monkeypatch):
    model, x = zoo.build("resnet", depth=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real = initialize_module._generator

    def fail_on_the_last(seed, name, p):
        if name == "6.weight":  # the classifier, the last parameter written
            raise RuntimeError("injected")
        return real(seed, name, p)

    monkeypatch.setattr(initialize_module, "_generator", fail_on_the_last)
    with pytest.raises(RuntimeError, match="injected"):
        initialize(model, example_input=x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_torch_default_restores_the_parameters_when_a_reset_fails():
    class Broken(nn.Linear):
        def reset_parameters(self):
            super().reset_parameters()
            if getattr(self, "armed", False):
                raise RuntimeError("broken reset")

    model = nn.Sequential(nn.Linear(4, 4), Broken(4, 4))
    model[1].armed = True
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="broken reset"):
        initialize(model, "torch_default")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_initialize_resets_norm_statistics_keeps_other_buffers_and_flags_and_leaves_no_hook():
    model, x = zoo.build("resnet", depth=1)
    model.register_buffer("step", torch.tensor(7))
    model[1].running_mean.fill_(3.0)
    model.eval()
    initialize(model, example_input=x)
    assert torch.equal(model[1].running_mean, torch.zeros(16)) and model[1].num_batches_tracked == 0
    assert model.step == 7 and not any(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_plan_notes_batchnorm_in_eval_mode_and_only_there():
    # initialize resets the running statistics to (0, 1): an eval-mode BatchNorm is then the
    # identity, not the normalization the gain after it (1) assumes; the plan says so.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    assert not any(n.startswith("batch normalization in eval mode") for n in plan(model, example_input=x).notes)
    notes = initialize(model.eval(), example_input=x).notes
    assert [n for n in notes if n.startswith("batch normalization in eval mode: 1 layer (`1`)")]
    with torch.no_grad():
        h = model[0](x)
        assert torch.allclose(model[1](h), h / math.sqrt(1 + model[1].eps))  # the identity, as the note says


# --- the record ------------------------------------------------------------------------------
class Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.fc, self.act, self.unused = nn.Linear(3, 3), nn.PReLU(), nn.Linear(3, 3)

    def forward(self, x):
        return self.act(self.fc(x * self.scale))


def test_plan_text_json_and_html():
    p = plan(Odd(), example_input=torch.randn(2, 3), bias="keep")
    text = repr(p)
    assert text.startswith("InitPlan(scheme='kaiming'") and "fc.weight" in text and "untouched (4):" in text
    reasons = {u.name: u.reason for u in p.untouched}
    assert "held directly by `the model` (Odd)" in reasons["scale"]
    assert reasons["fc.bias"] == "bias='keep'" and "activation" in reasons["act.weight"]
    assert p.row("unused.weight").reason.startswith("not reached by the forward pass")
    data = json.loads(json.dumps(p.to_dict(), allow_nan=False))
    assert data["rows"][0]["name"] == "fc.weight" and data["rows"][0]["bound"] is None
    assert "<table>" in p._repr_html_() and "<Odd>" not in p._repr_html_()
    with pytest.raises(KeyError, match="bias='keep'"):
        p.row("fc.bias")


# --- bad input -------------------------------------------------------------------------------
def test_bad_input_gets_typed_errors():
    with pytest.raises(ModelError, match="no parameters"):
        initialize(nn.ReLU())
    model = relu_net()
    for kwargs, match in [({"scheme": "he"}, "unknown scheme 'he'"), ({"residual": "zero"}, "unknown residual"),
                          ({"mode": "fan"}, "unknown mode"), ({"nonlinearity": {"9": "relu"}}, "unknown layer")]:
        with pytest.raises(UnknownOptionError, match=match):
            plan(model, example_input=X10, **kwargs)
    with pytest.raises(ArgumentError, match="seed must be an int"):
        plan(model, example_input=X10, seed=0.5)
    with pytest.raises(ForwardError, match="`0` .Linear.") as info:
        initialize(model, example_input=torch.randn(2, 7))
    assert info.value.layer == "0" and info.value.completed == []


def test_the_garbage_collector_is_paused_only_during_the_call():
    import gc

    seen = []
    model = relu_net()
    model[0].register_forward_hook(lambda *_: seen.append(gc.isenabled()))  # runs inside discovery
    assert gc.isenabled()
    initialize(model, example_input=X10)
    assert seen == [False] and gc.isenabled()
    with pytest.raises(ForwardError):
        initialize(model, example_input=torch.randn(2, 7))
    assert gc.isenabled()  # restored after a failure too
    gc.disable()
    try:
        initialize(model, example_input=X10)
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()
