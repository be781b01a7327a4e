"""initscope.oprules: each moment rule against Monte Carlo, forwards (the signal a layer is fed)
and backwards (the factor of E[(dL/dx)^2] on the way to the consumer), register_rule, and the
plan's words. Monte Carlo over N = 2**21 draws: the standard error of a second moment of a
product of two Gaussians-like factors is below sqrt(E[x^4] / N) / E[x^2] ~ 0.3%, so 2% is
more than six standard errors."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import initscope
from initscope import register_rule
from initscope.errors import ArgumentError
from initscope.graph import discover

N = 2**21
TOL = 0.02
gen = torch.Generator().manual_seed(0)


def z(*shape):
    return torch.randn(*(shape or (N,)), generator=gen, dtype=torch.float64)


def into(model, name, x=None):
    """The signal of layer ``name``'s input, and the graph."""
    g = discover(model, torch.randn(4, 8) if x is None else x)
    (sig,) = g.layers[name].signals
    return sig, g


def factor(g, name):
    """The backward factors (times E[phi'^2] of the consumer) recorded for layer ``name``."""
    return sorted(f for _, f, _ in g.layers[name].via)


class Two(nn.Module):
    """out(op(a(x), b(x))) with two independent layers a, b."""

    def __init__(self, op, width=8):
        super().__init__()
        self.a, self.b, self.out, self.op = nn.Linear(8, width), nn.Linear(8, width), nn.Linear(width, 1), op

    def forward(self, x):
        return self.out(self.op(self.a(x), self.b(x)))


@pytest.mark.parametrize("op,mc", [
    (lambda a, b: a * b, lambda a, b: a * b),
    (lambda a, b: F.silu(a) * b, lambda a, b: F.silu(a) * b),
    (lambda a, b: F.relu(a) * b, lambda a, b: F.relu(a) * b),
    (lambda a, b: torch.tanh(a) * torch.sigmoid(b), lambda a, b: torch.tanh(a) * torch.sigmoid(b)),
    (lambda a, b: F.gelu(a) * (b + 0.5), lambda a, b: F.gelu(a) * (b + 0.5)),
    (lambda a, b: a + b, lambda a, b: a + b),
    (lambda a, b: F.relu(a) - F.relu(b), lambda a, b: F.relu(a) - F.relu(b)),
    (lambda a, b: F.relu(a) + F.relu(b), lambda a, b: F.relu(a) + F.relu(b)),
    (lambda a, b: 3.0 * F.relu(a) - 1.0, lambda a, b: 3.0 * F.relu(a) - 1.0),
    (lambda a, b: 1.0 - F.relu(a) / 2, lambda a, b: 1.0 - F.relu(a) / 2),
    (lambda a, b: -torch.sigmoid(a), lambda a, b: -torch.sigmoid(a)),
    # alpha of a two-tensor add/sub scales the second operand; rsub(x, d, alpha) = d - alpha x
    (lambda a, b: torch.add(a, b, alpha=2), lambda a, b: torch.add(a, b, alpha=2)),
    (lambda a, b: torch.sub(F.relu(a), b, alpha=0.5), lambda a, b: torch.sub(F.relu(a), b, alpha=0.5)),
    (lambda a, b: torch.rsub(F.relu(a), 2.0, alpha=3), lambda a, b: torch.rsub(F.relu(a), 2.0, alpha=3)),
    # the number as a keyword, a numpy scalar or a 0-d tensor
    (lambda a, b: torch.mul(a, other=3.0), lambda a, b: torch.mul(a, other=3.0)),
    (lambda a, b: torch.div(a, other=2.0), lambda a, b: torch.div(a, other=2.0)),
    (lambda a, b: torch.add(F.relu(a), other=2.0), lambda a, b: torch.add(F.relu(a), other=2.0)),
    (lambda a, b: a * np.float32(2), lambda a, b: a * np.float32(2)),
    (lambda a, b: a * torch.tensor(2.0), lambda a, b: a * torch.tensor(2.0)),
])
def test_products_sums_and_scalar_affine_match_monte_carlo(op, mc):
    sig, _ = into(Two(op), "out")
    a, b = z(), z()
    expected = mc(a, b)
    assert sig.second == pytest.approx(expected.pow(2).mean().item(), rel=TOL)
    assert sig.mean == pytest.approx(expected.mean().item(), abs=TOL * expected.pow(2).mean().sqrt().item())


