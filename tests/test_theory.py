"""initscope.theory against closed forms and against Monte Carlo over random networks."""
import math

import numpy as np
import pytest
import torch

from initscope.errors import ArgumentError, UnknownOptionError
from initscope.moments import moments
from initscope.theory import (
    chi1, correlation_map, critical_sigma_w2, depth_scale, finite_width_band, fixed_point, propagate,
)

TEXTBOOK_S2 = (0.001, 0.01, 0.02, 0.1, 1.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def arc_cosine(c):
    """Cho & Saul's degree-1 arc-cosine kernel, normalised: ReLU's correlation map."""
    return (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c) / math.pi


# ------------------------------------------------------------ propagate

@pytest.mark.parametrize("s2", TEXTBOOK_S2)
def test_relu_per_layer_factor_is_dh_s2_over_2(s2):
    p = propagate([100] * 51, "relu", 100 * s2)
    assert np.allclose(p.factor, 100 * s2 / 2, rtol=1e-12, atol=0)
    assert np.allclose(p.chi, 100 * s2 / 2, rtol=1e-12, atol=0)  # equal widths: backward factor too
    assert np.allclose(p.grad[:-1] / p.grad[1:], 100 * s2 / 2, rtol=1e-12, atol=0)


def test_first_layer_is_fed_by_data_and_moments_follow():
    p = propagate([3, 5, 7], "relu", [2.0, 1.5], sigma_b2=[0.1, 0.2], q0=0.8)
    q1 = 2.0 * 0.8 + 0.1
    assert p.q[0] == pytest.approx(q1, rel=1e-14)
    assert p.q[1] == pytest.approx(1.5 * q1 / 2 + 0.2, rel=1e-14)
    assert p.mean[0] == pytest.approx(math.sqrt(q1 / (2 * math.pi)), rel=1e-14)
    assert p.variance[0] == pytest.approx(q1 / 2 - q1 / (2 * math.pi), rel=1e-14)
    assert p.chi[0] == pytest.approx(1.5 * 7 / 5 * 0.5, rel=1e-14)  # sigma_w2 n_{l+1} E[phi'^2] / n_l


def test_any_activation_follows_the_length_map():
    act = lambda x: torch.tanh(x) + 0.1 * x  # noqa: E731  (a callable without a name)
    p = propagate([10] * 6, act, 1.7, 0.05, q0=1.3)
    q = 1.7 * 1.3 + 0.05
    for l in range(5):
        assert p.q[l] == pytest.approx(q, rel=1e-12)
        q = 1.7 * moments(act, q).second + 0.05


def test_overflow_turns_into_inf_not_an_error():
    p = propagate([10] * 400, "relu", 100.0)
    assert math.isinf(p.q[-1]) and np.isfinite(p.q[0])


def test_bad_arguments_raise_typed_errors():
    with pytest.raises(ArgumentError, match="widths"):
        propagate([10], "relu", 2.0)
    with pytest.raises(ArgumentError, match="one per layer"):
        propagate([10, 10, 10], "relu", [2.0, 2.0, 2.0])
    with pytest.raises(ArgumentError, match="sigma_b2"):
        propagate([10, 10], "relu", 2.0, -1.0)


# ------------------------------------------------------------ fixed points, chi, criticality

@pytest.mark.parametrize("sw,sb", [(0.5, 0.1), (1.0, 0.5), (1.9, 0.01)])
def test_relu_fixed_point_closed_form(sw, sb):
    assert fixed_point("relu", sw, sb) == pytest.approx(sb / (1 - sw / 2), rel=1e-11)


def test_fixed_point_limits_and_tanh_self_consistency():
    assert fixed_point("relu", 1.5) == 0.0 and fixed_point("relu", 2.5) == math.inf
    assert fixed_point("relu", 2.0, q0=3.0) == 3.0  # every q is fixed
    q = fixed_point("tanh", 2.5, 0.2)
    assert 2.5 * moments("tanh", q).second + 0.2 == pytest.approx(q, rel=1e-12)


@pytest.mark.parametrize("sw", [0.5, 1.0, 2.0, 3.0, 5.0])
@pytest.mark.parametrize("sb", [0.0, 0.3])
def test_relu_chi1_is_half_sigma_w2(sw, sb):
    assert chi1("relu", sw, sb) == pytest.approx(sw / 2, rel=1e-14)


def test_tanh_chi1_at_its_fixed_point():
    q = fixed_point("tanh", 1.8, 0.05)
    assert chi1("tanh", 1.8, 0.05) == pytest.approx(1.8 * moments("tanh", q).deriv_second, rel=1e-14)
    assert chi1("tanh", 0.7) == pytest.approx(0.7, rel=1e-12)  # q* = 0: tanh'(0)^2 = 1


@pytest.mark.parametrize("sb", [0.0, 0.1, 1.0])
def test_relu_critical_sigma_w2_is_2(sb):
    assert critical_sigma_w2("relu", sb) == pytest.approx(2.0, rel=1e-12)


def test_tanh_critical_line():
    # sigma_b2 = 0: q* -> 0 and chi_1 -> sigma_w2, so the boundary is sigma_w2 = 1. chi_1 - 1
    # grows like (sigma_w2 - 1)^2 / 3 above it, so the root is only ~1e-7 sharp: tolerance 1e-6.
    assert critical_sigma_w2("tanh") == pytest.approx(1.0, abs=1e-6)
    edge = critical_sigma_w2("tanh", 0.05)  # Schoenholz et al. 2017, fig. 1: about 1.76
    assert 1.7 < edge < 1.8 and chi1("tanh", edge, 0.05) == pytest.approx(1.0, abs=1e-9)


def test_no_transition_raises():
    with pytest.raises(ArgumentError, match="does not cross 1"):
        critical_sigma_w2(lambda x: 0 * x + 1.0)


# ------------------------------------------------------------ the correlation map and depth scale

@pytest.mark.parametrize("c", [-1.0, -0.9, -0.5, 0.0, 0.3, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("sw", [1.0, 2.0, 4.0])
def test_relu_correlation_map_is_the_arc_cosine_kernel(c, sw):
    assert correlation_map("relu", c, sw) == pytest.approx(arc_cosine(c), abs=1e-13)


def test_relu_correlation_map_with_bias_and_given_q():
    q, sw, sb, c = 1.3, 1.5, 0.2, 0.4
    cross = q / 2 * arc_cosine(c)  # E[relu(u1) relu(u2)]
    expected = (sw * cross + sb) / (sw * q / 2 + sb)
    assert correlation_map("relu", c, sw, sb, q=q) == pytest.approx(expected, abs=1e-13)


def test_relu_depth_scale_in_the_ordered_phase():
    assert depth_scale("relu", 1.0, 0.1) == pytest.approx(-1 / math.log(0.5), rel=1e-12)
    assert depth_scale("relu", 2.0) == math.inf  # critical


@pytest.mark.parametrize("sw,sb", [(2.0, 0.0), (3.0, 0.3)])
def test_tanh_depth_scale_is_the_slope_of_the_map_at_its_fixed_point(sw, sb):
    """Chaotic phase: xi_c = -1 / ln chi_c with chi_c the slope of the correlation map at its
    stable c* < 1. The oracle finds c* by bisection and the slope by a central difference
    of the map itself (no derivative of phi), step 1e-4: error ~1e-8, tolerance 1e-5."""
    q = fixed_point("tanh", sw, sb)
    cmap = lambda c: correlation_map("tanh", c, sw, sb, q=q)  # noqa: E731
    lo, hi = 0.0, 1 - 1e-6
    if cmap(0.0) > 1e-15:
        for _ in range(45):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if cmap(mid) > mid else (lo, mid)
    star, h = (lo + hi) / 2 if cmap(0.0) > 1e-15 else 0.0, 1e-4
    slope = (cmap(star + h) - cmap(star - h)) / (2 * h)
    assert depth_scale("tanh", sw, sb) == pytest.approx(-1 / math.log(slope), rel=1e-5)


def test_correlation_out_of_range():
    with pytest.raises(ArgumentError, match="correlation"):
        correlation_map("relu", 1.5, 2.0)


# ------------------------------------------------------------ the finite-width band

def random_relu_nets(widths, sigma_w2, nets, seed):
    """Per-layer q_l = |f_l|^2 / n_l (one input, |x|^2 / n_0 = 1) and g_l / g_L for ``nets``
    independent Gaussian ReLU nets, all in one batched pass."""
    gen = torch.Generator().manual_seed(seed)
    n = widths
    x = torch.randn(n[0], generator=gen, dtype=torch.float64)
    h = (x / x.norm() * math.sqrt(n[0])).expand(nets, 1, n[0]).clone().requires_grad_(True)
    fs = []
    for n_in, n_out in zip(n[:-1], n[1:]):
        w = torch.randn(nets, n_out, n_in, generator=gen, dtype=torch.float64) * math.sqrt(sigma_w2 / n_in)
        f = torch.bmm(h, w.transpose(1, 2))
        f.retain_grad()
        fs.append(f)
        h = torch.relu(f)
    readout = torch.randn(nets, n[-1], 1, generator=gen, dtype=torch.float64)
    torch.bmm(h, readout).sum().backward()
    q = torch.stack([f.detach().square().mean(dim=(1, 2)) for f in fs], 1).numpy()
    g = torch.stack([f.grad.square().mean(dim=(1, 2)) for f in fs], 1).numpy()
    alive = (q > 0).all(axis=1) & (g[:, -1] > 0)  # the band conditions on no dead layer (K >= 1)
    return q[alive], g[alive] / g[alive, -1:]


NETS = 600
WIDTHS = [8] + [16] * 12
NET_DRAWS = {}


def measured(direction):
    if not NET_DRAWS:
        NET_DRAWS["forward"], NET_DRAWS["backward"] = random_relu_nets(WIDTHS, 2.0, NETS, seed=1)
    return NET_DRAWS[direction]


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_band_quantiles_against_600_random_networks(direction):
    """The empirical CDF at the band's 5/50/95% points of the sampled per-layer law.
    Tolerance: 4 binomial standard errors of a fraction over 600 nets (sqrt(p(1-p)/600)), plus
    0.01 for the 20,000-sample Monte Carlo of the law itself; layers spaced 3 apart."""
    values = measured(direction)
    band = finite_width_band(WIDTHS, 2.0, direction=direction, method="sampled", samples=20_000)
    layers = [0, 3, 6, 9]
    for edge, p in ((band.lower, 0.05), (band.median, 0.5), (band.upper, 0.95)):
        frac = (values[:, layers] < edge[layers]).mean(axis=0)
        assert np.all(np.abs(frac - p) <= 4 * math.sqrt(p * (1 - p) / len(values)) + 0.01), (direction, p, frac)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_band_exact_log_moments_against_random_networks(direction):
    """Exact E and sd of ln(value / mean field) (digamma/trigamma) against the same 600 nets:
    the mean within 4 standard errors (sd / sqrt(600)); the sd within 4 relative standard
    errors of a sample sd, 4 / sqrt(2 * 600) = 12%, plus 3% for non-normal tails."""
    values = measured(direction)
    band = finite_width_band(WIDTHS, 2.0, direction=direction)
    keep = slice(0, -1) if direction == "backward" else slice(None)  # the top layer is 0 by construction
    dev = np.log(values / band.mean_field)[:, keep]
    mean, std = band.log_mean[keep], band.log_std[keep]
    assert np.all(np.abs(dev.mean(axis=0) - mean) <= 4 * std / math.sqrt(len(dev)))
    assert np.all(np.abs(dev.std(axis=0) / std - 1) <= 4 / math.sqrt(2 * len(dev)) + 0.03)


def test_normal_and_sampled_bands_agree_at_width_100():
    normal = finite_width_band([100] * 51, 2.0)
    sampled = finite_width_band([100] * 51, 2.0, method="sampled", samples=20_000, seed=3)
    assert np.allclose(np.log10(normal.upper), np.log10(sampled.upper), atol=0.05)
    assert np.allclose(np.log10(normal.lower), np.log10(sampled.lower), atol=0.05)
    assert np.allclose(normal.log_mean, sampled.log_mean, atol=0.05)


def test_band_for_another_sigma_is_a_shift():
    widths = [100] * 51
    base, other = finite_width_band(widths, 2.0), finite_width_band(widths, 0.8)
    shift = np.log(0.8 / 2) * np.arange(0, 50) + np.log(0.8 / 2)  # layer l: (0.8/2)^(l-1) * 0.8/2
    assert np.allclose(np.log(other.median) - np.log(base.median), shift, atol=1e-12)
    assert np.allclose(other.decades, base.decades, atol=1e-12)


def test_band_shapes_and_errors():
    band = finite_width_band([100] * 51, 2.0, direction="backward")
    assert band.decades[-1] == 0 and band.decades[0] > 2  # relative to the last layer
    with pytest.raises(UnknownOptionError, match="direction"):
        finite_width_band([10, 10], direction="sideways")
    with pytest.raises(ArgumentError, match="level"):
        finite_width_band([10, 10], level=1.5)
