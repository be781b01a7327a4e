"""Oracle tests for initscope.moments: closed forms, an independent adaptive quadrature
(scipy.integrate.quad), and every kind of bad input."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate
from torch import nn

from initscope.activations import ACTIVATIONS, resolve
from initscope.errors import ActivationError, ArgumentError, UnknownActivationError
from initscope.moments import gain, moments, torch_gain

INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
SQRT2 = math.sqrt(2)


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def _quad(fn, kinks, q):
    """E[fn(sqrt(q) z)] by scipy's adaptive Gauss-Kronrod, split at the kinks (independent oracle)."""
    s = math.sqrt(q)
    pts = sorted({-40.0, -8.0, 0.0, 8.0, 40.0, *(k / s for k in kinks)})
    dens = lambda z: math.exp(-0.5 * z * z) * INV_SQRT_2PI  # noqa: E731
    total = 0.0
    for a, b in zip(pts[:-1], pts[1:]):
        total += integrate.quad(lambda z: fn(s * z) * dens(z), a, b, epsabs=1e-14, epsrel=1e-12, limit=200)[0]
    return total


def _scalar(act):
    def value(x):
        return float(act.fn(torch.tensor([x], dtype=torch.float64))[0])

    def deriv(x):
        t = torch.tensor([x], dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(act.fn(t).sum(), t)
        return float(g[0])
    return value, deriv


@pytest.mark.parametrize("q", [0.25, 1.0, 3.0])
def test_relu_closed_form(q):
    m = moments("relu", q)
    assert m.mean == pytest.approx(math.sqrt(q) * INV_SQRT_2PI, rel=1e-15)
    assert m.second == pytest.approx(q / 2, rel=1e-15)
    assert m.deriv_second == 0.5
    assert m.variance == pytest.approx(q / 2 - q / (2 * math.pi), rel=1e-14)


# The accuracy bound: relative error <= 1e-9 for named activations. The oracle
# (quad at epsrel 1e-12) is about three orders of magnitude tighter than that bound.
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("q", [0.5, 1.0, 2.0])
def test_named_activations_match_adaptive_quadrature(name, q):
    act = resolve(name)
    value, deriv = _scalar(act)
    m = moments(name, q)
    assert rel(m.second, _quad(lambda x: value(x) ** 2, act.kinks, q)) <= 1e-9
    assert rel(m.deriv_second, _quad(lambda x: deriv(x) ** 2, act.kinks, q)) <= 1e-9
    ref_mean = _quad(value, act.kinks, q)
    assert abs(m.mean - ref_mean) <= 1e-9 * max(abs(ref_mean), math.sqrt(m.second))


@pytest.mark.parametrize("q", [0.1, 1.0, 5.0])
def test_gelu_closed_form_equals_quadrature_of_the_callable(q):
    closed = moments("gelu", q)
    numeric = moments(lambda x: F.gelu(x), q, kinks=())
    for field in ("mean", "second", "deriv_second"):
        assert rel(getattr(numeric, field), getattr(closed, field)) <= 1e-12


def test_callable_with_a_kink_is_exact_to_1e8():
    # relu - 0.5: E = 1/sqrt(2 pi) - 1/2; E[phi^2] = 1/2 - E[relu] + 1/4; E[phi'^2] = 1/2.
    m = moments(lambda x: torch.relu(x) - 0.5)
    assert rel(m.mean, INV_SQRT_2PI - 0.5) <= 1e-8
    assert rel(m.second, 0.75 - INV_SQRT_2PI) <= 1e-8
    assert rel(m.deriv_second, 0.5) <= 1e-8


def test_fastai_general_relu():
    # GeneralRelu(leak=0.1, sub=0.4): leaky_relu(x, 0.1) - 0.4, compared with leaky closed forms.
    a, sub = 0.1, 0.4
    m = moments(lambda x: F.leaky_relu(x, a) - sub)
    mean_leaky = (1 - a) * INV_SQRT_2PI
    assert rel(m.mean, mean_leaky - sub) <= 1e-8
    assert rel(m.second, (1 + a * a) / 2 - 2 * sub * mean_leaky + sub * sub) <= 1e-8
    assert rel(m.deriv_second, (1 + a * a) / 2) <= 1e-8


def test_kinks_elsewhere_can_be_declared():
    fn = lambda x: torch.clamp(x, min=0.3)  # noqa: E731
    ref = _quad(lambda x: max(x, 0.3) ** 2, (0.3,), 1.0)
    assert rel(moments(fn, kinks=(0.3,)).second, ref) <= 1e-10


def test_modules_are_read_through_their_parameters():
    assert moments(nn.LeakyReLU(0.2)) == moments("leaky_relu", param=0.2)
    assert moments(nn.ELU(alpha=0.5)) == moments("elu", param=0.5)
    assert moments(nn.GELU(approximate="tanh")).name == "gelu_tanh"
    assert moments(nn.ReLU6()).name == "relu6"
    assert moments(nn.Hardtanh(-2.0, 2.0)).second == pytest.approx(
        _quad(lambda x: min(max(x, -2.0), 2.0) ** 2, (-2.0, 2.0), 1.0), rel=1e-10)


def test_module_with_parameters_is_copied_not_changed():
    prelu = nn.PReLU(init=0.25)
    before = prelu.weight.detach().clone()
    m = moments(prelu)
    assert rel(m.second, moments("leaky_relu", param=0.25).second) <= 1e-10
    assert prelu.weight.dtype == torch.float32 and torch.equal(prelu.weight.detach(), before)


def test_q_zero_is_the_value_at_zero():
    m = moments("sigmoid", 0.0)
    assert (m.mean, m.second, m.deriv_second) == (0.5, 0.25, 0.0625)


def test_gains_variance_convention():
    assert gain("relu") == pytest.approx(SQRT2, rel=1e-15)
    assert gain("relu", direction="backward") == pytest.approx(SQRT2, rel=1e-15)
    assert gain("identity") == 1.0
    # SELU is built so that E[selu(z)^2] = 1 (Klambauer et al. 2017): forward gain 1, up to
    # the 10-digit constants torch uses for lambda and alpha.
    assert gain("selu") == pytest.approx(1.0, abs=1e-8)
    assert gain("tanh") == pytest.approx(1.5925374197, rel=1e-9)
    assert gain("tanh", direction="backward") == pytest.approx(1.4674135916, rel=1e-9)
    # relu is homogeneous: the forward gain does not depend on q.
    assert gain("relu", q=7.0) == pytest.approx(SQRT2, rel=1e-14)


@pytest.mark.parametrize("name,param", [
    ("linear", None), ("conv1d", None), ("conv2d", None), ("conv3d", None), ("conv_transpose2d", None),
    ("sigmoid", None), ("tanh", None), ("relu", None), ("leaky_relu", None), ("leaky_relu", 0.2), ("selu", None),
])
def test_torch_convention_is_calculate_gain(name, param):
    assert gain(name, convention="torch", param=param) == nn.init.calculate_gain(name, param)


def test_torch_convention_unknown_for_gelu():
    with pytest.raises(UnknownActivationError, match="defines no gain for 'gelu'.*convention='variance'"):
        torch_gain("gelu")


def test_unknown_name_lists_known_and_how_to_pass_a_callable():
    with pytest.raises(UnknownActivationError) as info:
        moments("swish2")
    text = str(info.value)
    assert "'swish2'" in text and "relu" in text and "gelu" in text and "callable" in text


def test_not_callable():
    with pytest.raises(UnknownActivationError, match="cannot use 3"):
        moments(3)


def test_callable_returning_nan():
    with pytest.raises(ActivationError, match="non-finite value at x = -"):
        moments(torch.log)


def test_callable_changing_shape():
    with pytest.raises(ActivationError, match="changed the shape"):
        moments(lambda x: x.sum())


def test_callable_that_raises():
    def bad(x):
        raise RuntimeError("boom")
    with pytest.raises(ActivationError, match="raised RuntimeError: boom"):
        moments(bad)


def test_not_differentiable_only_fails_when_the_derivative_is_needed():
    numpy_relu = lambda x: torch.from_numpy(np.maximum(x.detach().numpy(), 0.0))  # noqa: E731
    assert gain(numpy_relu) == pytest.approx(SQRT2, rel=1e-12)
    with pytest.raises(ActivationError, match="not differentiable.*backward gain"):
        gain(numpy_relu, direction="backward")


@pytest.mark.parametrize("q", [-1.0, float("nan"), float("inf")])
def test_bad_q(q):
    with pytest.raises(ArgumentError, match="q must be a finite number >= 0"):
        moments("relu", q)


@pytest.mark.parametrize("q", [1e2, 1e4])
def test_large_q_keeps_the_accuracy(q):
    """For large q phi's features (|x| ~ 1) sit at |z| ~ 1/sqrt(q): the panels must follow them.
    Before they did, tanh's E[phi'^2] at q = 1e4 was off by 1%."""
    act = resolve("tanh")
    value, deriv = _scalar(act)
    edges = (-4.0, -1.0, -0.25, 0.25, 1.0, 4.0)  # split the oracle near the origin as well
    m = moments("tanh", q)
    assert rel(m.second, _quad(lambda x: value(x) ** 2, edges, q)) <= 1e-9
    assert rel(m.deriv_second, _quad(lambda x: deriv(x) ** 2, edges, q)) <= 1e-9