@pytest.mark.parametrize("op,layer", [
    (lambda a, b: F.relu(a) * F.relu(b), "a"),           # the chain goes on through relu to the product
    (lambda a, b: F.dropout(F.relu(a), 0.5, True), "a"),  # ... and to dropout after it
    (lambda a, b: torch.tanh(a) * 2.0, "a"),
    (lambda a, b: F.silu(a) * b, "a"),                    # E[b^2] = 1: silu's own rule
    (lambda a, b: torch.sub(a, b, alpha=2), "b"),         # b's factor alpha^2
    (lambda a, b: torch.add(a, b, alpha=0.5), "b"),
    (lambda a, b: torch.rsub(a, 2.0, alpha=3), "a"),      # 2 - 3a: factor 9
    (lambda a, b: torch.mul(a, other=3.0), "a"),
    (lambda a, b: a * np.float32(2), "a"),
])
def test_fan_out_gains_match_the_monte_carlo_backward_factor(op, layer):
    # the factor E[(dL/d layer output)^2] / E[(dL/dy)^2] with dL/dy ~ N(0, 1) independent of y;
    # fan_out gain = factor^-1/2. Its Monte Carlo estimate is a mean of squares of products of
    # at most three independent Gaussian-like factors (kurtosis <= 27), relative standard error
    # <= sqrt(27 / N) = 0.36%, so 2% on the factor is more than five standard errors.
    p = initscope.plan(Two(op), example_input=torch.randn(4, 8), mode="fan_out")
    a, b, g = z().requires_grad_(True), z().requires_grad_(True), z()
    torch.manual_seed(0)
    grad = torch.autograd.grad(op(a, b), {"a": a, "b": b}[layer], g)[0]
    expected = (grad.pow(2).mean() / g.pow(2).mean()).item()
    assert p.row(f"{layer}.weight").gain ** -2 == pytest.approx(expected, rel=TOL)


def test_a_scalar_op_whose_number_is_not_read_is_named_as_an_op_without_a_rule():
    p = initscope.plan(Two(lambda a, b: 2.0 / a), example_input=torch.randn(4, 8))
    assert p.row("out.weight").gain == 1.0 and "torch.div (an op with no moment rule" in p.row("out.weight").reason


def test_a_gate_after_an_activation_is_evaluated_at_the_product_s_second_moment():
    # relu(silu(a) * b): the product is not Gaussian; the rule takes it as N(0, E[.^2]). relu
    # of a symmetric law keeps half its second moment, so that is exact here (not its mean).
    sig, _ = into(Two(lambda a, b: F.relu(F.silu(a) * b)), "out")
    assert sig.second == pytest.approx(0.5 * 0.35577, rel=1e-3)  # E[silu(z)^2] = 0.35577
    assert sig.second == pytest.approx(F.relu(F.silu(z()) * z()).pow(2).mean().item(), rel=TOL)


