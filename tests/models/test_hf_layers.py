"""The pieces real transformers models need, on small stand-ins that run without transformers:
the ``Conv1D`` (in, out) layout, tied input/output embeddings, and ``ModelOutput``-like
mapping outputs in probe."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import initscope
from initscope.fans import fan, is_transposed_linear

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # the stand-ins draw their own init and batches from the global RNG


class Conv1D(nn.Module):
    """transformers' GPT-2 layer, re-written: a Linear whose weight is stored (in, out)."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)  # GPT-2's own init
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


class TiedLM(nn.Module):
    """Embedding -> Conv1D -> ReLU -> LayerNorm -> Linear tied to the embedding; dict output."""

    def __init__(self, vocab: int = 300, d: int = 96, padding_idx: int | None = None):
        super().__init__()
        self.wte = nn.Embedding(vocab, d, padding_idx=padding_idx)
        self.fc, self.ln = Conv1D(d, d), nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, input_ids):
        h = self.ln(torch.relu(self.fc(self.wte(input_ids))))
        return {"hidden": h, "logits": self.head(h)}


def test_conv1d_fans_read_in_out_layout():
    layer = Conv1D(nf=12, nx=5)
    f = fan(layer)
    assert (f.fan_in, f.fan_out, f.fallback) == (5.0, 12.0, False)  # torch's convention gives (12, 5)
    assert fan(layer, "bias").blocks[0].rows == slice(0, 12)


def test_a_module_named_conv1d_without_its_layout_is_not_read_as_one():
    layer = Conv1D(nf=12, nx=5)
    layer.nx = 7  # the weight is no longer (nx, nf): not transformers' layer
    assert not is_transposed_linear(layer)
    assert fan(layer).fallback


def test_conv1d_after_relu_gets_the_kaiming_std_of_its_true_fan_in():
    model = nn.Sequential(nn.Linear(8, 40), nn.ReLU(), Conv1D(nf=10, nx=40))
    p = initscope.initialize(model, example_input=torch.randn(4, 8))
    assert p.row("2.weight").std == pytest.approx(math.sqrt(2 / 40), rel=1e-12)
    assert model[2].weight.std().item() == pytest.approx(math.sqrt(2 / 40), rel=0.1)  # 400 draws: ~3.5% sd


def test_tied_weight_is_scaled_by_its_layer_use_and_every_use_is_named():
    model, ids = TiedLM(), torch.randint(0, 300, (16, 32))
    p = initscope.initialize(model, example_input=ids)
    row = p.row("wte.weight")
    assert (row.layer, row.layer_type, row.fan) == ("head", "Linear", 96)
    assert row.std == pytest.approx(1 / math.sqrt(96), rel=1e-12)  # after a LayerNorm: gain 1
    assert "`wte` (Embedding), `head` (Linear)" in row.reason and "sets its scale" in row.reason
    assert [u.reason for u in p.untouched if u.name == "head.weight"] == [
        "same tensor as `wte.weight` (tied): initialized there, at the scale `head` (Linear) sets"]
    with torch.no_grad():
        logits = model(ids)["logits"]
    # Var(logit) = |LayerNorm output|^2 / d = 1; 300 x 96 weights and 512 tokens: a few % error.
    assert logits.std().item() == pytest.approx(1.0, rel=0.1)


class PositionalLM(TiedLM):
    """Adds a position embedding to the tied token lookup (GPT-2's wte + wpe), and an untied
    embedding of its own that feeds another layer."""

    def __init__(self):
        super().__init__()
        self.wpe, self.other = nn.Embedding(32, 96), nn.Embedding(10, 96)
        self.side = nn.Linear(96, 4)

    def forward(self, input_ids):
        h = self.wte(input_ids) + self.wpe(torch.arange(input_ids.shape[1]))
        h = self.ln(torch.relu(self.fc(h)))
        return {"logits": self.head(h), "side": self.side(self.other(input_ids % 10))}


def test_an_embedding_added_to_a_tied_lookup_takes_its_std():
    p = initscope.plan(PositionalLM(), example_input=torch.randint(0, 300, (4, 16)))
    assert p.row("wpe.weight").std == pytest.approx(1 / math.sqrt(96), rel=1e-12)
    assert "added to the tied lookup `wte`" in p.row("wpe.weight").reason
    assert p.row("other.weight").std == 1.0  # read by other layers: a lookup of its own, std 1


