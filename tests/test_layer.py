"""init_layer_: block-by-block init with layout-aware fans, its record, and bad input."""
import json
import math

import pytest
import torch
from torch import nn

from initscope.errors import LayerError, UnknownOptionError
from initscope.layer import init_layer_


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_mha_in_proj_is_three_blocks():
    mha = nn.MultiheadAttention(64, 4)
    rec = init_layer_(mha, generator=gen())
    blocks = [b for b in rec.blocks if b.param == "in_proj_weight"]
    assert [b.block for b in blocks] == ["q", "k", "v"]
    assert all(b.std == pytest.approx(math.sqrt(2 / 64), rel=1e-15) for b in blocks)
    assert torch.count_nonzero(mha.in_proj_bias) == 0


def test_lstm_gates_and_biases():
    lstm = nn.LSTM(8, 16, num_layers=2)
    rec = init_layer_(lstm, "xavier", generator=gen())
    gates = [b for b in rec.blocks if b.param == "weight_ih_l1"]
    assert [b.block for b in gates] == ["i", "f", "g", "o"]
    # each gate is a 16 x 16 matrix: xavier std sqrt(2 / (16 + 16))
    assert all(b.std == pytest.approx(math.sqrt(2 / 32), rel=1e-15) for b in gates)
    assert all(torch.count_nonzero(getattr(lstm, f"bias_{k}_l{i}")) == 0 for k in ("ih", "hh") for i in (0, 1))


def test_conv_transpose_uses_stride_aware_fan_and_keeps_unit_variance():
    layer = nn.ConvTranspose2d(64, 64, 4, stride=2, padding=1)
    rec = init_layer_(layer, "kaiming", "relu", generator=gen())
    w = rec.blocks[0]
    assert (w.fan_in, w.fan_out) == (64 * 16 / 4, 64 * 16)  # torch's shape rule would give fan_in 1024
    x = torch.relu(torch.randn(8, 64, 16, 16, generator=gen(1)))
    y = layer(x)[:, :, 2:-2, 2:-2]  # interior: no padding edge
    # E[h^2] = 1/2 for h = relu(z); fan_in 256 with std sqrt(2/256) gives E[y^2] = 1. The spread
    # comes from the single weight draw: over 64 units x 256 taps the relative sd of the mean
    # square is about sqrt(2/(64*256)) ~ 1.1% (plus batch noise ~0.5%); 8% is a wide margin.
    assert y.pow(2).mean().item() == pytest.approx(1.0, rel=0.08)


def test_norm_layers_get_one_and_zero():
    bn = nn.BatchNorm2d(4)
    nn.init.normal_(bn.weight)
    rec = init_layer_(bn)
    assert torch.equal(bn.weight, torch.ones(4)) and torch.equal(bn.bias, torch.zeros(4))
    assert [b.distribution for b in rec.blocks] == ["ones", "zeros"]


def test_delta_orthogonal_scheme_on_a_conv():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    rec = init_layer_(conv, "delta_orthogonal", generator=gen())
    assert rec.blocks[0].distribution == "delta_orthogonal"
    centre = conv.weight[:, :, 1, 1]
    torch.testing.assert_close(centre.T @ centre, torch.eye(8) * (rec.blocks[0].std ** 2 * 16), rtol=1e-5, atol=1e-6)


def test_bias_keep_and_meta():
    lin = nn.Linear(4, 4)
    before = lin.bias.detach().clone()
    init_layer_(lin, bias="keep", generator=gen())
    assert torch.equal(lin.bias, before)
    meta = nn.Linear(4, 4, device="meta")
    assert init_layer_(meta).blocks[0].std == pytest.approx(math.sqrt(2 / 4))


def test_record_is_json_ready_and_readable():
    rec = init_layer_(nn.GRU(5, 7), "orthogonal", generator=gen())
    data = json.loads(json.dumps(rec.to_dict()))
    assert data["layer_type"] == "GRU" and len(data["blocks"]) == 3 + 3 + 2
    assert "weight_ih_l0[r] orthogonal" in repr(rec)


def test_bad_input():
    with pytest.raises(UnknownOptionError, match="unknown scheme 'he'.*'kaiming'"):
        init_layer_(nn.Linear(2, 2), "he")
    with pytest.raises(UnknownOptionError, match="unknown mode 'avg'"):
        init_layer_(nn.Linear(2, 2), mode="avg")
    with pytest.raises(UnknownOptionError, match="unknown distribution 'gaussian'"):
        init_layer_(nn.Linear(2, 2), distribution="gaussian")
    with pytest.raises(LayerError, match="needs a convolution; got Linear.*'orthogonal'"):
        init_layer_(nn.Linear(2, 2), "delta_orthogonal")


class Scaled(nn.Module):
    """A layer with a 1-D parameter no rule knows."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3))
        self.scale = nn.Parameter(torch.full((4,), 3.0))

    def forward(self, x):
        return (x @ self.weight.T) * self.scale


def test_unknown_one_dimensional_parameter_is_left_and_listed():
    layer = Scaled()
    rec = init_layer_(layer, generator=gen())
    assert torch.equal(layer.scale, torch.full((4,), 3.0))
    scale = [b for b in rec.blocks if b.param == "scale"][0]
    assert scale.distribution == "unchanged" and "left as it was" in scale.note
    assert [b for b in rec.blocks if b.param == "weight"][0].fan_in == 3  # torch's fallback fan


def test_prelu_slope_is_not_a_norm_scale():
    act = nn.PReLU(init=0.25)
    rec = init_layer_(act)
    assert torch.equal(act.weight, torch.full((1,), 0.25)) and rec.blocks[0].distribution == "unchanged"
