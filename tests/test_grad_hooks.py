"""Gradient hooks registered by the kernel's extension (``StatsAccumulator.watch_grad`` for
activations, ``grad_writer`` for parameters) against the Python hooks they replace: the same
rows, in the same order, with the same bits; the user's own hooks untouched; stale hooks inert."""
import copy
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from initscope import _native
from initscope.probe import probe
from initscope.recorder import Recorder
from initscope.stats import StatsAccumulator

pytestmark = pytest.mark.skipif(_native.disabled() or _native.load() is None,
                                reason="the extension's hooks need the fused kernel")


class _Swap(nn.Module):
    """Returns a permuted view: its gradient arrives permuted too (read in memory order)."""

    def forward(self, x):
        return x.transpose(1, 2)


class _Net(nn.Module):
    """Conv units, an in-place ReLU, a permuted output, a float64 branch (a Python hook), a
    checkpointed segment (recomputed inside the backward pass) and an output whose gradient is
    expanded (stride 0)."""

    def __init__(self, reentrant: bool = False):
        super().__init__()
        self.reentrant = reentrant
        self.conv = nn.Conv1d(3, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)  # modifies the conv's output after its hook was registered
        self.swap = _Swap()
        self.seg = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.wide = nn.Linear(8, 4).double()
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = self.swap(self.relu(self.conv(x)))  # (batch, 12, 8)
        h = checkpoint(self.seg, h, use_reentrant=self.reentrant)
        side = self.wide(h.double()).float()
        return self.head(h) + side


def _add_only(self, key, x, grad_key, **kw):
    self.add(key, x, **kw)
    return False


def _python_hooks(m) -> None:
    """Every gradient through a Python hook and add(), as before the extension's hooks."""
    m.setattr(StatsAccumulator, "watch_grad", lambda self, key, t, unit_dim=None: False)
    m.setattr(StatsAccumulator, "add_and_watch", _add_only)
    m.setattr(StatsAccumulator, "grad_writer", lambda self, key, p: None)


def _record(net, hooks: bool, monkeypatch, micro: int = 1, slab_rows: int = 256) -> Recorder:
    with monkeypatch.context() as m:
        if not hooks:
            _python_hooks(m)
        m.setattr(_native.Slab.__init__, "__defaults__", (slab_rows, 4))  # small: the hooks grow it
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(1)
        with Recorder(net, every=1) as rec:
            for _ in range(3):
                opt.zero_grad()
                for _ in range(micro):
                    net(torch.randn(5, 3, 12, generator=g)).sum().backward()  # sum: an expanded gradient
                opt.step()
                rec.step()
    return rec


@pytest.mark.parametrize("micro,slab_rows,reentrant", [(1, 256, False), (2, 256, False), (1, 2, False),
                                                       (2, 256, True)])
def test_extension_hooks_give_the_python_hooks_bits(monkeypatch, micro, slab_rows, reentrant):
    torch.manual_seed(0)
    net = _Net(reentrant)
    calls = {"watch": 0, "writer": 0}
    watch, writer = StatsAccumulator.add_and_watch, StatsAccumulator.grad_writer

    def counted_watch(self, key, x, grad_key, **kw):
        done = watch(self, key, x, grad_key, **kw)
        calls["watch"] += done
        return done

    def counted_writer(self, key, p):
        w = writer(self, key, p)
        calls["writer"] += w is not None
        return w

    monkeypatch.setattr(StatsAccumulator, "add_and_watch", counted_watch)
    monkeypatch.setattr(StatsAccumulator, "grad_writer", counted_writer)
    a = _record(copy.deepcopy(net), True, monkeypatch, micro, slab_rows)
    # the extension's hooks really ran (a reentrant checkpoint's first pass runs without grad: its
    # three layers are hooked when recomputed, through watch_grad)
    assert calls["watch"] >= 3 * micro * (4 if reentrant else 6) and calls["writer"] >= 8
    b = _record(copy.deepcopy(net), False, monkeypatch, micro, slab_rows)
    assert len(a.steps) == len(b.steps) == 3
    for sa, sb in zip(a.steps, b.steps):
        assert sa.keys == sb.keys
        assert ("wide", "backward") in sa.keys and ("seg.1", "backward") in sa.keys  # float64, recomputed
        np.testing.assert_array_equal(sa.values, sb.values)  # NaN where NaN, else equal bits
        np.testing.assert_array_equal(sa.counts, sb.counts)
        for k in sa.hists:
            np.testing.assert_array_equal(sa.hists[k], sb.hists[k])
    backward = dict(zip(a.steps[0].keys, a.steps[0].counts))
    assert backward[("seg.1", "backward")] == micro * 5 * 12 * 16  # measured once per backward, not per recompute


def _cases():
    """tests/models/cases.py, loaded as tests/models/test_transformers_models.py loads it."""
    cases = sys.modules.get("initscope_model_cases")
    if cases is None:
        spec = importlib.util.spec_from_file_location("initscope_model_cases",
                                                      Path(__file__).with_name("models") / "cases.py")
        cases = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
        spec.loader.exec_module(cases)
    return cases


