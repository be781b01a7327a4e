"""Tests of initscope.fans: closed forms, measured variances, bad input.

The statistical tests draw weights N(0, 2/fan) block by block with an explicit
generator, push ReLU-distributed inputs forward (or ReLU'-masked gradients
backward) and check that the second moment comes out at 1, as He et al. (2015)
derive. Modules are built on the meta device: fan() reads shapes only, and the
drawn weights are passed in with torch.func.functional_call.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from initscope.errors import LayerError, ShapeError, UnknownOptionError
from initscope.fans import Fan, FanBlock, fan, fan_value, tensor_fans

META = torch.device("meta")


def _rows(f: Fan) -> list[tuple]:
    return [(b.name, b.rows.start, b.rows.stop, b.fan_in, b.fan_out) for b in f.blocks]


# --- closed forms ----------------------------------------------------------------------
CLOSED_FORMS = [
    # (id, module, param, [(block, start, stop, fan_in, fan_out)])
    ("linear", nn.Linear(3, 5), "weight", [("weight", 0, 5, 3, 5)]),
    ("linear-bias", nn.Linear(3, 5), "bias", [("bias", 0, 5, 3, 5)]),
    ("conv-groups", nn.Conv2d(6, 12, (3, 5), groups=3), "weight", [("weight", 0, 12, 2 * 15, 4 * 15)]),
    ("conv-depthwise", nn.Conv2d(8, 8, 3, groups=8), "weight", [("weight", 0, 8, 9, 9)]),
    ("conv-dilation", nn.Conv2d(4, 6, 3, dilation=3), "weight", [("weight", 0, 6, 36, 54)]),
    ("conv-stride", nn.Conv2d(4, 6, 3, stride=(2, 3)), "weight", [("weight", 0, 6, 36, 54 / 6)]),
    ("conv1d", nn.Conv1d(4, 6, 5, stride=2), "weight", [("weight", 0, 6, 20, 15)]),
    ("conv3d", nn.Conv3d(2, 4, 3, stride=2, groups=2), "weight", [("weight", 0, 4, 27, 2 * 27 / 8)]),
    ("convT2d", nn.ConvTranspose2d(6, 4, 3, stride=2, groups=2), "weight", [("weight", 0, 6, 3 * 9 / 4, 2 * 9)]),
    # A ConvTranspose bias has out_channels rows while its weight has in_channels.
    ("convT2d-bias", nn.ConvTranspose2d(6, 4, 3, stride=2, groups=2), "bias", [("bias", 0, 4, 6.75, 18)]),
    ("convT1d", nn.ConvTranspose1d(4, 6, 4, stride=2), "weight", [("weight", 0, 4, 8, 24)]),
    ("convT3d", nn.ConvTranspose3d(2, 3, 2), "weight", [("weight", 0, 2, 16, 24)]),
    ("embedding", nn.Embedding(100, 16), "weight", [("weight", 0, 100, 1, 16)]),
    ("bilinear", nn.Bilinear(3, 12, 5), "weight", [("weight", 0, 5, 36, 5 * 6)]),
    ("mha-packed", nn.MultiheadAttention(8, 2), "in_proj_weight",
     [("q", 0, 8, 8, 8), ("k", 8, 16, 8, 8), ("v", 16, 24, 8, 8)]),
    ("mha-packed-bias", nn.MultiheadAttention(8, 2), "in_proj_bias",
     [("q", 0, 8, 8, 8), ("k", 8, 16, 8, 8), ("v", 16, 24, 8, 8)]),
    ("mha-q", nn.MultiheadAttention(8, 2, kdim=3, vdim=5), "q_proj_weight", [("q_proj_weight", 0, 8, 8, 8)]),
    ("mha-k", nn.MultiheadAttention(8, 2, kdim=3, vdim=5), "k_proj_weight", [("k_proj_weight", 0, 8, 3, 8)]),
    ("mha-v", nn.MultiheadAttention(8, 2, kdim=3, vdim=5), "v_proj_weight", [("v_proj_weight", 0, 8, 5, 8)]),
    ("mha-unpacked-bias", nn.MultiheadAttention(8, 2, kdim=3, vdim=5), "in_proj_bias",
     [("q", 0, 8, 8, 8), ("k", 8, 16, 3, 8), ("v", 16, 24, 5, 8)]),
    ("mha-out", nn.MultiheadAttention(8, 2), "out_proj.weight", [("weight", 0, 8, 8, 8)]),
    # Layer 1 of a bidirectional LSTM with projection reads 2 * proj_size = 6 inputs.
    ("lstm-ih-l1-reverse", nn.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3), "weight_ih_l1_reverse",
     [("i", 0, 8, 6, 8), ("f", 8, 16, 6, 8), ("g", 16, 24, 6, 8), ("o", 24, 32, 6, 8)]),
    ("lstm-hh-proj", nn.LSTM(5, 8, proj_size=3), "weight_hh_l0",
     [("i", 0, 8, 3, 8), ("f", 8, 16, 3, 8), ("g", 16, 24, 3, 8), ("o", 24, 32, 3, 8)]),
    ("lstm-hr", nn.LSTM(5, 8, num_layers=2, proj_size=3), "weight_hr_l1", [("weight_hr_l1", 0, 3, 8, 3)]),
    ("gru-ih-l1", nn.GRU(5, 8, num_layers=2, bidirectional=True), "weight_ih_l1",
     [("r", 0, 8, 16, 8), ("z", 8, 16, 16, 8), ("n", 16, 24, 16, 8)]),
    ("gru-bias", nn.GRU(5, 8, bidirectional=True), "bias_hh_l0_reverse",
     [("r", 0, 8, 8, 8), ("z", 8, 16, 8, 8), ("n", 16, 24, 8, 8)]),
    ("rnn", nn.RNN(5, 8, nonlinearity="relu"), "weight_ih_l0", [("weight_ih_l0", 0, 8, 5, 8)]),
    ("lstm-cell", nn.LSTMCell(5, 8), "weight_hh",
     [("i", 0, 8, 8, 8), ("f", 8, 16, 8, 8), ("g", 16, 24, 8, 8), ("o", 24, 32, 8, 8)]),
    ("gru-cell", nn.GRUCell(5, 8), "weight_ih", [("r", 0, 8, 5, 8), ("z", 8, 16, 5, 8), ("n", 16, 24, 5, 8)]),
    ("rnn-cell-bias", nn.RNNCell(5, 8), "bias_ih", [("bias_ih", 0, 8, 5, 8)]),
    ("batchnorm", nn.BatchNorm2d(4), "weight", [("weight", 0, 4, 1, 1)]),
    ("layernorm", nn.LayerNorm((3, 4)), "bias", [("bias", 0, 3, 1, 1)]),
    ("groupnorm", nn.GroupNorm(2, 4), "weight", [("weight", 0, 4, 1, 1)]),
    ("instancenorm", nn.InstanceNorm1d(4, affine=True), "weight", [("weight", 0, 4, 1, 1)]),
    ("rmsnorm", nn.RMSNorm(4), "weight", [("weight", 0, 4, 1, 1)]),
    ("prelu", nn.PReLU(3), "weight", [("weight", 0, 3, 1, 1)]),
]


@pytest.mark.parametrize("module, param, expected", [c[1:] for c in CLOSED_FORMS], ids=[c[0] for c in CLOSED_FORMS])
def test_closed_form(module: nn.Module, param: str, expected: list[tuple]) -> None:
    f = fan(module, param)
    assert _rows(f) == [(n, a, b, pytest.approx(i), pytest.approx(o)) for n, a, b, i, o in expected]
    assert not f.fallback and f.note
    assert f.shape == tuple(module.get_parameter(param).shape)


@pytest.mark.parametrize("module", [nn.LSTM(5, 8, num_layers=3, bidirectional=True, proj_size=4),
                                    nn.GRU(5, 8, num_layers=2), nn.MultiheadAttention(8, 2, kdim=3, vdim=5),
                                    nn.TransformerEncoderLayer(8, 2, 16), nn.ConvTranspose2d(6, 4, 3, groups=2)],
                         ids=["lstm", "gru", "mha", "transformer", "convT"])
def test_every_parameter_has_blocks_that_tile_its_rows(module: nn.Module) -> None:
    for name, p in module.named_parameters():
        f = fan(module, name)
        assert f.blocks[0].rows.start == 0 and f.blocks[-1].rows.stop == p.shape[0], name
        assert all(a.rows.stop == b.rows.start for a, b in zip(f.blocks, f.blocks[1:])), name


def test_rnn_columns_match_the_matrix() -> None:
    """The gate fan_in computed from the RNN's attributes is the matrix's column count."""
    lstm = nn.LSTM(5, 8, num_layers=3, bidirectional=True, proj_size=4, device=META)
    for name, p in lstm.named_parameters():
        if name.startswith("weight_"):
            assert {b.fan_in for b in fan(lstm, name).blocks} == {p.shape[1]}, name


def test_plain_layers_agree_with_torch_convention() -> None:
    for module in (nn.Linear(3, 5), nn.Conv2d(4, 6, 3), nn.Conv1d(2, 7, 5, dilation=2)):
        f = fan(module)
        assert (f.fan_in, f.fan_out) == tensor_fans(module.weight)


def test_meta_device_gives_same_fans() -> None:
    for make in (lambda d: nn.Conv2d(8, 16, 3, stride=2, groups=4, device=d),
                 lambda d: nn.LSTM(5, 8, num_layers=2, device=d)):
        cpu, meta = make("cpu"), make(META)
        for name, _ in cpu.named_parameters():
            assert fan(meta, name) == fan(cpu, name)


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(4, 3, 2, device=META))
        self.bias = nn.Parameter(torch.empty(4, device=META))
        self.scale = nn.Parameter(torch.empty(4, device=META))


def test_fallback_for_unknown_layer_and_unknown_param() -> None:
    f = fan(Scaled())
    assert f.fallback and (f.fan_in, f.fan_out) == (6.0, 8.0) and "unknown layer type Scaled" in f.note
    bias = fan(Scaled(), "bias")
    assert bias.fallback and (bias.fan_in, bias.blocks[0].rows) == (6.0, slice(0, 4))
    bias_k = fan(nn.MultiheadAttention(8, 2, add_bias_kv=True), "bias_k")
    assert bias_k.fallback and "no rule for 'bias_k'" in bias_k.note


def test_subclass_uses_its_base_rule_and_notes_show_numbers() -> None:
    out_proj = fan(nn.MultiheadAttention(8, 2, device=META), "out_proj.weight")
    assert out_proj.layer_type == "NonDynamicallyQuantizableLinear" and not out_proj.fallback
    note = fan(nn.Conv2d(32, 32, 3, stride=2, groups=32, device=META)).note
    assert note == "fan_in = in/groups*prod(k) = 9, fan_out = out/groups*prod(k)/prod(stride) = 2.25"


def test_fallback_on_1d_parameter_names_it() -> None:
    with pytest.raises(ShapeError, match=r"`scale` \(Scaled\).*\(4,\).*fan\(module"):
        fan(Scaled(), "scale")


def test_fan_properties_refuse_packed_parameters() -> None:
    f = fan(nn.LSTM(5, 8), "weight_ih_l0")
    with pytest.raises(ShapeError, match=r"`weight_ih_l0` \(LSTM\) packs 4 blocks \(i, f, g, o\).*\.blocks"):
        _ = f.fan_in


def test_lazy_parameter_is_refused() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # older torch warns that lazy modules are new
        lazy = nn.LazyLinear(4)
    with pytest.raises(LayerError, match="not materialized.*forward"):
        fan(lazy)


def test_fan_value_modes() -> None:
    assert [fan_value(4, 9, m) for m in ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")] == [4, 9, 6.5, 6]
    assert FanBlock("w", slice(0, 1), 4.0, 9.0).value("fan_geo_avg") == 6.0


# --- bad input -------------------------------------------------------------------------
def re_tuple(shape: tuple) -> str:
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("shape", [(5,), (), torch.Size([3])])
def test_tensor_fans_needs_two_dims(shape: tuple) -> None:
    expected = rf"at least 2 dimensions, got shape {re_tuple(shape)}.*call fan\(module, name\)"
    with pytest.raises(ShapeError, match=expected):
        tensor_fans(shape)
    with pytest.raises(ShapeError):
        tensor_fans(torch.empty(shape, device=META))


def test_tensor_fans_accepts_tensors_and_shapes() -> None:
    meta = torch.empty(16, 8, 3, 3, device=META)
    assert tensor_fans(meta) == tensor_fans(torch.Size([16, 8, 3, 3])) == tensor_fans([16, 8, 3, 3]) == (72, 144)


def test_unknown_mode_lists_choices() -> None:
    with pytest.raises(UnknownOptionError, match=r"unknown fan mode 'fan_max'; known: 'fan_in', 'fan_out', "
                                                 r"'fan_avg', 'fan_geo_avg'; pass one of these"):
        fan_value(1, 2, "fan_max")  # type: ignore[arg-type]


@pytest.mark.parametrize("module, param, known", [
    (nn.Linear(2, 3), "wieght", "weight, bias"),
    (nn.MultiheadAttention(4, 1), "out_proj.wieght", "in_proj_weight, in_proj_bias, out_proj.weight"),
    (nn.Linear(2, 3), "nothere.weight", "weight, bias"),
])
def test_missing_parameter_names_layer_param_and_choices(module: nn.Module, param: str, known: str) -> None:
    with pytest.raises(LayerError, match=rf"{type(module).__name__} has no parameter '{param}'; "
                                         rf"its parameters: {known}.*pass one of these"):
        fan(module, param)


# --- statistics ------------------------------------------------------------------------
# Tolerances. Each check accepts 5 standard deviations of the measured second moment
# (a false failure has probability below 1e-6) and requires that to be below MAX_TOL,
# so that it can see the errors it is for: the smallest tested, a stride of 2 or a
# packed block, moves the result by a factor of 2 or more. Three sources of spread:
# 1. The weight draw, which no batch averages away. Forward: h = ReLU(z) has
#    E[h^2] = 1/2 but also a mean E[h] = 1/sqrt(2 pi), so for one output unit with
#    weight row w ~ N(0, (2/n) I) the second moment over inputs is w^T S w, with
#    S = E[h h^T] = A I + B 11^T, A = Var[h] = 1/2 - 1/(2 pi), B = E[h]^2 = 1/(2 pi).
#    Over weight draws it has mean (2/n) tr S = 1 and variance
#    2 (2/n)^2 tr(S^2) = 8 B^2 + 8 (A^2 + 2 A B) / n. The mean alone gives a relative
#    sd of sqrt(8) B = 0.45 per unit at any width: only averaging over U units (weight
#    rows, output channels) brings it down, by 1/U in variance. Backward: g has mean 0,
#    so an input unit's gradient second moment is (1/2) sum_k w_kj^2, a chi-square with
#    fan_out degrees of freedom: relative variance 2 / fan_out, over U input units.
# 2. The standard error of the mean of the measured squares, taken from the data
#    (var/mean^2/n): it covers their kurtosis and the zero positions that strided
#    layers leave (stride 2 with dilation 2 feeds only a quarter of the positions).
# 3. The norm of the drawn input (or upstream gradient), shared by every unit it
#    feeds: Var[h^2]/E[h^2]^2 = (3/2 - 1/4)/(1/4) = 5 per drawn entry, the same for g.
# Checked over 12 seeds of every check here: the spread across seeds is 0.5-1.5 times
# this prediction (12 seeds alone leave it +-0.2 uncertain), and the largest deviation
# seen was 3.1 predicted sd.
A, B = 0.5 - 1 / (2 * math.pi), 1 / (2 * math.pi)
MAX_TOL = 0.12


def forward_weight_var(fan_in: float, units: int) -> float:
    return (8 * B * B + 8 * (A * A + 2 * A * B) / fan_in) / units


def backward_weight_var(fan_out: float, units: int) -> float:
    return 2 / (fan_out * units)


def tolerance(weight_var: float, measured: torch.Tensor, n_drawn: int) -> float:
    """5 sd of the mean of measured**2 (see the comment above)."""
    squares = measured.detach().double().square()
    sem = (squares.var() / squares.mean() ** 2 / squares.numel()).item()
    return 5 * math.sqrt(weight_var + sem + 5 / n_drawn)


def interior(source: int, k: int, s: int, d: int = 1) -> slice:
    """Positions p = i*s + j*d (i < source, j < k) that receive all their taps, over whole
    stride periods, so averages over them see every phase equally often."""
    start = (k - 1) * d
    return slice(start, start + ((source - 1) * s - start + 1) // s * s)


Run = Callable[[nn.Module, str, torch.Tensor, torch.Tensor], torch.Tensor]


def call(module: nn.Module, param: str, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return functional_call(module, {param: w}, (x,))


def matmul(module: nn.Module, param: str, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w)  # a gate's (or q/k/v's) pre-activation: x @ W_block.T


@dataclass(frozen=True)
class Case:
    module: nn.Module  # on the meta device
    param: str
    x_shape: tuple[int, ...]
    run: Run = call
    out_crop: tuple[slice, ...] = ()  # output positions with all taps (forward)
    in_crop: tuple[slice, ...] = ()  # input positions with all taps (backward)


def _meta(factory: Callable[..., nn.Module], *args: object, **kw: object) -> nn.Module:
    return factory(*args, **kw, device=META)


CASES = {
    "linear": Case(_meta(nn.Linear, 256, 2048, bias=False), "weight", (128, 256)),
    "conv2d": Case(_meta(nn.Conv2d, 64, 1024, 3, bias=False), "weight", (4, 64, 10, 10),
                   in_crop=(interior(8, 3, 1),) * 2),
    "conv2d-groups-stride-dilation": Case(
        _meta(nn.Conv2d, 64, 1024, 3, stride=2, dilation=2, groups=4, bias=False), "weight", (8, 64, 19, 19),
        in_crop=(interior(8, 3, 2, 2),) * 2),
    "conv2d-depthwise-stride": Case(_meta(nn.Conv2d, 1024, 2048, 3, stride=2, groups=1024, bias=False),
                                    "weight", (2, 1024, 17, 17), in_crop=(interior(8, 3, 2),) * 2),
    "conv1d-stride3": Case(_meta(nn.Conv1d, 128, 2048, 5, stride=3, bias=False), "weight", (4, 128, 50),
                           in_crop=(interior(16, 5, 3),)),
    "conv3d-stride": Case(_meta(nn.Conv3d, 32, 1024, 3, stride=2, bias=False), "weight", (4, 32, 13, 13, 13),
                          in_crop=(interior(6, 3, 2),) * 3),
    "convT2d-stride": Case(_meta(nn.ConvTranspose2d, 256, 1024, 3, stride=2, bias=False), "weight",
                           (2, 256, 6, 6), out_crop=(interior(6, 3, 2),) * 2),
    # k=4, stride 3, dilation 2: output phases receive 2, 1 and 1 taps; fan_in averages them.
    "convT1d-groups-dilation": Case(
        _meta(nn.ConvTranspose1d, 256, 2048, 4, stride=3, dilation=2, groups=2, bias=False), "weight",
        (4, 256, 20), out_crop=(interior(20, 4, 3, 2),)),
    "convT3d": Case(_meta(nn.ConvTranspose3d, 64, 1024, 2, stride=2, bias=False), "weight", (2, 64, 5, 5, 5),
                    out_crop=(interior(5, 2, 2),) * 3),
    "mha-packed": Case(_meta(nn.MultiheadAttention, 1024, 8), "in_proj_weight", (128, 1024), matmul),
    "mha-k": Case(_meta(nn.MultiheadAttention, 1024, 8, kdim=256, vdim=128), "k_proj_weight", (128, 256), matmul),
    "mha-v": Case(_meta(nn.MultiheadAttention, 1024, 8, kdim=256, vdim=128), "v_proj_weight", (128, 128), matmul),
    "lstm-ih": Case(_meta(nn.LSTM, 128, 1024), "weight_ih_l0", (128, 128), matmul),
    "lstm-hh-proj": Case(_meta(nn.LSTM, 128, 1024, proj_size=256), "weight_hh_l0", (128, 256), matmul),
    "lstm-hr": Case(_meta(nn.LSTM, 128, 2048, proj_size=1024), "weight_hr_l0", (128, 2048), matmul),
    "gru-bidir-l1": Case(_meta(nn.GRU, 64, 1024, num_layers=2, bidirectional=True), "weight_ih_l1_reverse",
                         (64, 2048), matmul),
    "rnn": Case(_meta(nn.RNN, 128, 2048, nonlinearity="relu"), "weight_ih_l0", (128, 128), matmul),
    "lstm-cell": Case(_meta(nn.LSTMCell, 128, 1024), "weight_hh", (128, 1024), matmul),
    "gru-cell": Case(_meta(nn.GRUCell, 256, 1024), "weight_ih", (128, 256), matmul),
    "rnn-cell": Case(_meta(nn.RNNCell, 256, 2048), "weight_ih", (128, 256), matmul),
}


Variance = Callable[[FanBlock], float]  # the weight variance to draw for a block
Measured = tuple[FanBlock, float, float]  # (block, measured second moment, tolerance)


def draw(f: Fan, var: Variance, gen: torch.Generator) -> torch.Tensor:
    """Weights N(0, var(block)) drawn block by block."""
    w = torch.randn(f.shape, generator=gen)
    for b in f.blocks:
        w[b.rows] *= math.sqrt(var(b))
    return w


def block_outputs(f: Fan, out: torch.Tensor) -> list[tuple[FanBlock, torch.Tensor]]:
    """Each block's output channels (dim 1); a single block owns them all (for a
    ConvTranspose its rows are input channels)."""
    return [(b, out if len(f.blocks) == 1 else out[:, b.rows]) for b in f.blocks]


def crop(t: torch.Tensor, spatial: tuple[slice, ...]) -> torch.Tensor:
    return t[(slice(None), slice(None), *spatial)]


def forward_moments(case: Case, var: Variance, seed: int) -> list[Measured]:
    """Per block: (block, E[y^2] at interior positions, tolerance) for x = ReLU(z)."""
    f, gen = fan(case.module, case.param), torch.Generator().manual_seed(seed)
    w = draw(f, var, gen)
    x = torch.relu(torch.randn(case.x_shape, generator=gen))
    out = case.run(case.module, case.param, w, x)
    found = []
    for b, part in block_outputs(f, out):
        part = crop(part, case.out_crop)
        tol = tolerance(forward_weight_var(b.fan_in, part.shape[1]), part, x.numel())
        found.append((b, part.square().mean().item(), tol))
    return found


def backward_moments(case: Case, var: Variance, seed: int) -> list[Measured]:
    """Per block: (block, E[(dL/dx)^2] at interior positions, tolerance) for
    upstream g = N(0,1) * Bernoulli(1/2) on that block's outputs only."""
    f, gen = fan(case.module, case.param), torch.Generator().manual_seed(seed)
    w = draw(f, var, gen)
    x = torch.randn(case.x_shape, generator=gen, requires_grad=True)
    out = case.run(case.module, case.param, w, x)
    found = []
    for b, part in block_outputs(f, out):
        g = torch.zeros_like(out)
        mask = torch.rand(part.shape, generator=gen) < 0.5
        part_g = torch.randn(part.shape, generator=gen) * mask
        (g if len(f.blocks) == 1 else g[:, b.rows]).copy_(part_g)
        (grad,) = torch.autograd.grad(out, x, g, retain_graph=True)
        grad = crop(grad, case.in_crop)
        tol = tolerance(backward_weight_var(b.fan_out, grad.shape[1]), grad, part_g.numel())
        found.append((b, grad.square().mean().item(), tol))
    return found