def test_tied_padding_row_stays_zero():
    model = TiedLM(padding_idx=0)
    p = initscope.initialize(model, example_input=torch.randint(0, 300, (4, 8)))
    assert p.row("wte.weight", "padding_idx").std == 0.0
    assert torch.count_nonzero(model.head.weight[0]) == 0


def test_untied_embedding_keeps_std_one():
    model = TiedLM()
    model.head.weight = nn.Parameter(torch.empty(300, 96))
    p = initscope.plan(model, example_input=torch.randint(0, 300, (4, 8)))
    assert p.row("wte.weight").std == 1.0 and p.row("head.weight").std == pytest.approx(96 ** -0.5)
    assert not any(n.startswith("tied:") for n in p.notes)


def test_probe_takes_the_default_loss_on_the_logits_of_a_mapping_output():
    model, ids = TiedLM(), torch.randint(0, 300, (4, 8))
    trace = initscope.probe(model, ids)
    with torch.no_grad():
        logits = model(ids)["logits"]
    # only the logits, not the hidden state beside them: 0.5 * mean(logits^2)
    assert trace.loss == pytest.approx(0.5 * logits.pow(2).mean().item(), rel=1e-6)
    assert "default loss taken on output['logits']" in trace.notes


def test_lsuv_scales_conv1d_by_default():
    model, ids = TiedLM(), torch.randint(0, 300, (8, 16))
    report = initscope.lsuv(model, ids)
    assert [r.name for r in report.layers] == ["fc", "head"]
    with torch.no_grad():
        y = model.fc(model.wte(ids))
    assert y.std().item() == pytest.approx(1.0, abs=0.1)  # LSUV's tol


class Experts(nn.Module):
    """transformers' stacked experts, re-written: per expert silu(gate) * up, then down."""

    def __init__(self, n: int = 4, hidden: int = 32, inner: int = 48, transposed: bool = False):
        super().__init__()
        self.num_experts, self.hidden_dim, self.is_transposed, self.has_gate = n, hidden, transposed, True
        shape_up, shape_down = (n, 2 * inner, hidden), (n, hidden, inner)
        if transposed:
            shape_up, shape_down = (n, hidden, 2 * inner), (n, inner, hidden)
        self.gate_up_proj, self.down_proj = nn.Parameter(torch.randn(shape_up)), nn.Parameter(torch.randn(shape_down))
        self.gate_up_proj_bias = nn.Parameter(torch.randn(n, 2 * inner))
        self.act_fn = nn.SiLU()

    def forward(self, x):  # every token to expert 0, enough to run the layer
        up, down = self.gate_up_proj[0], self.down_proj[0]
        h = x @ up + self.gate_up_proj_bias[0] if self.is_transposed else F.linear(x, up, self.gate_up_proj_bias[0])
        gate, value = h.chunk(2, dim=-1)
        h = self.act_fn(gate) * value
        return h @ down if self.is_transposed else F.linear(h, down)


class MoEBlock(nn.Module):
    def __init__(self, transposed: bool = False):
        super().__init__()
        self.norm, self.experts = nn.LayerNorm(32), Experts(transposed=transposed)

    def forward(self, x):
        return x + self.experts(self.norm(x))


@pytest.mark.parametrize("transposed", [False, True])
def test_stacked_experts_fans_sides_and_gated_gain(transposed):
    p = initscope.plan(MoEBlock(transposed), example_input=torch.randn(8, 32))
    up, down = p.row("experts.gate_up_proj"), p.row("experts.down_proj")
    assert (up.fan_in, up.fan_out, down.fan_in, down.fan_out) == (32, 96, 48, 32)  # one expert's matrix
    assert up.gain == 1.0 and up.residual == 1.0  # reads the LayerNorm; the entry is not scaled
    # E[silu(z)^2] at q = 1 is 0.3558 (initscope.moments, tested against Monte Carlo there):
    # gain 1/sqrt(0.3558) = 1.677, the SwiGLU figure.
    assert down.gain == pytest.approx(1.677, abs=1e-3) and "silu" in down.reason.lower()
    assert p.row("experts.gate_up_proj_bias").distribution == "zeros"


def test_stacked_experts_keep_a_unit_signal():
    torch.manual_seed(0)
    model, x = Experts(hidden=64, inner=256), torch.randn(512, 64)
    initscope.initialize(model, example_input=x)
    with torch.no_grad():
        y = model(x)
    # raw input (gain 1) into the entry, the gated gain 1.677 into the exit: E[y^2] = 1 in theory;
    # 64 x 256 weights per matrix and 512 tokens put the estimate within a few percent.
    assert y.pow(2).mean().item() == pytest.approx(1.0, rel=0.15)