def _record_hf(model, batch: dict, hooks: bool, monkeypatch) -> Recorder:
    """Two recorded training steps of a transformers model (dropout on, reseeded, so both runs
    drop the same values; the loss: the logits' mean square)."""
    with monkeypatch.context() as m:
        if not hooks:
            _python_hooks(m)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.manual_seed(2)
        with Recorder(model, every=1) as rec:
            for _ in range(2):
                opt.zero_grad()
                model(**batch)["logits"].float().pow(2).mean().backward()
                opt.step()
                rec.step()
    return rec


_HF = ["gpt2", "llama", "bert", "t5", "t5_gated", "mixtral", "vit", "resnet", "convnext", "efficientnet",
       "mobilenet_v2"]


@pytest.mark.parametrize("name", _HF)
def test_extension_hooks_on_transformers_models_give_the_python_hooks_bits(monkeypatch, name):
    """Real third-party blocks, trained in training mode: GPT-2's Conv1D, Llama's RMSNorm, SwiGLU
    and rotary embedding, T5's encoder-decoder, Mixtral's routed experts, ViT, BatchNorm and
    in-place activations in the ResNet, ConvNeXt, EfficientNet and MobileNetV2; outputs as
    tuples and ModelOutputs."""
    pytest.importorskip("transformers")
    cases = _cases()
    assert sorted(_HF) == sorted(c.name for c in cases.CASES)  # every model of the real-model set
    model, batch = cases.build(cases.CASE[name])
    model.train()  # dropout on, BatchNorm on batch statistics
    watched, watch = [], StatsAccumulator.add_and_watch
    monkeypatch.setattr(StatsAccumulator, "add_and_watch",
                        lambda self, *a, **kw: watched.append(watch(self, *a, **kw)) or watched[-1])
    trained = copy.deepcopy(model)
    a = _record_hf(trained, batch, True, monkeypatch)
    b = _record_hf(copy.deepcopy(model), batch, False, monkeypatch)
    for sa, sb in zip(a.steps, b.steps):
        assert sa.keys == sb.keys
        np.testing.assert_array_equal(sa.values, sb.values)
        np.testing.assert_array_equal(sa.counts, sb.counts)
        for k in sa.hists:
            np.testing.assert_array_equal(sa.hists[k], sb.hists[k])
    keys = set(a.steps[-1].keys)
    # each weight layer that ran has its output's gradient recorded (hooked by the extension:
    # watched), and each parameter that got a gradient has it recorded, a tied one (GPT-2's
    # lm_head is its token embedding) under its first name; Mixtral's unrouted experts get none
    layers = [n for n, m in trained.named_modules()
              if isinstance(m, (nn.Linear, nn.Conv2d)) or type(m).__name__ == "Conv1D"]
    ran = [n for n in layers if (n, "forward") in keys]
    assert len(ran) >= 4 and sum(watched) >= 2 * len(ran)
    for n in ran:
        assert (n, "backward") in keys, n
    for n, p in trained.named_parameters():
        assert ((n, "grad") in keys) == (p.grad is not None), n


def test_probe_with_extension_hooks_matches_python_hooks(monkeypatch):
    torch.manual_seed(0)
    net, x = _Net(), torch.randn(5, 3, 12)
    a = probe(copy.deepcopy(net), x)
    monkeypatch.setattr(StatsAccumulator, "watch_grad", lambda self, key, t, unit_dim=None: False)
    monkeypatch.setattr(StatsAccumulator, "add_and_watch", _add_only)
    b = probe(copy.deepcopy(net), x)
    for la, lb in zip(a.layers, b.layers):
        assert la.name == lb.name
        sa, sb = la.outputs[0].backward, lb.outputs[0].backward
        assert (sa is None) == (sb is None)
        if sa is not None:
            assert (sa.count, sa.mean, sa.m2, sa.min, sa.max, sa.zeros) == (sb.count, sb.mean, sb.m2, sb.min, sb.max, sb.zeros)
            np.testing.assert_array_equal(sa.hist, sb.hist)
            np.testing.assert_array_equal(sa.unit_nonzero, sb.unit_nonzero)


def test_the_users_own_hooks_still_run_around_ours():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    seen = []
    net[0].weight.register_hook(lambda g: seen.append("param, before"))
    with Recorder(net, every=1) as rec:
        net[0].weight.register_hook(lambda g: seen.append("param, after"))
        h = net[0](torch.randn(3, 4))
        h.register_hook(lambda g: seen.append("activation"))
        h.retain_grad()
        net[2](net[1](h)).sum().backward()
        rec.step()
    assert sorted(seen) == ["activation", "param, after", "param, before"]
    assert h.grad is not None and h.grad.shape == (3, 8)
    assert ("0.weight", "grad") in rec.steps[0].keys and ("0", "backward") in rec.steps[0].keys