def he_fan_in(b: FanBlock) -> float:
    return 2 / b.fan_in


def he_fan_out(b: FanBlock) -> float:
    return 2 / b.fan_out


@pytest.mark.parametrize("name", CASES)
def test_forward_second_moment_is_one(name: str) -> None:
    for b, moment, tol in forward_moments(CASES[name], he_fan_in, seed=0):
        assert tol < MAX_TOL, (b.name, tol)
        assert abs(moment - 1) < tol, (b.name, moment, tol)


@pytest.mark.parametrize("name", CASES)
def test_backward_second_moment_is_one(name: str) -> None:
    for b, moment, tol in backward_moments(CASES[name], he_fan_out, seed=1):
        assert tol < MAX_TOL, (b.name, tol)
        assert abs(moment - 1) < tol, (b.name, moment, tol)


# torch's shape convention, measured: with N(0, 2/torch_fan) the second moment is
# our_fan / torch_fan instead of 1. Ratios written out from the closed forms.
TORCH_RATIOS = [
    # depthwise (groups 1024) and stride 2x2: torch fan_out = 2048*9, ours = 2*9/4
    ("conv2d-depthwise-stride", "backward", 4.5 / (2048 * 9)),
    # stride 3: torch fan_out = 2048*5, ours = 2048*5/3
    ("conv1d-stride3", "backward", 1 / 3),
    # groups 4, stride 2x2: torch fan_out = 1024*9, ours = 256*9/4
    ("conv2d-groups-stride-dilation", "backward", 1 / 16),
    # transposed layout: torch fan_in = out*9 = 1024*9, ours = 256*9/4
    ("convT2d-stride", "forward", 576 / (1024 * 9)),
    # transposed layout: torch fan_out = in*9 = 256*9, ours = 1024*9 (gradients x4)
    ("convT2d-stride", "backward", 4.0),
    # packed gates: torch fan_out = 4*1024 for each gate, ours = 1024
    ("lstm-ih", "backward", 1 / 4),
]


