"""Acceptance of issue 12: gated MLP stacks and an EfficientNet-like stack with squeeze-
excitation gates keep their signal after initialize(model, "kaiming", example_input=x), with
the analytic gains of the moment rules and no data-driven fix; with the ops between layers at
gain 1 (as before the rules) they collapse.

Why each block is measured on N(0, 1) rows, not on the previous block's output: a gated block
multiplies two projections of the same row, so each row's mean square comes out (about) squared.
Any spread between rows doubles in log scale per block, whatever the gains (they are one
number per layer): at d = 256 the log-std of the per-row mean square after blocks 1..4 is about
0.26, 0.61, 1.3, 2.8, and the batch mean after block 8 is dominated by a few rows (inf in
float32) while the median drifts to 0.01. So the criterion is the fixed point the gains are
designed for: every block maps unit-scale rows to unit-scale rows.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import initscope
from initscope import zoo
from initscope._spec import resolve_spec

D, H = 256, 688


class Gated(nn.Module):
    """down(act(gate(x)) * up(x)), or down(F.glu([gate(x), up(x)])) for act="glu"."""

    def __init__(self, act):
        super().__init__()
        self.gate, self.up, self.down = (nn.Linear(D, H, bias=False), nn.Linear(D, H, bias=False),
                                         nn.Linear(H, D, bias=False))
        self.act = act

    def forward(self, x):
        if self.act == "glu":
            return self.down(F.glu(torch.cat([self.up(x), self.gate(x)], -1), dim=-1))
        return self.down(self.act(self.gate(x)) * self.up(x))


def stack(act):
    torch.manual_seed(0)
    return nn.Sequential(*[Gated(act) for _ in range(8)])


def per_block(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return [block(torch.randn(1024, D, generator=gen)).pow(2).mean().item() for block in model]


@pytest.mark.parametrize("act", [F.silu, F.gelu, "glu"], ids=["swiglu", "geglu", "F.glu"])
def test_every_block_of_an_8_block_gated_stack_keeps_the_second_moment(act):
    model = stack(act)
    x = torch.randn(64, D)
    initscope.initialize(model, "kaiming", example_input=x)
    # E over a 1024 x 256 batch; the weight draw moves a block's gain by ~2% at these widths,
    # so [0.7, 1.43] (a factor sqrt(2) either way, the band) is a wide margin
    assert all(0.7 <= q <= 1.43 for q in per_block(model)), per_block(model)


@pytest.mark.parametrize("act", [F.silu, "glu"], ids=["swiglu", "F.glu"])
def test_at_gain_one_each_block_loses_most_of_its_second_moment(act):
    model = stack(act)
    initscope.register_rule("mul", lambda call: None)  # the product and glu rules off: gain 1, as before
    initscope.register_rule("glu", lambda call: None)
    try:
        initscope.initialize(model, "kaiming", example_input=torch.randn(64, D))
    finally:
        initscope.register_rule("mul", None), initscope.register_rule("glu", None)
    # E[silu(z)^2] = 0.356 and E[sigmoid(z)^2] = 0.293 per block (before the next block's own loss)
    assert all(q < 0.45 for q in per_block(model)), per_block(model)


def test_swiglu_down_gain_is_1_677_at_q_1():
    p = initscope.plan(stack(F.silu), example_input=torch.randn(8, D))
    # 1/sqrt(E[silu(z)^2] E[z^2]) = 1/sqrt(0.35577) = 1.6765 (quadrature, error < 1e-12)
    for i in range(8):
        assert p.row(f"{i}.down.weight").gain == pytest.approx(1.677, abs=0.002)
    assert p.row("3.down.weight").reason == "fan_in: producer silu(gate) * up: E[.^2] = 0.3558 x 1 -> gain 1.677"


def _std(model, x):
    with torch.no_grad():
        model.eval()  # BatchNorm with reset statistics: the identity, so the gains alone decide
        return model(x).std().item()


@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
def test_efficientnet_with_squeeze_excitation_keeps_its_output_scale(gate):
    model, x = zoo.build("efficientnet", batch=16, gate=gate)
    p = initscope.initialize(model, "kaiming", example_input=x)
    assert 0.5 <= _std(model, x) <= 2.0
    assert f"silu(bn1) * {gate}(se.expand): E[.^2] = 0.3558 x " in p.row("3.project.weight").reason
    model, x = zoo.build("efficientnet", batch=16, gate=gate)
    initscope.register_rule("mul", lambda call: None)
    try:
        initscope.initialize(model, "kaiming", example_input=x)
    finally:
        initscope.register_rule("mul", None)
    assert _std(model, x) < 1e-3


def test_efficientnet_is_a_zoo_model_and_a_cli_spec():
    model, x = resolve_spec("zoo:efficientnet?depth=2&width=8&size=16&batch=2")
    assert tuple(model(x).shape) == (2, 10)
    assert sum(isinstance(m, zoo.MBConv) for m in model.modules()) == 2
    with pytest.raises(initscope.UnknownOptionError, match="gate"):
        zoo.efficientnet(gate="relu")
