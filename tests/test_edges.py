"""The bad-input contract of every public entry point, one row per case.

Each row names the call and its expected outcome: ``raises(Error, "fragment")`` (the typed
initscope error and a piece of its message that names the argument or layer, the value or
the fix) or ``works("property", check)`` (the call succeeds and ``check(result, model)``
holds). Whenever a row builds a model, the test also checks that the model comes back
bitwise as found (parameters, buffers, .grad, train flags, requires_grad, the global RNG)
after every raise and after probe/plan/Recorder; rows whose call is meant to write
(``initialize``, ``lsuv`` on success) say so with ``writes=True``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

import initscope as I
from initscope import errors as E
from initscope import experiments as X
from initscope import init

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Expect:
    error: type[Exception] | None  # None: the call works
    text: str  # a fragment of the message, or the property checked
    check: Callable[[Any, Any], bool] | None = None


def raises(error: type[Exception], fragment: str) -> Expect:
    return Expect(error, fragment)


def works(prop: str, check: Callable[[Any, Any], bool]) -> Expect:
    return Expect(None, prop, check)


@dataclass(frozen=True)
class Row:
    id: str
    call: Callable[[Any], Any]  # receives the model built by ``model`` (or None)
    expect: Expect
    model: Callable[[], nn.Module] | None = None
    writes: bool = False  # a successful call may change the model (initialize, lsuv)


# ---------------------------------------------------------------- models and inputs
@dataclass(frozen=True)
class Fields:
    x: torch.Tensor


class FieldsModel(nn.Module):
    """Takes a dataclass batch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 8)

    def forward(self, batch: Fields) -> torch.Tensor:
        return self.lin(batch.x)


class SizeModel(FieldsModel):
    """Takes a batch size and draws its own input (the model's own randomness, from a fixed seed)."""

    def forward(self, n: int) -> torch.Tensor:
        return self.lin(torch.randn(n, 4, generator=torch.Generator().manual_seed(1)))

def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def bn_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).train()


class Outputs(nn.Module):
    """Returns a tuple with a dict inside, a bare None, or an integer tensor."""

    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(0)
        self.kind, self.lin = kind, nn.Linear(4, 4)

    def forward(self, x):
        y = self.lin(x)
        return {"tuple": (y, {"twice": 2 * y, "none": None}), "none": None, "int": y.argmax(-1)}[self.kind]


class ExtraParam(nn.Module):
    """A Linear beside a parameter of an odd dtype held directly by the model."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 4)
        self.extra = nn.Parameter(torch.ones(3, 3).to(dtype), requires_grad=False)

    def forward(self, x):
        return self.lin(x)


def shared() -> nn.Module:
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    return nn.Sequential(lin, nn.Tanh(), lin)


def frozen() -> nn.Module:
    return bn_mlp().requires_grad_(False)


def half(dtype: torch.dtype) -> Callable[[], nn.Module]:
    return lambda: mlp().to(dtype)


def long_linear() -> nn.Module:
    lin = nn.Linear(3, 3)
    lin.weight = nn.Parameter(torch.ones(3, 3, dtype=torch.long), requires_grad=False)
    return lin


X4 = torch.linspace(-2, 2, 64).reshape(16, 4)
T = torch.empty(3, 3)
NAN, INF = float("nan"), float("inf")


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def all_finite(m: nn.Module) -> bool:
    return all(finite(p) for p in m.parameters() if p.is_floating_point())


def quiet(fn: Callable[[], Any]) -> Any:
    """Discovery without an example input warns by design; these rows are not about that."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", E.DiscoveryWarning)
        return fn()


def cli(*argv: str) -> tuple[int, str]:
    """(exit code, stderr) of the command line; 2 is bad usage, 3 would be an internal error."""
    import io

    from initscope.cli import main

    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), out, err, width=100, color=False, tty=False), err.getvalue()


def watched_forward(model: nn.Module, x: torch.Tensor) -> I.Recorder:
    with I.Recorder(model) as rec:
        model(x)
        rec.step()
    return rec


def recorded(model: nn.Module, batches: list[torch.Tensor]) -> I.Recorder:
    with I.Recorder(model) as rec:
        for x in batches:
            model(x).pow(2).mean().backward()
            rec.step()
    return rec