@pytest.mark.parametrize("name, direction, ratio", TORCH_RATIOS, ids=[f"{c}-{d}" for c, d, _ in TORCH_RATIOS])
def test_torch_shape_fans_are_off_by_the_predicted_ratio(name: str, direction: str, ratio: float) -> None:
    case = CASES[name]
    torch_in, torch_out = tensor_fans(fan(case.module, case.param).shape)
    if direction == "forward":
        found = forward_moments(case, lambda b: 2 / torch_in, seed=2)
    else:
        found = backward_moments(case, lambda b: 2 / torch_out, seed=3)
    for b, moment, tol in found:
        assert abs(moment / ratio - 1) < tol, (b.name, moment, ratio)


def test_embedding_forward_has_unit_variance_at_gain_one() -> None:
    """A lookup's input is an index: no producer activation, so the gain is 1 and
    std = 1/sqrt(fan_in) = 1 gives E[y^2] = 1. torch's shape convention would read
    fan_in = embedding_dim and give E[y^2] = 1/embedding_dim."""
    emb = nn.Embedding(4096, 256, device=META)
    f, gen = fan(emb), torch.Generator().manual_seed(4)
    w = draw(f, lambda b: 1 / b.fan_in, gen)
    idx = torch.randint(0, 4096, (2048,), generator=gen)
    out = functional_call(emb, {"weight": w}, (idx,))
    # A lookup adds no input noise: the only spread is the weight draw. Each row's mean
    # square is chi-square(256)/256, relative variance 2/256, and row r is counted c_r
    # times among the N lookups: variance (2/256) * sum c_r^2 / N^2 (5 sd is about 0.012).
    counts = torch.bincount(idx).double()
    tol = 5 * math.sqrt(2 / 256 * (counts.square().sum() / idx.numel() ** 2).item())
    assert abs(out.square().mean().item() - 1) < tol < MAX_TOL
    assert tensor_fans(w) == (256, 4096)


