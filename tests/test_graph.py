"""initscope.graph: activations found around each layer (modules, functional calls, through
normalizations), residual branches, fallbacks without an input, hook hygiene, bad input."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from initscope import zoo
from initscope.errors import ForwardError
from initscope.graph import DiscoveryWarning, discover


def labels(nodes):
    return [n.label for n in nodes]


class Functional(nn.Module):
    """Activations only as functions in a custom forward, in-place ones included."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.e, self.f, self.g = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = F.relu(self.a(x))
        h = self.b(h).tanh()                      # method form
        h = F.gelu(self.c(h), approximate="tanh")
        h = torch.sigmoid(self.d(h))
        h = F.silu(self.e(h), inplace=True)       # in-place variants
        h = self.f(h)
        h.relu_()
        return self.g(F.leaky_relu(torch.flatten(h, 1) * 2.0, 0.2))  # pass through flatten and a scale


def test_functional_activations_in_a_custom_forward_are_traced():
    g = discover(Functional(), torch.randn(3, 6))
    consumers = {n: labels(link.consumers) for n, link in g.layers.items()}
    # f -> relu_ -> * 2.0 -> leaky_relu: the scale after relu multiplies E[(dL/df)^2] by 4, so f's
    # backward chain goes on through relu (E[relu'^2] = 1/2) to leaky_relu: factor 1/2 x 4 = 2
    assert consumers == {"a": ["relu"], "b": ["tanh"], "c": ["gelu(tanh)"], "d": ["sigmoid"], "e": ["silu"],
                         "f": ["leaky_relu(0.2)"], "g": ["output"]}
    assert [(f, w) for _, f, w in g.layers["f"].via] == [(pytest.approx(2.0), " -> relu * 2")]
    producers = {n: labels(link.producers) for n, link in g.layers.items()}
    assert producers["a"] == ["input"] and producers["g"] == ["leaky_relu(0.2)"]
    assert g.layers["c"].consumers[0].spec == "gelu_tanh"
    assert {n.how for link in g.layers.values() for n in link.consumers if n.kind == "activation"} == {"traced"}
    assert g.layers["g"].producers[0].param == 0.2


class NormThenAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.ln, self.fc2 = nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8)
        self.conv, self.bn, self.act = nn.Conv1d(1, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU()

    def forward(self, x):
        h = self.fc2(F.gelu(self.ln(self.fc(x))))
        return self.act(self.bn(self.conv(h.unsqueeze(1))))


def test_a_normalization_between_layer_and_activation_is_passed_through_for_the_consumer():
    g = discover(NormThenAct(), torch.randn(5, 4))
    assert labels(g.layers["fc"].consumers) == ["gelu"]
    assert labels(g.layers["fc2"].producers) == ["gelu"]
    assert labels(g.layers["conv"].consumers) == ["ReLU"] and g.layers["conv"].consumers[0].how == "observed"
    assert g.norms == ("ln", "bn")


class AttnGelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn, self.fc = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(F.gelu(self.attn(x, x, x, need_weights=False)[0]))


def test_gelu_after_an_attention_block():
    g = discover(AttnGelu(), torch.randn(2, 5, 8))
    assert labels(g.layers["attn"].consumers) == ["gelu"] and labels(g.layers["attn"].producers) == ["input"]
    assert labels(g.layers["fc"].producers) == ["gelu"]


class Cube(nn.Module):
    def forward(self, x):
        return x * x * x / 3


def test_an_unknown_activation_module_is_one_step_with_itself_as_the_callable():
    model = nn.Sequential(nn.Linear(4, 4), Cube(), nn.Linear(4, 1))
    g = discover(model, torch.randn(3, 4))
    (node,) = g.layers["2"].producers
    assert node.kind == "activation" and node.label == "Cube" and isinstance(node.spec, Cube)


def test_residual_branches_of_resnet_and_transformer():
    g = discover(*zoo.build("resnet", depth=2))
    assert [(b.last_layer, b.last_norm, b.layers) for b in g.branches] == [
        ("3.conv2", "3.bn2", ("3.conv1", "3.conv2")), ("4.conv2", "4.bn2", ("4.conv1", "4.conv2"))]
    assert g.final == ("7",)
    g = discover(*zoo.build("transformer", depth=2))
    assert [b.last_layer for b in g.branches] == ["blocks.0.attn", "blocks.0.fc2", "blocks.1.attn", "blocks.1.fc2"]
    assert all(b.last_norm is None for b in g.branches)


class Shortcuts(nn.Module):
    """A projection shortcut (residual), two parallel branches and a positional add (not residual)."""

    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(10, 8), nn.Embedding(4, 8)
        self.proj, self.m1, self.m2 = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 16)
        self.p1, self.p2 = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        x = self.proj(x) + self.m2(F.relu(self.m1(x)))
        return self.p1(x) + self.p2(x)