class Glu(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.w, self.out, self.kind = nn.Linear(8, 16), nn.Linear(8, 1), kind

    def forward(self, x):
        y = self.w(x)
        if self.kind == "F.glu":
            return self.out(F.glu(y, dim=-1))
        if self.kind == "nn.GLU":
            return self.out(nn.GLU()(y))
        a, b = y.chunk(2, dim=-1) if self.kind == "chunk" else (y[..., :8], y[..., 8:])
        return self.out(F.silu(a) * b)


@pytest.mark.parametrize("kind,mc", [("F.glu", lambda a, b: a * torch.sigmoid(b)),
                                     ("nn.GLU", lambda a, b: a * torch.sigmoid(b)),
                                     ("chunk", lambda a, b: F.silu(a) * b), ("slices", lambda a, b: F.silu(a) * b)])
def test_glu_family_matches_monte_carlo(kind, mc):
    sig, g = into(Glu(kind), "out")
    a, b = z(), z()
    assert sig.second == pytest.approx(mc(a, b).pow(2).mean().item(), rel=TOL)
    # backwards: y's halves see different factors; the layer gets their average
    a.requires_grad_(True), b.requires_grad_(True)
    grad = torch.autograd.grad(mc(a, b).sum(), (a, b))
    expected = (grad[0].pow(2).mean() + grad[1].pow(2).mean()).item() / 2
    fs = factor(g, "w")
    if kind in ("F.glu", "nn.GLU"):  # one chain through glu
        assert fs[0] == pytest.approx(expected, rel=TOL)
    else:  # two chains: a -> silu (E[silu'^2], from the activation) and b -> * silu(a) -> out
        d_silu = initscope.moments("silu").deriv_second
        assert (fs[1] * d_silu + fs[0]) / 2 == pytest.approx(expected, rel=TOL) and fs[1] == 1.0


def test_a_product_of_dependent_operands_has_no_rule():
    class Swish(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.out = nn.Linear(8, 8), nn.Linear(8, 1)

        def forward(self, x):
            h = self.a(x)
            return self.out(h * torch.sigmoid(h))

    p = initscope.plan(Swish(), example_input=torch.randn(4, 8))
    assert p.row("out.weight").gain == 1.0
    assert "torch.mul (an op with no moment rule; initscope.register_rule adds one)" in p.row("out.weight").reason


class Gate(nn.Module):
    """A squeeze-excitation gate x * gate(expand(relu(reduce(mean over space of x))))."""

    def __init__(self, gate):
        super().__init__()
        self.conv, self.reduce, self.expand = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.out, self.gate = nn.Conv2d(16, 1, 1), gate

    def forward(self, x):
        h = F.silu(self.conv(x))
        s = self.gate(self.expand(F.relu(self.reduce(h.mean((2, 3), keepdim=True)))))
        return self.out(h * s)


@pytest.mark.parametrize("gate", [torch.sigmoid, F.hardsigmoid])
def test_squeeze_excitation_gate_is_a_product_with_the_gate_at_q_1(gate):
    sig, g = into(Gate(gate), "out", torch.randn(2, 3, 8, 8))
    # the approximation: the gate is independent of x (its spatial mean hardly depends on one
    # entry), and the gate's pre-activation has q = 1 (a layer's output)
    s, h = gate(z()), F.silu(z())
    assert sig.second == pytest.approx(s.pow(2).mean().item() * h.pow(2).mean().item(), rel=TOL)
    assert factor(g, "expand") == [1.0]  # the gate's own activation decides its layer's fan_out


def test_concat_weights_the_parts_by_size_and_shape_ops_keep_moments():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Linear(8, 24), nn.Linear(8, 8), nn.Linear(32, 1)

        def forward(self, x):
            h = torch.cat([F.relu(self.a(x)), torch.tanh(self.b(x))], dim=-1)
            return self.out(h.view(-1, 4, 8).transpose(1, 2).permute(0, 2, 1).reshape(-1, 32).flatten(1))

    sig, _ = into(Cat(), "out")
    expected = torch.cat([F.relu(z(3 * N // 4)), torch.tanh(z(N // 4))]).pow(2).mean().item()
    assert sig.second == pytest.approx(expected, rel=TOL)


@pytest.mark.parametrize("train,p", [(True, 0.25), (False, 0.25), (True, 0.0)])
def test_dropout_in_training_raises_the_second_moment_and_in_eval_keeps_it(train, p):
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Dropout(p), nn.Linear(8, 1)).train(train)
    sig, g = into(model, "3")
    x = torch.tanh(z())
    keep = (torch.rand(N, generator=gen, dtype=torch.float64) >= p) / (1 - p) if train else 1.0
    assert sig.second == pytest.approx((x * keep).pow(2).mean().item(), rel=TOL)
    assert model.training == train
    # backwards, dropout before the activation: dL/dx = mask / (1 - p) * dL/dy
    g = discover(nn.Sequential(nn.Linear(8, 8), nn.Dropout(p), nn.Tanh()).train(train), torch.randn(4, 8))
    assert factor(g, "0") == [pytest.approx(torch.as_tensor(keep).pow(2).mean().item(), rel=TOL)]


def test_mean_over_dims_and_attention_weights_keep_the_second_moment_by_the_averaging_assumption():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
            self.pooled = nn.Linear(8, 1)

        def forward(self, x):
            scores = self.q(x) @ self.k(x).transpose(-2, -1) / math.sqrt(8)
            h = self.o(scores.softmax(-1) @ F.relu(self.v(x)))
            return self.pooled(torch.relu(h).mean(1))

    g = discover(Attn(), torch.randn(2, 5, 8))
    (into_o,) = g.layers["o"].signals
    assert into_o.second == pytest.approx(0.5) and "attention average" in into_o.text
    (into_pooled,) = g.layers["pooled"].signals
    assert into_pooled.plain and into_pooled.second == pytest.approx(0.5)  # mean over dims: kept
    assert [f for _, f, _ in g.layers["v"].via] == [1.0]  # v -> relu: the attention average is after it
    assert [n.kind for n in g.layers["q"].consumers] == ["rule"]  # the scores' backward is not followed


def test_matmul_of_independent_values_sums_n_products():
    class QK(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.out = nn.Linear(8, 6), nn.Linear(8, 6), nn.Linear(5, 1)

        def forward(self, x):
            return self.out(self.q(x) @ self.k(x).transpose(-2, -1))

    g = discover(QK(), torch.randn(2, 5, 8))
    (sig,) = g.layers["out"].signals
    q, k = z(N // 6, 6), z(N // 6, 6)
    assert sig.second == pytest.approx((q * k).sum(-1).pow(2).mean().item(), rel=TOL)  # = 6


class Cum(nn.Module):
    """A layer after torch.cumsum, an op with no built-in moment rule."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 1)

    def forward(self, x):
        return self.b(torch.cumsum(self.a(x), -1))


def test_an_op_without_a_rule_gives_gain_one_and_the_plan_names_it():
    p = initscope.plan(Cum(), example_input=torch.randn(4, 8))
    assert p.row("b.weight").gain == 1.0 and "torch.cumsum" in p.row("b.weight").reason


def test_register_rule_forward_and_backward_and_removal():
    def scale_rule(call):
        (m, s), = call.operands
        return 2 * m, 4 * s

    register_rule(torch.cumsum, scale_rule, backward=lambda call: [4.0])
    try:
        p = initscope.plan(Cum(), example_input=torch.randn(4, 8), mode="fan_in")
        assert p.row("b.weight").gain == pytest.approx(0.5) and "cumsum(a)" in p.row("b.weight").reason
        p = initscope.plan(Cum(), example_input=torch.randn(4, 8), mode="fan_out")
        assert p.row("a.weight").gain == pytest.approx(0.5) and "cumsum" in p.row("a.weight").reason
    finally:
        register_rule("cumsum", None)
    assert initscope.plan(Cum(), example_input=torch.randn(4, 8)).row("b.weight").gain == 1.0
    with pytest.raises(ArgumentError, match="register_rule\\('cumsum'\\): forward must be callable"):
        register_rule(torch.cumsum, 3.0)


def test_plan_rows_spell_out_the_chain():
    class SwiGLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate, self.up, self.down = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x):
            return self.down(F.silu(self.gate(x)) * self.up(x))

    model = nn.Sequential(SwiGLU())
    p = initscope.plan(model, example_input=torch.randn(4, 8))
    assert p.row("0.down.weight").reason == "fan_in: producer silu(gate) * up: E[.^2] = 0.3558 x 1 -> gain 1.677"
    p = initscope.plan(model, example_input=torch.randn(4, 8), mode="fan_out")
    assert p.row("0.up.weight").reason == "fan_out: consumer chain up * silu(gate) -> down: E[d^2] x 0.3558 -> gain 1.677"


def test_a_user_rule_that_raises_is_named_in_the_error():
    register_rule("cumsum", lambda call: 1 / 0)
    try:
        with pytest.raises(initscope.ForwardError, match=r"register_rule\('cumsum'\): the rule raised ZeroDivisionError"):
            initscope.plan(Cum(), example_input=torch.randn(4, 8))
    finally:
        register_rule("cumsum", None)


class SwiGLU(nn.Module):
    """Parameter-free, halves its input: not an activation, so discovery looks inside."""

    def forward(self, x):
        a, b = x.chunk(2, dim=-1)
        return F.silu(a) * b


def test_a_parameter_free_glu_module_is_traced_inside():
    model = nn.Sequential(nn.Linear(8, 32), SwiGLU(), nn.Linear(16, 1))
    p = initscope.plan(model, example_input=torch.randn(4, 8))
    assert p.row("2.weight").gain == pytest.approx(1.6765, abs=1e-4)  # 1/sqrt(E[silu(z)^2])
    assert "silu(0[0]) * 0[1]" in p.row("2.weight").reason


def test_without_example_input_the_fx_trace_gets_the_same_gains():
    model = nn.Sequential(Glu("chunk"))
    with pytest.warns(initscope.DiscoveryWarning):
        p = initscope.plan(model)
    assert p.discovery == "fx" and p.row("0.out.weight").gain == pytest.approx(1.6765, abs=1e-4)
    model = nn.Sequential(nn.Linear(8, 16), nn.GLU(), nn.Linear(8, 1))  # a module: fx keeps it whole
    with pytest.warns(initscope.DiscoveryWarning):
        p = initscope.plan(model)
    assert p.row("2.weight").gain == pytest.approx(1 / math.sqrt(initscope.moments("sigmoid").second))