def test_hooks_of_a_stored_step_go_inert():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    x = torch.randn(3, 4)
    with Recorder(net, every=1) as rec:
        stale = net(x)
        rec.step()  # step 0 stored with forward statistics only; its hooks go inert
        stale.sum().backward()  # step 1: the old graph's gradients are not this step's
        net(x).sum().backward()
        rec.step()
        late = net(x)
    late.sum().backward()  # after the context: nothing is measured, nothing fails
    counts = dict(zip(rec.steps[1].keys, rec.steps[1].counts))
    assert counts[("0", "backward")] == 3 * 8  # one backward pass's gradient, not two
    assert ("0", "backward") not in rec.steps[0].keys
    assert len(rec.steps) == 3 and ("0", "backward") not in rec.steps[2].keys


def test_watch_grad_declines_what_the_extension_does_not_take():
    acc = StatsAccumulator()
    leaf = torch.randn(3, 4, requires_grad=True)
    assert not acc.watch_grad("leaf", leaf)  # a C++ hook on a leaf would drop its Python hooks
    assert not acc.watch_grad("f64", leaf.double() * 2)
    assert not acc.watch_grad("empty", torch.randn(0, 4, requires_grad=True) * 2)
    assert not acc.watch_grad("no grad", torch.randn(3, 4) * 2)
    assert acc.grad_writer("f64", torch.randn(3, dtype=torch.float64, requires_grad=True)) is None
    assert acc.watch_grad("ok", leaf * 2)
    assert acc.add_and_watch("measured, no gradient", torch.randn(3, 4), "g") is False
    assert acc.add_and_watch("measured and watched", leaf * 2, "g") is True
    assert acc.fused_keys() == ["measured, no gradient", "measured and watched"]


def test_without_the_current_graph_task_every_gradient_hook_is_a_python_one(monkeypatch):
    """torch before 2.1 cannot tell a recomputation from a forward call by itself: there the Tap
    keeps Python hooks, whose first call marks the backward pass's start, and records the same."""
    import importlib

    from initscope import stats as stats_module
    probe_module = importlib.import_module("initscope.probe")  # the module (the package exports the function)

    torch.manual_seed(0)
    net = _Net()
    a = _record(copy.deepcopy(net), True, monkeypatch)
    monkeypatch.setattr(stats_module, "_CURRENT_TASK", False)
    monkeypatch.setattr(probe_module, "_in_backward", lambda: False)
    acc = StatsAccumulator()
    assert not acc.watch_grad("k", torch.randn(3, requires_grad=True) * 2)
    assert acc.add_and_watch("k", torch.randn(3, requires_grad=True) * 2, "g") is False
    b = _record(copy.deepcopy(net), True, monkeypatch)
    for sa, sb in zip(a.steps, b.steps):
        assert sa.keys == sb.keys
        np.testing.assert_array_equal(sa.values, sb.values)
    assert dict(zip(b.steps[0].keys, b.steps[0].counts))[("seg.1", "backward")] == 5 * 12 * 16


class _Wrapped(torch.Tensor):
    """A wrapper tensor subclass that dispatches to Python, as a DTensor does."""

    @staticmethod
    def __new__(cls, inner):
        out = torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype, device=inner.device,
                                                  requires_grad=inner.requires_grad)
        out.inner = inner
        return out

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_map
        out = func(*tree_map(lambda t: t.inner if isinstance(t, _Wrapped) else t, args), **(kwargs or {}))
        return tree_map(lambda t: _Wrapped(t) if isinstance(t, torch.Tensor) else t, out)


def test_the_extension_declines_a_tensor_subclass_that_dispatches_to_python():
    """A DTensor-like wrapper has no data of its own to read: the extension neither measures it
    nor hooks its gradient (the caller's other paths decide), where it used to reach its data."""
    acc = StatsAccumulator()
    assert acc._fused() is not None
    x = _Wrapped(torch.randn(4, 3))
    assert acc._sink.measure_watch(x, None, False, 0.0, 0.0, 0, -1) == 0 and len(acc) == 0
    y = _Wrapped(torch.randn(4, 3)) * 2
    y.requires_grad_()
    assert not acc._sink.hook(y * 1, 0, None)


def test_a_tensor_elsewhere_than_the_cpu_does_not_load_the_cpu_kernel():
    acc = StatsAccumulator()
    t = torch.randn(3, 4, device="meta", requires_grad=True) * 2  # as a CUDA activation would be
    p = nn.Parameter(torch.randn(3, 4, device="meta"))
    assert not acc.watch_grad("k", t) and acc.grad_writer("p", p) is None
    assert acc._sink is None and acc._slab is None


@pytest.mark.gpu
def test_a_recorder_on_a_gpu_keeps_the_python_hooks_and_loads_no_cpu_kernel():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)).cuda()
    with Recorder(net, every=1) as rec:
        net(torch.randn(16, 4, device="cuda")).sum().backward()
        rec.step()
        assert rec._acc._sink is None
    assert ("0", "backward") in rec.steps[0].keys and ("0.weight", "grad") in rec.steps[0].keys