def test_projection_shortcut_is_residual_but_parallel_and_positional_sums_are_not():
    g = discover(Shortcuts(), torch.randint(0, 10, (2, 4)))
    assert [(b.last_layer, b.layers) for b in g.branches] == [("m2", ("m1", "m2"))]
    assert labels(g.layers["pos"].producers) == ["constant"]  # torch.arange is made inside forward


def test_model_comes_back_unchanged_and_no_hook_or_mode_is_left():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 2))
    model[4].eval()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(16, 4)
    rng = torch.get_rng_state()
    discover(model, x)  # train mode: BatchNorm would update its statistics, dropout draw
    assert all(torch.equal(buffers[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == [True, True, True, True, True, False]
    assert_no_hooks(model)


def assert_no_hooks(model):
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    # no torch function mode left on the stack (private accessor, test-only)
    assert torch.overrides._get_current_function_mode_stack() == []


def test_a_rejected_input_names_the_layer_and_those_completed_and_leaves_nothing_behind():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(9, 2))
    with pytest.raises(ForwardError) as info:
        discover(model, torch.randn(3, 4))
    assert info.value.layer == "2" and info.value.completed == ["0", "1"]
    assert "`2` (Linear)" in str(info.value) and "fix:" in str(info.value)
    assert_no_hooks(model)


def test_without_input_fx_is_used_and_one_warning_says_so():
    with pytest.warns(DiscoveryWarning) as record:
        g = discover(Functional())
    assert len(record) == 1 and "torch.fx" in str(record[0].message)
    assert g.method == "fx" and labels(g.layers["c"].consumers) == ["gelu(tanh)"]
    assert {n.how for link in g.layers.values() for n in link.producers} == {"assumed"}


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.act, self.b = nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
            x = -x
        return self.b(self.act(self.a(x)))


def test_registration_order_when_fx_fails():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        g = discover(Untraceable())
    assert [type(w.message) for w in record] == [DiscoveryWarning] and "registration order" in str(record[0].message)
    assert g.method == "order" and labels(g.layers["a"].consumers) == ["Tanh"] and g.branches == ()


def test_meta_model_with_meta_input():
    with torch.device("meta"):
        model = zoo.transformer(depth=1)
    g = discover(model, torch.empty(2, 5, 64, device="meta"))
    assert labels(g.layers["blocks.0.fc1"].consumers) == ["GELU"]
    assert all(p.is_meta for p in model.parameters())


class _Recording(torch.nn.Module):
    """Remembers the device of each input it sees; optionally needs real values."""

    def __init__(self, needs_values: bool):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
        self.needs_values, self.seen = needs_values, []

    def forward(self, x):
        self.seen.append(x.device.type)
        h = torch.relu(self.fc1(x))
        if self.needs_values and h.sum().item() < 0:  # data-dependent: cannot run on meta
            h = -h
        return self.fc2(h)


@pytest.fixture
def meta_always(monkeypatch):
    from initscope import _discover
    monkeypatch.setattr(_discover, "META_MIN_ELEMENTS", 0)


def test_small_inputs_run_for_real():
    model = _Recording(needs_values=False)
    discover(model, torch.randn(3, 4))
    assert model.seen == ["cpu"]


def test_discovery_runs_on_meta_without_arithmetic(meta_always):
    model = _Recording(needs_values=False)
    g = discover(model, torch.randn(3, 4))
    assert model.seen == ["meta"]
    assert g.method == "run" and [n.label for n in g.layers["fc2"].producers] == ["relu"]
    assert not any(p.is_meta for p in model.parameters())


def test_discovery_falls_back_to_a_real_run_when_meta_cannot_run(meta_always):
    model = _Recording(needs_values=True)
    g = discover(model, torch.randn(3, 4))
    assert model.seen == ["meta", "cpu"]
    assert [n.label for n in g.layers["fc2"].producers] == ["relu"]


@pytest.mark.parametrize("name,kw", [("mlp", {"depth": 3}), ("plain_cnn", {"depth": 3}), ("resnet", {"depth": 2}),
                                     ("transformer", {"depth": 2}), ("lstm", {"num_layers": 2})])
def test_meta_and_real_runs_find_the_same_graph(name, kw, monkeypatch):
    from initscope import _discover
    model, x = zoo.build(name, **kw)
    monkeypatch.setattr(_discover, "META_MIN_ELEMENTS", 0)
    on_meta = discover(model, x)
    monkeypatch.setattr(_discover, "META_MIN_ELEMENTS", float("inf"))
    real = discover(model, x)
    assert on_meta == real


@pytest.fixture
def shape_only_always(monkeypatch):
    from initscope import _discover
    monkeypatch.setattr(_discover, "SHAPE_ONLY_MIN_ELEMENTS", 0)


@pytest.mark.parametrize("name,kw", [("mlp", {"depth": 3}), ("transformer", {"depth": 2}), ("lstm", {"num_layers": 2})])
def test_shape_only_linear_layers_find_the_same_graph(name, kw, monkeypatch, shape_only_always):
    from initscope import _discover
    model, x = zoo.build(name, **kw)
    calls = []
    real = _discover._run
    monkeypatch.setattr(_discover, "_run", lambda *a, **k: calls.append(k.get("shape_only", False)) or real(*a, **k))
    quick = discover(model, x)
    assert calls == [True]  # the shape-only run stood
    monkeypatch.setattr(_discover, "SHAPE_ONLY_MIN_ELEMENTS", float("inf"))
    assert quick == discover(model, x) and calls == [True, False]


class _LoRA(nn.Linear):
    def forward(self, x):
        self.called = True
        return super().forward(x)


def test_shape_only_run_leaves_linear_forward_as_found_and_skips_custom_forwards(shape_only_always):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), _LoRA(8, 2))
    own = lambda x: nn.Linear.forward(model[0], x)  # noqa: E731  an instance-level forward of the user's
    model[0].forward = own
    discover(model, torch.randn(3, 4))
    assert model[2].called  # a subclass's own forward runs for real
    assert model[0].forward is own and "forward" not in vars(model[2])
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(9, 2))
    with pytest.raises(ForwardError, match="`2` .Linear.*cannot be multiplied"):
        discover(plain, torch.randn(3, 4))  # a rejected input: the real forward raises, naming the layer
    assert all("forward" not in vars(m) for m in plain.modules())


class _ScaleByMax(nn.Module):
    """Value-dependent: zeros from a shape-only Linear leave h[h > 0] empty, and max() raises."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = self.fc(x)
        return self.out(torch.relu(h / h[h > 0].max()))


class _Experts(nn.Module):
    """A router picks one of four experts per token: zeros would send every token to expert 0."""

    def __init__(self):
        super().__init__()
        self.router = nn.Linear(8, 4)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.GELU()) for _ in range(4))

    def forward(self, x):
        pick = self.router(x).argmax(-1)
        out = torch.zeros_like(x)
        for i, expert in enumerate(self.experts):
            sel = pick == i
            if sel.any():
                out[sel] = expert(x[sel])
        return out


def test_value_dependent_models_get_a_full_real_run(shape_only_always):
    torch.manual_seed(0)
    g = discover(_ScaleByMax(), torch.randn(4, 8))  # the shape-only run raises; the real one decides
    assert labels(g.layers["out"].producers) == ["relu"]
    experts = discover(_Experts(), torch.randn(64, 8))
    assert {f"experts.{i}.0" for i in range(4)} <= set(experts.layers)
    assert all(labels(experts.layers[f"experts.{i}.0"].consumers) == ["GELU"] for i in range(4))