def test_embedding_backward_through_one_hot_has_unit_variance() -> None:
    """A lookup equals one_hot(i) @ W; the gradient w.r.t. the one-hot coordinates
    sums over embedding_dim outputs, which is why fan_out = embedding_dim."""
    emb = nn.Embedding(512, 1024, device=META)
    f, gen = fan(emb), torch.Generator().manual_seed(5)
    w = draw(f, he_fan_out, gen)
    idx = torch.randint(0, 512, (256,), generator=gen)
    one_hot = F.one_hot(idx, 512).float().requires_grad_()
    out = one_hot @ w
    assert torch.equal(out, F.embedding(idx, w))
    g = torch.randn(out.shape, generator=gen) * (torch.rand(out.shape, generator=gen) < 0.5)
    out.backward(g)
    tol = tolerance(backward_weight_var(f.fan_out, 512), one_hot.grad, g.numel())
    assert abs(one_hot.grad.square().mean().item() - 1) < tol < MAX_TOL


def test_bilinear_forward_and_backward() -> None:
    """y = x1^T W x2 with x1 = ReLU(z) (gain sqrt 2) and raw x2 (gain 1): the forward
    gain is the product, sqrt 2, over fan_in = in1*in2. Backward, dL/dx1 sums
    out*in2 terms times E[x2^2] = 1; with in1 == in2 that is fan_out = out*sqrt(in1*in2)."""
    bil = nn.Bilinear(64, 64, 256, bias=False, device=META)
    f, gen = fan(bil), torch.Generator().manual_seed(6)
    x1 = torch.relu(torch.randn(1024, 64, generator=gen)).requires_grad_()
    x2 = torch.randn(1024, 64, generator=gen)
    out = functional_call(bil, {"weight": draw(f, he_fan_in, gen)}, (x1, x2))
    # Given W, E[y_k^2] = sum_j w_kj^T S w_kj over the in2 columns (x2 has mean 0, so
    # columns do not mix): 64 independent quadratic forms of size in1 per unit, hence
    # forward_weight_var(in1, U * in2). Two drawn inputs: 5/n1 + 2/n2 < 5/(n/2).
    tol = tolerance(forward_weight_var(64, 256 * 64), out, x1.numel() // 2)
    assert abs(out.square().mean().item() - 1) < tol < MAX_TOL
    out = functional_call(bil, {"weight": draw(f, he_fan_out, gen)}, (x1, x2))
    g = torch.randn(out.shape, generator=gen) * (torch.rand(out.shape, generator=gen) < 0.5)
    (grad,) = torch.autograd.grad(out, x1, g)
    # Given W, E[(dL/dx1_i)^2] = (1/2) sum_kj w_kij^2: chi-square, out*in2 = fan_out terms.
    tol = tolerance(backward_weight_var(f.fan_out, 64), grad, g.numel() // 2)
    assert abs(grad.square().mean().item() - 1) < tol < MAX_TOL
