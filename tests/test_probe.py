"""probe(): what it records, hook hygiene, 'nothing lost', bad input, memory, GPU."""
import dataclasses
import gc
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from initscope.errors import ForwardError, LossError, ModelError, UnknownOptionError
from initscope.probe import Tap, probe, select_modules
from initscope.stats import StatsAccumulator, tensor_stats


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 2))


class BnDropNet(nn.Module):
    """BatchNorm and dropout in train mode, a frozen parameter, an eval-mode submodule."""

    def __init__(self, fail_at: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.weight.requires_grad_(False)
        self.frozen.eval()
        self.fail_at = fail_at

    def forward(self, x):
        h = self.drop(F.relu(self.bn(self.conv(x))))
        if self.fail_at == 1:
            raise RuntimeError("planted failure")
        return self.frozen(self.head(h.mean((2, 3))))


def state(model: nn.Module) -> dict:
    """Everything 'nothing lost' covers, copied."""
    return {
        "tensors": {k: v.detach().clone() for k, v in [*model.named_parameters(), *model.named_buffers()]},
        "grads": {k: (p.grad, None if p.grad is None else p.grad.clone()) for k, p in model.named_parameters()},
        "flags": {k: m.training for k, m in model.named_modules()},
        "requires": {k: p.requires_grad for k, p in model.named_parameters()},
        "rng": torch.get_rng_state(),
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = state(model)
    for k, v in before["tensors"].items():
        a = after["tensors"][k]
        assert a.dtype == v.dtype and torch.equal(a.view(-1).view(torch.uint8), v.view(-1).view(torch.uint8)), k
    for k, (obj, val) in before["grads"].items():
        p = dict(model.named_parameters())[k]
        assert p.grad is obj, k  # the same tensor object, or None
        assert val is None or torch.equal(p.grad, val), k
    assert after["flags"] == before["flags"] and after["requires"] == before["requires"]
    assert torch.equal(after["rng"], before["rng"])
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)
    for p in model.parameters():
        assert not p._backward_hooks


def prepared(fail_at=None) -> BnDropNet:
    torch.manual_seed(1)
    net = BnDropNet(fail_at)
    net.train()
    net.frozen.eval()
    net.head.weight.grad = torch.full_like(net.head.weight, 0.5)  # accumulated earlier
    net.conv.bias.grad = torch.ones_like(net.conv.bias)
    return net


def test_layers_in_execution_order_with_stats():
    net = small_net()
    trace = probe(net, torch.randn(32, 6))
    assert [r.name for r in trace.layers] == ["0", "1", "2", "3", "4"]
    r = trace.layer("1")
    assert r.type == "ReLU" and r.shape == (32, 12) and r.dtype == "float32"
    assert r.forward.min >= 0 and r.forward.unit_nonzero is not None and r.backward.count == 32 * 12
    assert trace.layer("3").forward.saturated is not None  # tanh: bounded
    assert trace.layers[0].weight_layer and not trace.layers[1].weight_layer
    assert [p.name for p in trace.params] == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert trace.loss > 0 and trace.inputs[0].forward.count == 32 * 6


def test_parameter_gradients_match_autograd():
    net, x = small_net(), torch.randn(16, 6)
    trace = probe(net, x)
    loss = 0.5 * net(x).pow(2).mean()
    g = torch.autograd.grad(loss, net[2].weight)[0]
    ref = tensor_stats(g)
    got = trace.params[2].grad
    assert got.count == ref.count and got.mean == pytest.approx(ref.mean, rel=1e-5)
    assert got.std == pytest.approx(ref.std, rel=1e-5)


def test_module_called_twice_appears_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(torch.relu(self.lin(x)))

    trace = probe(Twice(), torch.randn(8, 4))
    assert [(r.label, r.call) for r in trace.layers] == [("lin", 0), ("lin#1", 1)]
    assert all(r.backward is not None for r in trace.layers)


def test_structured_integer_and_bool_outputs():
    @dataclasses.dataclass
    class Out:
        logits: torch.Tensor
        ids: torch.Tensor

    class Multi(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            y = self.lin(x)
            return Out(y, y.argmax(-1)), {"mask": y > 0, "pair": [y * 2, (y, None)]}

    net = Multi()
    trace = probe(nn.Sequential(net), torch.randn(5, 4), modules=lambda n, m: m is net)
    [rec] = trace.layers
    paths = [(o.path, o.dtype, o.forward is not None) for o in rec.outputs]
    assert paths == [("[0].logits", "float32", True), ("[0].ids", "int64", False), ("[1]['mask']", "bool", False),
                     ("[1]['pair'][0]", "float32", True), ("[1]['pair'][1][0]", "float32", True)]
    assert rec.forward.count == 15 and rec.outputs[1].note == "int64 output not measured"
    assert any("int64" in n and "bool" in n for n in trace.notes)


def test_inplace_relu_gets_backward_statistics():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 1))
    trace = probe(net, torch.randn(16, 4))
    pre, post = trace.layer("0"), trace.layer("1")
    assert pre.forward.min < 0 <= post.forward.min  # measured before the inplace ReLU overwrote it
    assert pre.backward is not None and post.backward is not None
    assert pre.backward.zeros >= post.backward.zeros  # ReLU's mask zeroes gradients