ROWS = [
    # ------------------------------------------------------------ tensor initializers
    Row("kaiming_normal_ a=nan", lambda _: init.kaiming_normal_(torch.empty(3, 3), a=NAN),
        raises(E.ArgumentError, "a must be a finite number; got nan")),
    Row("kaiming_normal_ a=inf", lambda _: init.kaiming_normal_(torch.empty(3, 3), a=INF),
        raises(E.ArgumentError, "a must be a finite number; got inf")),
    Row("kaiming_normal_ a='x'", lambda _: init.kaiming_normal_(torch.empty(3, 3), a="x"),
        raises(E.ArgumentTypeError, "a must be a real number; got 'x'")),
    Row("kaiming_normal_ long tensor", lambda _: init.kaiming_normal_(torch.empty(3, 3, dtype=torch.long)),
        raises(E.ArgumentTypeError, "dtype torch.int64; initializers write random real values")),
    Row("kaiming_uniform_ bool tensor", lambda _: init.kaiming_uniform_(torch.zeros(3, 3, dtype=torch.bool)),
        raises(E.ArgumentTypeError, "dtype torch.bool")),
    Row("xavier_normal_ complex tensor", lambda _: init.xavier_normal_(torch.zeros(3, 3, dtype=torch.complex64)),
        raises(E.ArgumentTypeError, "dtype torch.complex64")),
    Row("orthogonal_ complex tensor", lambda _: init.orthogonal_(torch.zeros(3, 3, dtype=torch.complex64)),
        raises(E.ArgumentTypeError, "need a real floating tensor")),
    Row("delta_orthogonal_ int kernel", lambda _: init.delta_orthogonal_(torch.zeros(3, 3, 3, dtype=torch.int32)),
        raises(E.ArgumentTypeError, "dtype torch.int32")),
    Row("kaiming_normal_ on a list", lambda _: init.kaiming_normal_([[0.0, 1.0]]),
        raises(E.ArgumentTypeError, "tensor must be a torch.Tensor; got list")),
    Row("kaiming_normal_ 1-D", lambda _: init.kaiming_normal_(torch.empty(3)),
        raises(E.ShapeError, "at least 2 dimensions")),
    Row("kaiming_normal_ generator=3", lambda _: init.kaiming_normal_(torch.empty(3, 3), generator=3),
        raises(E.ArgumentTypeError, "torch.Generator().manual_seed(s)")),
    Row("kaiming_normal_ float16", lambda _: init.kaiming_normal_(torch.empty(64, 64, dtype=torch.float16)),
        works("finite, dtype kept", lambda w, _: finite(w) and w.dtype == torch.float16)),
    Row("kaiming_normal_ bfloat16", lambda _: init.kaiming_normal_(torch.empty(64, 64, dtype=torch.bfloat16)),
        works("finite, dtype kept", lambda w, _: finite(w) and w.dtype == torch.bfloat16)),
    Row("kaiming_normal_ zero-size", lambda _: init.kaiming_normal_(torch.empty(0, 3)),
        works("a no-op on the empty tensor", lambda w, _: w.shape == (0, 3))),
    Row("kaiming_normal_ degenerate activation", lambda _: init.kaiming_normal_(T, nonlinearity=lambda x: 0 * x),
        raises(E.ActivationError, "forward gain of activation")),
    Row("xavier_normal_ gain=nan", lambda _: init.xavier_normal_(T, gain=NAN),
        raises(E.ArgumentError, "gain must be a finite number >= 0; got nan")),
    Row("xavier_uniform_ gain=-1", lambda _: init.xavier_uniform_(T, gain=-1.0),
        raises(E.ArgumentError, "gain must be a finite number >= 0; got -1.0")),
    Row("orthogonal_ gain=nan", lambda _: init.orthogonal_(T, gain=NAN),
        raises(E.ArgumentError, "gain must be a finite number >= 0")),
    Row("variance_scaling_ scale=0", lambda _: init.variance_scaling_(T, 0.0),
        raises(E.ArgumentError, "scale must be a finite number > 0; got 0.0")),
    Row("variance_scaling_ scale=nan", lambda _: init.variance_scaling_(T, NAN),
        raises(E.ArgumentError, "scale must be a finite number > 0; got nan")),
    Row("variance_scaling_ fans=(0, 4)", lambda _: init.variance_scaling_(T, fans=(0, 4)),
        raises(E.ArgumentError, "fans[0] (fan_in) must be a finite number > 0")),
    Row("variance_scaling_ mode typo", lambda _: init.variance_scaling_(T, mode="fanin"),
        raises(E.UnknownOptionError, "unknown mode 'fanin'")),
    Row("trunc_normal_ std=-1", lambda _: init.trunc_normal_(T, std=-1.0),
        raises(E.ArgumentError, "std must be a finite number > 0")),
    Row("trunc_normal_ a > b", lambda _: init.trunc_normal_(T, a=2.0, b=-2.0),
        raises(E.ArgumentError, "the cut is [a, b] with a < b")),
    Row("zeros_ long tensor", lambda _: init.zeros_(torch.ones(2, 2, dtype=torch.long)),
        works("all zero (a constant suits any dtype)", lambda w, _: int(w.abs().sum()) == 0)),
    Row("zeros_ on a list", lambda _: init.zeros_([1.0]),
        raises(E.ArgumentTypeError, "tensor must be a torch.Tensor")),
    # ------------------------------------------------------------ gains and moments
    Row("gain leaky_relu param=nan", lambda _: I.gain("leaky_relu", param=NAN),
        raises(E.ArgumentError, "leaky_relu's negative slope (param/a) must be a finite number; got nan")),
    Row("gain softplus beta=0", lambda _: I.gain("softplus", param=0.0),
        raises(E.ArgumentError, "softplus's beta (param/a) must be a finite number > 0")),
    Row("moments nn.LeakyReLU(inf)", lambda _: I.moments(nn.LeakyReLU(INF)),
        raises(E.ArgumentError, "leaky_relu's negative slope")),
    Row("moments q=-1", lambda _: I.moments("relu", q=-1.0), raises(E.ArgumentError, "q must be a finite number >= 0")),
    Row("moments q=True", lambda _: I.moments("relu", q=True), raises(E.ArgumentError, "got True")),
    Row("gain unknown name", lambda _: I.gain("swish2"), raises(E.UnknownActivationError, "unknown nonlinearity 'swish2'")),
    Row("gain of a zero function", lambda _: I.gain(lambda x: 0 * x),
        raises(E.ActivationError, "E[phi(z)^2] under N(0, 1) is 0")),
    Row("moments kinks=[nan]", lambda _: I.moments(lambda x: x.relu(), kinks=[NAN]),
        raises(E.ArgumentError, "kinks[...] must be a finite number; got nan")),
    Row("gain leaky_relu a=-1 (|x|)", lambda _: I.gain("leaky_relu", param=-1.0),
        works("gain 1: E[|z|^2] = 1", lambda g, _: abs(g - 1.0) < 1e-12)),
    # ------------------------------------------------------------ fans
    Row("fan of a string", lambda _: I.fan("linear"), raises(E.ModelError, "fan needs a torch.nn.Module, got str")),
    Row("fan unknown parameter", lambda _: I.fan(nn.Linear(2, 2), "nope"), raises(E.LayerError, "no parameter 'nope'")),
    Row("tensor_fans negative size", lambda _: I.tensor_fans((-1, 3)), raises(E.ShapeError, "negative size")),
    Row("tensor_fans of a string", lambda _: I.tensor_fans("ab"), raises(E.ArgumentTypeError, "a shape must be")),
    # ------------------------------------------------------------ init_layer_
    Row("init_layer_ long weight", lambda m: I.init_layer_(m), raises(E.ArgumentTypeError, "`weight` (Linear) has dtype torch.int64"),
        model=long_linear),
    Row("init_layer_ of a string", lambda _: I.init_layer_("x"), raises(E.ModelError, "init_layer_ needs a torch.nn.Module")),
    # ------------------------------------------------------------ initialize / plan
    Row("initialize a string", lambda _: I.initialize("m"), raises(E.ModelError, "plan needs a torch.nn.Module, got str")),
    Row("initialize a factory", lambda _: I.initialize(mlp), raises(E.ModelError, "call the factory first")),
    Row("initialize no parameters", lambda m: I.initialize(m), raises(E.ModelError, "has no parameters"), model=nn.ReLU),
    Row("initialize seed=nan", lambda m: I.initialize(m, seed=NAN), raises(E.ArgumentError, "seed must be an int"), model=mlp),
    Row("initialize seed=True", lambda m: I.initialize(m, seed=True), raises(E.ArgumentError, "got True"), model=mlp),
    Row("initialize scheme typo", lambda m: I.initialize(m, "kaiming2"), raises(E.UnknownOptionError, "unknown scheme"), model=mlp),
    Row("initialize bad input", lambda m: I.initialize(m, example_input=torch.ones(2, 5)),
        raises(E.ForwardError, "`0` (Linear)"), model=mlp),
    Row("plan zero-sample example_input", lambda m: I.plan(m, example_input=X4[:0]),
        works("the same rows as a full batch", lambda p, m: p.rows == I.plan(m, example_input=X4).rows), model=mlp),
    Row("plan model returning tuple/dict", lambda m: I.plan(m, example_input=X4),
        works("a row for lin.weight", lambda p, _: p.row("lin.weight").gain == 1.0), model=lambda: Outputs("tuple")),
    Row("initialize model returning None", lambda m: I.initialize(m, example_input=X4),
        works("finite weights", lambda p, m: all_finite(m)), model=lambda: Outputs("none"), writes=True),
    Row("initialize int parameter", lambda m: I.initialize(m, example_input=X4),
        works("left as it was, listed untouched", lambda p, m: int(m.extra.sum()) == 9 and "extra" in {u.name for u in p.untouched}),
        model=lambda: ExtraParam(torch.long), writes=True),
    Row("initialize float16 model", lambda m: I.initialize(m, example_input=X4.half()),
        works("finite, dtype kept", lambda p, m: all_finite(m) and m[0].weight.dtype == torch.float16),
        model=half(torch.float16), writes=True),
    Row("initialize bfloat16 model", lambda m: I.initialize(m, example_input=X4.bfloat16()),
        works("finite, dtype kept", lambda p, m: all_finite(m) and m[0].weight.dtype == torch.bfloat16),
        model=half(torch.bfloat16), writes=True),
    Row("initialize frozen model", lambda m: I.initialize(m, example_input=X4),
        works("requires_grad stays False", lambda p, m: not any(q.requires_grad for q in m.parameters())),
        model=frozen, writes=True),
    Row("initialize shared Linear", lambda m: I.initialize(m, example_input=X4),
        works("one row for the shared weight", lambda p, m: [r.name for r in p.rows].count("0.weight") == 1),
        model=shared, writes=True),
    # ------------------------------------------------------------ probe
    Row("probe zero-sample batch", lambda m: I.probe(m, X4[:0]), raises(E.ShapeError, "zero samples"), model=mlp),
    Row("probe single sample", lambda m: I.probe(m, X4[:1]),
        works("8 values measured at layer 0", lambda t, _: t.layers[0].forward.count == 8), model=mlp),
    Row("probe list of floats", lambda m: I.probe(m, [[1.0] * 4]), raises(E.ForwardError, "`0` (Linear) raised TypeError"),
        model=mlp),
    Row("probe dataclass batch", lambda m: I.probe(m, Fields(X4)),
        works("the forward reads the fields", lambda t, _: t.layers[0].forward.count == 16 * 8), model=FieldsModel),
    Row("probe a batch size, no tensor", lambda m: I.probe(m, 8),
        works("the forward makes its own input", lambda t, _: t.layers[0].forward.count == 64), model=SizeModel),
    Row("probe numpy batch", lambda m: I.probe(m, np.zeros((2, 4), np.float32)),
        raises(E.ArgumentTypeError, "torch.from_numpy"), model=mlp),
    Row("probe None", lambda m: I.probe(m, None), raises(E.ArgumentTypeError, "inputs is None"), model=mlp),
    Row("probe a string", lambda _: I.probe("m", X4), raises(E.ModelError, "probe needs a torch.nn.Module, got str")),
    Row("probe int batch into Linear", lambda m: I.probe(m, X4.long()), raises(E.ForwardError, "`0` (Linear) raised RuntimeError"),
        model=mlp),
    Row("probe target without loss_fn", lambda m: I.probe(m, X4, target=X4), raises(E.LossError, "without a loss_fn"), model=mlp),
    Row("probe no parameters", lambda m: I.probe(m, X4), works("no parameter rows", lambda t, _: t.params == ()), model=nn.Tanh),
    Row("probe model returning tuple/dict", lambda m: I.probe(m, X4),
        works("finite loss over both outputs", lambda t, _: math.isfinite(t.loss)), model=lambda: Outputs("tuple")),
    Row("probe model returning None", lambda m: I.probe(m, X4), raises(E.LossError, "holds no floating tensor"),
        model=lambda: Outputs("none")),
    Row("probe model returning None, no backward", lambda m: I.probe(m, X4, backward=False),
        works("forward measured", lambda t, _: t.layers[0].forward.count == 64), model=lambda: Outputs("none")),
    Row("probe model returning an int tensor", lambda m: I.probe(m, X4, backward=False),
        works("forward measured", lambda t, _: t.layers[0].forward.count == 64), model=lambda: Outputs("int")),
    Row("probe int parameter", lambda m: I.probe(m, X4),
        works("int parameter not measured", lambda t, _: [p.name for p in t.params] == ["lin.weight", "lin.bias"]),
        model=lambda: ExtraParam(torch.long)),
    Row("probe complex parameter", lambda m: I.probe(m, X4),
        works("complex parameter not measured", lambda t, _: "extra" not in [p.name for p in t.params]),
        model=lambda: ExtraParam(torch.complex64)),
    Row("probe float16 model", lambda m: I.probe(m, X4.half()), works("finite loss", lambda t, _: math.isfinite(t.loss)),
        model=half(torch.float16)),
    Row("probe frozen model", lambda m: I.probe(m, X4), works("no gradient measured", lambda t, _: all(p.grad is None for p in t.params)),
        model=frozen),
    Row("probe shared Linear", lambda m: I.probe(m, X4), works("one parameter row per tensor", lambda t, _: len(t.params) == 2),
        model=shared),
    # ------------------------------------------------------------ lsuv
    Row("lsuv zero-sample batch", lambda m: I.lsuv(m, X4[:0]), raises(E.ShapeError, "0 sample(s) per unit"), model=mlp),
    Row("lsuv single sample", lambda m: I.lsuv(m, X4[:1]), raises(E.ShapeError, "1 sample(s) per unit"), model=mlp),
    Row("lsuv a string", lambda _: I.lsuv("m", X4), raises(E.ModelError, "lsuv needs a torch.nn.Module")),
    Row("lsuv no eligible layer", lambda m: I.lsuv(m, X4), raises(E.ModelError, "no layer LSUV can scale"), model=nn.Tanh),
    Row("lsuv target_std=nan", lambda m: I.lsuv(m, X4, target_std=NAN), raises(E.ArgumentError, "target_std must be a finite number > 0"),
        model=mlp),
    Row("lsuv target_std=True", lambda m: I.lsuv(m, X4, target_std=True), raises(E.ArgumentTypeError, "target_std must be a real number"),
        model=mlp),
    Row("lsuv NaN batch", lambda m: I.lsuv(m, X4 * NAN), raises(E.ArgumentError, "NaN/inf value(s)"), model=mlp),
    Row("lsuv float16 model", lambda m: I.lsuv(m, X4.half()), works("finite weights", lambda r, m: all_finite(m)),
        model=half(torch.float16), writes=True),
    Row("lsuv frozen model", lambda m: I.lsuv(m, X4), works("requires_grad stays False", lambda r, m: not m[0].weight.requires_grad),
        model=frozen, writes=True),
    Row("lsuv model returning tuple/dict", lambda m: I.lsuv(m, X4), works("converged", lambda r, _: r.converged),
        model=lambda: Outputs("tuple"), writes=True),
    Row("lsuv shared Linear", lambda m: I.lsuv(m, X4), works("finite weights", lambda r, m: all_finite(m)), model=shared, writes=True),
    # ------------------------------------------------------------ Recorder
    Row("Recorder a string", lambda _: I.Recorder("m"), raises(E.ModelError, "Recorder needs a torch.nn.Module")),
    Row("Recorder every=0", lambda m: I.Recorder(m, every=0), raises(E.ArgumentError, "every must be a whole number >= 1"), model=mlp),
    Row("Recorder every=True", lambda m: I.Recorder(m, every=True), raises(E.ArgumentError, "got True"), model=mlp),
    Row("Recorder no parameters", lambda m: watched_forward(m, X4),
        works("records the layer's forward", lambda r, _: r.trace.layers[0].forward.count == 64), model=nn.Tanh),
    Row("Recorder int parameter", lambda m: recorded(m, [X4]),
        works("records the float parameters", lambda r, _: r.trace.layers[0].forward.count == 64),
        model=lambda: ExtraParam(torch.long), writes=True),  # writes: the loop's own backward fills .grad
    Row("Recorder zero-sample step", lambda m: recorded(m, [X4[:0], X4]),
        works("counts only the real step", lambda r, _: r.trace.layers[0].forward.count == 16 * 8), model=mlp, writes=True),
    # ------------------------------------------------------------ theory
    Row("propagate sigma_w2=nan", lambda _: I.propagate([10, 10], "relu", sigma_w2=NAN), raises(E.ArgumentError, "sigma_w2 must be finite")),
    Row("propagate zero width", lambda _: I.propagate([0, 10], "relu", sigma_w2=2.0), raises(E.ArgumentError, "at least 2 whole numbers >= 1")),
    Row("correlation_map c=2", lambda _: I.correlation_map("tanh", 2.0, 1.0), raises(E.ArgumentError, "c must be a correlation in [-1, 1]")),
    Row("fixed_point sigma_w2=-1", lambda _: I.fixed_point("tanh", -1.0), raises(E.ArgumentError, "sigma_w2 must be a finite number >= 0")),
    Row("finite_width_band zero width", lambda _: I.finite_width_band([10, 0]), raises(E.ArgumentError, "widths must be")),
    # ------------------------------------------------------------ experiments (errors come before any work)
    Row("udl variances=['a']", lambda _: X.udl(variances=["a"]), raises(E.ArgumentError, "variances must be a non-empty list")),
    Row("udl seeds=[]", lambda _: X.udl(seeds=[]), raises(E.ArgumentError, "seeds must be a non-empty list")),
    Row("he2015 depths=[]", lambda _: X.he2015(depths=[]), raises(E.ArgumentError, "depths must be a non-empty list")),
    Row("width seeds=[]", lambda _: X.width(seeds=[]), raises(E.ArgumentError, "seeds must be a non-empty list")),
    Row("zoo.build seed='x'", lambda _: I.zoo.build("mlp", depth=2, width=4, seed="x"),
        raises(E.ArgumentError, "seed must be a whole number")),
    # ------------------------------------------------------------ command line: exit 2 and the message, never 3
    Row("cli gain --param nan", lambda _: cli("gain", "leaky_relu", "--param", "nan"),
        works("exit 2, names the slope", lambda r, _: r[0] == 2 and "negative slope" in r[1])),
    Row("cli zoo seed=x", lambda _: cli("init", "zoo:mlp?depth=2&width=4&seed=x"),
        works("exit 2, names seed", lambda r, _: r[0] == 2 and "seed must be a whole number" in r[1])),
    Row("cli zero-sample --input-shape", lambda _: cli("probe", "zoo:mlp?depth=2&width=4", "--input-shape", "0,4"),
        works("exit 2, asks for positive sizes", lambda r, _: r[0] == 2 and "positive whole numbers" in r[1])),
    Row("low_precision tolerance=nan", lambda _: X.low_precision(tolerance=NAN), raises(E.ArgumentError, "tolerance must be")),
]


