"""initscope.init: bitwise oracle against torch.nn.init, closed-form stds, statistical checks
(tolerances justified inline), a contract over every initializer, and bad input."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import initscope.init as I
from initscope.errors import ShapeError, UnknownOptionError
from initscope.moments import moments

SHAPES = [(64, 32), (16, 8, 3, 3), (8, 4, 5), (5, 40)]


def gen(seed=7):
    return torch.Generator().manual_seed(seed)


def same(ours, theirs, shape, dtype=torch.float32):
    a, b = torch.empty(shape, dtype=dtype), torch.empty(shape, dtype=dtype)
    ours(a)
    theirs(b)
    return torch.equal(a, b)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize("nl,a", [("leaky_relu", 0), ("leaky_relu", math.sqrt(5)), ("relu", 0), ("tanh", 0),
                                  ("selu", 0), ("linear", 0), ("sigmoid", 0)])
def test_kaiming_bitwise_torch(shape, mode, nl, a):
    for ours, theirs in [(I.kaiming_normal_, nn.init.kaiming_normal_), (I.kaiming_uniform_, nn.init.kaiming_uniform_)]:
        assert same(lambda t: ours(t, a, mode, nl, gen(), convention="torch"),
                    lambda t: theirs(t, a, mode, nl, gen()), shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("g", [1.0, 0.5, math.sqrt(2)])
def test_xavier_orthogonal_bitwise_torch(shape, g):
    assert same(lambda t: I.xavier_normal_(t, g, gen()), lambda t: nn.init.xavier_normal_(t, g, gen()), shape)
    assert same(lambda t: I.xavier_uniform_(t, g, gen()), lambda t: nn.init.xavier_uniform_(t, g, gen()), shape)
    assert same(lambda t: I.orthogonal_(t, g, gen()), lambda t: nn.init.orthogonal_(t, g, gen()), shape)
    assert same(lambda t: I.orthogonal_(t, g, gen()), lambda t: nn.init.orthogonal_(t, g, gen()), shape,
                torch.float64)


def test_trunc_zeros_ones_bitwise_torch():
    assert same(lambda t: I.trunc_normal_(t, 0.1, 0.02, -0.03, 0.2, gen()),
                lambda t: nn.init.trunc_normal_(t, 0.1, 0.02, -0.03, 0.2, gen()), (30, 30))
    assert same(I.zeros_, nn.init.zeros_, (3, 4)) and same(I.ones_, nn.init.ones_, (3, 4))


def test_variance_convention_std_is_the_derived_gain():
    # For ReLU the derivation gives exactly torch's sqrt(2/fan): the same bits.
    assert same(lambda t: I.kaiming_normal_(t, nonlinearity="relu", generator=gen()),
                lambda t: nn.init.kaiming_normal_(t, nonlinearity="relu", generator=gen()), (50, 70))
    # For tanh: forward (fan_in) gain 1/sqrt(E[tanh^2]), backward (fan_out) 1/sqrt(E[tanh'^2]),
    # i.e. the values are torch's rescaled by our gain / (5/3), bit for bit up to float rounding.
    m = moments("tanh")
    a, b = torch.empty(40, 60), torch.empty(40, 60)
    I.kaiming_normal_(a, mode="fan_in", nonlinearity="tanh", generator=gen())
    nn.init.kaiming_normal_(b, mode="fan_in", nonlinearity="tanh", generator=gen())
    torch.testing.assert_close(a, b * (m.forward_gain / (5 / 3)), rtol=1e-6, atol=0)
    I.kaiming_normal_(a, mode="fan_out", nonlinearity="tanh", generator=gen())
    torch.testing.assert_close(a, b * (m.backward_gain / (5 / 3)) * math.sqrt(60 / 40), rtol=1e-6, atol=0)


def test_scaled_std_closed_forms():
    g = math.sqrt(2)
    assert I.scaled_std(100, 300, "fan_in", g, g) == pytest.approx(math.sqrt(2 / 100), rel=1e-15)
    assert I.scaled_std(100, 300, "fan_out", g, g) == pytest.approx(math.sqrt(2 / 300), rel=1e-15)
    # The textbook's compromise for ReLU: 4 / (D_h + D_h').
    assert I.scaled_std(100, 300, "fan_avg", g, g) ** 2 == pytest.approx(4 / 400, rel=1e-15)
    assert I.scaled_std(100, 300, "fan_geo_avg", g, g) ** 2 == pytest.approx(2 / math.sqrt(30000), rel=1e-15)
    # With different gains fan_avg is the harmonic mean of the forward and backward variances.
    v = I.scaled_std(100, 300, "fan_avg", 1.5, 1.2) ** 2
    assert v == pytest.approx(2 / (1 / (1.5**2 / 100) + 1 / (1.2**2 / 300)), rel=1e-14)


def test_xavier_with_relu_is_the_textbook_compromise():
    w = I.xavier_normal_(torch.empty(600, 400), generator=gen(), nonlinearity="relu")
    # n = 240,000 draws: the sample variance has relative sd sqrt(2/n) = 0.29%; 1.5% is > 5 sd.
    assert w.var().item() == pytest.approx(4 / (600 + 400), rel=0.015)


@pytest.mark.parametrize("dist", ["normal", "truncated_normal", "uniform", "orthogonal"])
@pytest.mark.parametrize("mode,fan", [("fan_in", 500), ("fan_out", 1000), ("fan_avg", 750)])
def test_variance_scaling_hits_the_target_std(dist, mode, fan):
    w = I.variance_scaling_(torch.empty(1000, 500), 2.0, mode, dist, gen())
    # 500,000 draws: relative sd of the sample std is about sqrt((kurtosis - 1) / (4 n)) < 0.1%;
    # 0.5% is over 5 sd. The orthogonal matrix has its element variance exactly by construction.
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / fan), rel=0.005)
    assert abs(w.mean().item()) < 5 * math.sqrt(2.0 / fan) / math.sqrt(w.numel())


def test_truncated_normal_is_cut_at_two_sigma_and_corrected():
    assert I.TRUNCATED_STD == pytest.approx(0.87962566103423978, rel=1e-14)  # JAX's constant
    w = I.variance_scaling_(torch.empty(400, 400), 1.0, "fan_in", "truncated_normal", gen())
    assert w.abs().max().item() <= 2 * (1 / math.sqrt(400)) / I.TRUNCATED_STD + 1e-7


def test_uniform_bound_is_sqrt3_std():
    w = I.kaiming_uniform_(torch.empty(300, 200), nonlinearity="relu", generator=gen())
    bound = math.sqrt(3) * math.sqrt(2 / 200)
    assert w.abs().max().item() <= bound and w.abs().max().item() > 0.99 * bound


def test_callable_and_module_nonlinearity():
    w = I.kaiming_normal_(torch.empty(800, 500), nonlinearity=lambda x: torch.relu(x) - 0.5, generator=gen())
    expected = 1 / math.sqrt(0.75 - 1 / math.sqrt(2 * math.pi)) / math.sqrt(500)
    # 400,000 draws: relative sd of the sample std ~0.11%; 0.6% is over 5 sd.
    assert w.std().item() == pytest.approx(expected, rel=0.006)
    a = I.kaiming_normal_(torch.empty(20, 30), nonlinearity=nn.LeakyReLU(0.2), generator=gen())
    b = I.kaiming_normal_(torch.empty(20, 30), 0.2, nonlinearity="leaky_relu", generator=gen())
    assert torch.equal(a, b)


def test_orthogonal_half_precision():
    for dtype in (torch.bfloat16, torch.float16):
        w = I.orthogonal_(torch.empty(32, 48, dtype=dtype), generator=gen())
        assert w.dtype == dtype
        # half precision holds ~3 significant digits: W W^T = I to a few 1e-3.
        torch.testing.assert_close(w.float() @ w.float().T, torch.eye(32), atol=0.03, rtol=0)


def test_delta_orthogonal_preserves_norms():
    w = I.delta_orthogonal_(torch.empty(16, 16, 3, 3), generator=gen())
    assert torch.count_nonzero(w[:, :, [0, 2], :]) == 0 and torch.count_nonzero(w[:, :, :, [0, 2]]) == 0
    x = torch.randn(2, 16, 9, 9, generator=gen(1))
    y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), w)
    torch.testing.assert_close(y.norm(), x.norm(), rtol=1e-5, atol=0)
    with pytest.raises(ShapeError, match="conv kernel"):
        I.delta_orthogonal_(torch.empty(4, 4))


def test_generator_leaves_global_rng_alone():
    state = torch.get_rng_state()
    I.kaiming_normal_(torch.empty(10, 10), generator=gen())
    assert torch.equal(state, torch.get_rng_state())


INITIALIZERS = {
    "kaiming_normal_": lambda t: I.kaiming_normal_(t, generator=gen()),
    "kaiming_uniform_": lambda t: I.kaiming_uniform_(t, generator=gen()),
    "xavier_normal_": lambda t: I.xavier_normal_(t, generator=gen()),
    "xavier_uniform_": lambda t: I.xavier_uniform_(t, generator=gen()),
    "lecun_normal_": lambda t: I.lecun_normal_(t, gen()),
    "lecun_uniform_": lambda t: I.lecun_uniform_(t, gen()),
    "orthogonal_": lambda t: I.orthogonal_(t, generator=gen()),
    "variance_scaling_": lambda t: I.variance_scaling_(t, generator=gen()),
    "trunc_normal_": lambda t: I.trunc_normal_(t, generator=gen()),
}


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_contract_shape_dtype_inplace(name, dtype):
    t = torch.full((12, 6, 3), float("nan"), dtype=dtype)
    out = INITIALIZERS[name](t)
    assert out is t and t.dtype == dtype and t.shape == (12, 6, 3)
    assert torch.isfinite(t).all() and t.float().std() > 0


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
def test_contract_zero_size_is_a_silent_noop(name):
    t = torch.empty(0, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert INITIALIZERS[name](t) is t


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
def test_contract_meta_is_a_noop(name):
    t = torch.empty(6, 4, device="meta")
    assert INITIALIZERS[name](t).is_meta


@pytest.mark.parametrize("fn", [I.kaiming_normal_, I.kaiming_uniform_, I.xavier_normal_, I.xavier_uniform_,
                                I.lecun_normal_, I.lecun_uniform_, I.orthogonal_, I.variance_scaling_])
def test_one_dimensional_tensor_is_refused_with_the_fix(fn):
    with pytest.raises(ShapeError, match=r"at least 2 dimensions.*\(10,\).*zeros_"):
        fn(torch.empty(10))


def test_bad_mode_and_distribution():
    with pytest.raises(UnknownOptionError, match="unknown mode 'fan_mean'.*'fan_avg'"):
        I.kaiming_normal_(torch.empty(3, 3), mode="fan_mean")
    with pytest.raises(UnknownOptionError, match="unknown distribution 'gauss'.*'truncated_normal'"):
        I.variance_scaling_(torch.empty(3, 3), distribution="gauss")