def test_no_grad_and_inference_mode_callers_still_get_gradients():
    net, x = small_net(), torch.randn(8, 6)
    with torch.no_grad():
        assert probe(net, x).layer("2").backward is not None
    with torch.inference_mode():
        x_inf = torch.randn(8, 6)
        assert probe(net, x_inf).layer("2").backward is not None
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing(reentrant):
    class Ckpt(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
            self.head = nn.Linear(8, 1)

        def forward(self, x):
            return self.head(checkpoint(self.inner, x, use_reentrant=reentrant))

    torch.manual_seed(0)
    net = Ckpt()
    x = torch.randn(8, 4, requires_grad=reentrant)  # reentrant checkpoints need an input that requires grad
    trace = probe(net, x)
    assert [r.name for r in trace.layers] == ["inner.0", "inner.1", "inner.2", "head"]
    assert all(r.backward is not None for r in trace.layers)
    assert x.grad is None
    plain = probe(net.inner, x.detach())
    assert trace.layer("inner.2").forward.mean == pytest.approx(plain.layer("2").forward.mean)


def test_nothing_lost_after_success():
    net, x = prepared(), torch.randn(4, 3, 6, 6)
    before = state(net)
    trace = probe(net, x)
    assert trace.layer("bn").backward is not None
    assert_unchanged(net, before)
    assert net.bn.num_batches_tracked.item() == 0


def test_nothing_lost_after_a_forward_that_raises_halfway():
    net, x = prepared(fail_at=1), torch.randn(4, 3, 6, 6)
    before = state(net)
    with pytest.raises(ForwardError) as info:
        probe(net, x)
    assert info.value.layer == ""  # the root's own forward raised, after its children ran
    assert info.value.completed[:3] == ["conv", "bn", "drop"]
    assert "planted failure" in str(info.value) and "completed: conv, bn, drop" in str(info.value)
    assert_unchanged(net, before)


def test_nothing_lost_after_a_backward_that_raises():
    class Boom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            raise RuntimeError("backward boom")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x):
            return self.bn(Boom.apply(self.lin(x)))

    net, x = Net(), torch.randn(8, 4)
    before = state(net)
    with pytest.raises(ForwardError, match="backward boom"):
        probe(net, x)
    assert_unchanged(net, before)


def test_inputs_the_model_rejects_name_the_layer():
    net = small_net()
    with pytest.raises(ForwardError) as info:
        probe(net, torch.randn(3, 5))  # Linear(6, ...) gets 5 features
    assert info.value.layer == "0" and info.value.completed == []
    assert "`0` (Linear)" in str(info.value)
    bad_mid = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ForwardError) as info:
        probe(bad_mid, torch.randn(3, 6))
    assert info.value.layer == "2" and info.value.completed == ["0", "1"]
    assert isinstance(info.value, RuntimeError)


def test_loss_errors():
    net, x = small_net(), torch.randn(4, 6)
    with pytest.raises(LossError, match="not a scalar"):
        probe(net, x, loss_fn=lambda out: out.pow(2))
    with pytest.raises(LossError, match="without a loss_fn"):
        probe(net, x, target=torch.zeros(4, 2))
    with pytest.raises(LossError, match="loss_fn raised"):
        probe(net, x, loss_fn=lambda out, target: (out - target).sum())  # needs a target
    with pytest.raises(LossError, match="not a tensor"):
        probe(net, x, loss_fn=lambda out: 1.0)
    t = probe(net, x, loss_fn=F.cross_entropy, target=torch.tensor([0, 1, 1, 0]))
    assert t.loss == pytest.approx(F.cross_entropy(net(x), torch.tensor([0, 1, 1, 0])).item(), rel=1e-6)