def _bits(t: torch.Tensor | None) -> Any:
    if t is None:
        return None
    t = t.detach().cpu().contiguous()
    return (t.dtype, tuple(t.shape), t.reshape(-1).view(torch.uint8).clone() if t.numel() else None)


def state(model: nn.Module) -> tuple:
    """Everything probe/plan/Recorder must leave as found, compared bit for bit."""
    tensors = {k: _bits(v) for k, v in model.state_dict(keep_vars=True).items()}
    grads = {n: _bits(p.grad) for n, p in model.named_parameters()}
    flags = [(n, m.training) for n, m in model.named_modules()]
    req = [(n, p.requires_grad) for n, p in model.named_parameters()]
    return tensors, grads, flags, req, _bits(torch.get_rng_state())


def _same(a: tuple, b: tuple) -> bool:
    def eq(x, y):
        if isinstance(x, torch.Tensor):
            return torch.equal(x, y)
        if isinstance(x, (tuple, list)):
            return len(x) == len(y) and all(eq(u, v) for u, v in zip(x, y))
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(eq(x[k], y[k]) for k in x)
        return x == y
    return eq(a, b)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_edge(row: Row) -> None:
    model = row.model() if row.model else None
    if model is not None:  # a caller's gradient, to see that it comes back untouched
        for p in model.parameters():
            if p.is_floating_point():
                p.grad = torch.full_like(p, 0.5)
    before = state(model) if model is not None else None
    if row.expect.error is not None:
        with pytest.raises(row.expect.error) as info:
            quiet(lambda: row.call(model))
        assert isinstance(info.value, E.InitscopeError)
        assert row.expect.text in str(info.value), str(info.value)
    else:
        result = quiet(lambda: row.call(model))
        assert row.expect.check(result, model), f"{row.id}: {row.expect.text}"
    if model is not None and (row.expect.error is not None or not row.writes):
        assert _same(before, state(model)), f"{row.id}: the model was changed"


def test_every_row_has_a_unique_id() -> None:
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids))