def test_module_selection():
    net = small_net()
    assert [n for n, _ in select_modules(net, ["2", "0"])] == ["2", "0"]
    assert [n for n, _ in select_modules(net, nn.Linear)] == ["0", "2", "4"]
    assert [n for n, _ in select_modules(net, lambda n, m: n == "3")] == ["3"]
    assert [n for n, _ in select_modules(nn.MultiheadAttention(8, 2))] == ["", "out_proj"]
    with pytest.raises(UnknownOptionError, match="'9'.*known: '0', '1'"):
        probe(net, torch.randn(2, 6), modules=["9"])
    with pytest.raises(ModelError, match="matches no module"):
        probe(net, torch.randn(2, 6), modules=nn.Conv2d)
    with pytest.raises(ModelError):
        probe("not a model", torch.randn(2, 6))
    lazy = nn.Sequential(nn.LazyLinear(3))
    with pytest.raises(ModelError, match="lazy"):
        probe(lazy, torch.randn(2, 6))
    assert torch.nn.parameter.is_lazy(lazy[0].weight)
    assert [r.name for r in probe(net, torch.randn(2, 6), modules="2").layers] == ["2"]


def test_nonfinite_inputs_are_reported_not_raised():
    x = torch.randn(8, 6)
    x[0, 0] = float("nan")
    x[1, 1] = float("inf")
    trace = probe(small_net(), x)
    assert trace.inputs[0].forward.nan == 1 and trace.inputs[0].forward.posinf == 1
    kinds = [(f.kind, f.layer) for f in trace.findings]
    assert ("nonfinite", "(input)") in kinds and ("nonfinite", "0") in kinds


def test_backward_false_and_loss_without_grad():
    trace = probe(small_net(), torch.randn(4, 6), backward=False)
    assert trace.loss is None and all(r.backward is None for r in trace.layers)
    frozen = small_net().requires_grad_(False)
    trace = probe(frozen, torch.randn(4, 6))
    assert any("backward skipped" in n for n in trace.notes)


def test_renderings():
    trace = probe(nn.Sequential(nn.ModuleDict({"a<b>": nn.Linear(3, 3)})["a<b>"]), torch.randn(2, 3))
    assert "Linear" in repr(trace) and "grad std" in repr(trace)
    html_text = trace._repr_html_()
    assert "<table" in html_text and "<script" not in html_text
    data = json.loads(json.dumps(trace.to_dict(), allow_nan=False))
    assert data["layers"][0]["outputs"][0]["forward"]["count"] == 6


def test_repeated_probes_do_not_grow_memory():
    net, x = small_net(), torch.randn(16, 6)
    probe(net, x)

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))

    start = live_tensors()
    traces = [probe(net, x) for _ in range(5)]
    assert traces and live_tensors() == start


@pytest.mark.gpu
def test_cuda_statistics_match_cpu_and_hooks_do_not_synchronise():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 4))
    x = torch.randn(16, 3, 32, 32)
    cpu = probe(net, x)
    gpu_net = net.cuda()
    gpu = probe(gpu_net, x.cuda())
    for a, b in zip(cpu.layers, gpu.layers):
        assert a.forward.count == b.forward.count and a.forward.zeros == b.forward.zeros
        assert a.forward.mean == pytest.approx(b.forward.mean, rel=1e-4, abs=1e-6)
        assert a.backward.std == pytest.approx(b.backward.std, rel=1e-3)
        assert a.forward.hist.tolist() == b.forward.hist.tolist()
        assert a.forward.formats.tolist() == b.forward.formats.tolist()
        assert a.forward.unit_nonzero.tolist() == b.forward.unit_nonzero.tolist()
    tap, xc = Tap(gpu_net, select_modules(gpu_net), StatsAccumulator()), x.cuda()
    with tap, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sync debug mode is a prototype feature"
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            gpu_net(xc).pow(2).mean().backward()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    host = tap.acc.to_host()
    assert len(host) == 8 and all(s.count for _, s in host)


class _TakesAList(nn.Module):
    """forward(xs): one argument, a list of two tensors."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(5, 3)

    def forward(self, xs):
        return torch.relu(self.a(xs[0]) + self.b(xs[1]))


class _TakesTwo(_TakesAList):
    def forward(self, x, y):
        return super().forward([x, y])


def test_probe_lsuv_and_discovery_read_inputs_by_one_rule():
    from initscope import lsuv
    from initscope.graph import discover

    pair = [torch.randn(16, 4), torch.randn(16, 5)]
    for model, inputs in ((_TakesAList(), pair), (_TakesTwo(), tuple(pair))):  # a list is one argument; a tuple is unpacked
        assert [r.name for r in probe(model, inputs).layers] == ["a", "b"]
        assert set(discover(model, inputs).layers) == {"a", "b"}
        assert lsuv(model, inputs, pre_init=None).passes >= 1
    from collections import UserDict  # any mapping gives keyword arguments, in lsuv too

    model = _TakesTwo()
    assert lsuv(model, UserDict(x=pair[0], y=pair[1]), pre_init=None).passes >= 1
