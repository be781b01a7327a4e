"""Hooks as resources: run one forward and backward pass, collect per-layer statistics, and
leave the model exactly as found.

:func:`probe` watches layers with forward hooks. Each hook measures the layer's output on
device and, where the output requires grad, attaches a tensor hook to measure the gradient
with respect to it (``register_full_backward_hook`` fails with inplace ReLU): on the CPU one
the kernel's extension registers and autograd calls in C++, else ``tensor.register_hook``. All
statistics move to the host once, at the end. Parameters, buffers, ``.grad``, train/eval
flags, ``requires_grad`` and the global RNG states are restored, also when the model raises.

Examples:
    >>> import torch, torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> trace = probe(net, torch.randn(16, 4))
    >>> [(r.name, r.type, r.shape) for r in trace.layers]
    [('0', 'Linear', (16, 8)), ('1', 'ReLU', (16, 8)), ('2', 'Linear', (16, 1))]
    >>> trace.layers[1].forward.min >= 0, trace.params[0].grad is not None
    (True, True)
    >>> net[0].weight.grad is None  # probe's gradients never stay in .grad
    True
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from initscope import distributed
from initscope import _validate as check
from initscope._select import ModuleSelection, select_modules
from initscope._state import call, main_output, map_tensors, preserved
from initscope.errors import ForwardError, LossError, ModelError, ShapeError
from initscope.stats import _CURRENT_TASK, StatsAccumulator
from initscope.trace import LayerRecord, OutputRecord, ParamRecord, Trace

__all__ = ["probe", "Trace", "LayerRecord", "OutputRecord", "ParamRecord", "select_modules"]

_CHANNELS_FIRST = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.MaxPool1d, nn.MaxPool2d,
    nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
)


def _in_backward() -> bool:
    """Whether autograd is running a backward pass now (a forward call here is a recomputation);
    False where torch cannot tell (before 2.1: there every gradient hook is a Python one, and
    the first of them marks the backward pass's start)."""
    return _CURRENT_TASK and torch._C._current_graph_task_id() != -1


def _band(module: nn.Module) -> tuple[float, float] | None:
    """(centre, half_width) of a bounded activation's output range, else None."""
    if isinstance(module, (nn.Tanh, nn.Softsign)):
        return (0.0, 1.0)
    if isinstance(module, (nn.Sigmoid, nn.Hardsigmoid)):
        return (0.5, 0.5)
    if isinstance(module, nn.Hardtanh):  # includes ReLU6
        return ((module.max_val + module.min_val) / 2, (module.max_val - module.min_val) / 2)
    return None


def _is_weight_layer(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() >= 2 and not isinstance(module, (nn.Embedding, nn.EmbeddingBag))


def walk(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, tensor) for every tensor in nested tuples, lists, dicts and dataclasses."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, Mapping):  # includes HF ModelOutput
        for k, v in obj.items():
            yield from walk(v, f"{path}[{k!r}]")
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            yield from walk(v, f"{path}[{i}]")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from walk(getattr(obj, f.name), f"{path}.{f.name}")



class _Module(NamedTuple):
    """What a forward hook needs of its module, found once when the hooks are registered."""

    type: str
    weight_layer: bool
    band: tuple[float, float] | None
    channels_first: bool


@functools.lru_cache(maxsize=None)
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclasses.dataclass
class _Out:
    path: str
    shape: tuple[int, ...]
    dtype: str
    unit_dim: int | None = None
    note: str = ""
    hooked: bool = False


@dataclasses.dataclass
class _Call:
    name: str
    type: str
    index: int
    weight_layer: bool
    outputs: list[_Out] = dataclasses.field(default_factory=list)
    main: int | None = None  # the first measured (floating) output: the one a history follows


class Tap:
    """Forward hooks on watched modules that feed a :class:`StatsAccumulator`.

    A context manager: hooks are registered on entry and removed on exit, together with
    every tensor hook it attached (the extension's, which cannot be removed without the tensor,
    go inert). Forward hooks that fire outside the root module's forward
    after a backward pass has started are recomputations (gradient checkpointing): they are
    not measured again (unless the root's forward never ran, as in a LightningModule whose
    ``training_step`` calls its children: then every call is measured), but attach gradient hooks where the first pass could not. The k-th
    recomputed call of a module is matched to its k-th original call; a module shared across
    several reentrant checkpoint segments may have its gradient statistics attributed to the
    wrong one of its calls. After a backward pass, the next forward's recomputations are matched
    to that forward's calls (micro-batches, each with its own backward pass).

    Args:
        model: the root module.
        watched: (name, module) pairs from :func:`select_modules`.
        acc: where statistics go; keys are (call index, output index, "fwd" | "bwd").
        track: also follow every module's entry and exit, to name the failing layer.
    """

    def __init__(self, model: nn.Module, watched: list[tuple[str, nn.Module]],
                 acc: StatsAccumulator, track: bool = False) -> None:
        self.model, self.watched, self.acc, self.track = model, watched, acc, track
        self._handles: list = []  # module hooks, for the life of the Tap
        self._tensor_handles: list = []  # gradient hooks on this step's outputs
        self.reset()

    def reset(self) -> None:
        """Start a new step with the module hooks kept: forget the calls seen, remove the
        gradient hooks on the outputs seen (the Recorder reuses a Tap over recorded steps)."""
        handles, self._tensor_handles = self._tensor_handles, []
        for h in handles:
            h.remove()
        self.calls: list[_Call] = []
        self.stack: list[str] = []
        self.completed: list[str] = []
        self.in_root = self.backward_started = False
        self.root_called = False  # a LightningModule's forward may never run (training_step calls its children)
        self._counts: dict[str, int] = {}
        self._recomputed: dict[str, int] = {}
        self._batch_start = 0  # the first call of the forward pass the recomputations belong to
        self._last: tuple[tuple[int, ...], int | None] = ((), None)

    def __enter__(self) -> Tap:
        try:
            for name, module in self.watched:
                info = _Module(type(module).__name__, _is_weight_layer(module), _band(module),
                               isinstance(module, _CHANNELS_FIRST))
                self._handles.append(module.register_forward_hook(functools.partial(self._forward, name, info)))
            if self.track:
                for name, module in self.model.named_modules():
                    leaf = next(module.children(), None) is None
                    self._handles.append(module.register_forward_pre_hook(functools.partial(self._enter, name)))
                    self._handles.append(module.register_forward_hook(functools.partial(self._exit, name, leaf)))
            self._handles.append(self.model.register_forward_pre_hook(self._root_enter))
            self._handles.append(self.model.register_forward_hook(self._root_exit, always_call=True))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        handles, self._handles = self._handles + self._tensor_handles, []
        self._tensor_handles = []
        for h in handles:
            h.remove()
        self.acc.retire_hooks()

    def _enter(self, name: str, module: nn.Module, args: object) -> None:
        self.stack.append(name)

    def _exit(self, name: str, leaf: bool, module: nn.Module, args: object, output: object) -> None:
        if self.stack and self.stack[-1] == name:
            self.stack.pop()
        if leaf:
            self.completed.append(name)

    def _root_enter(self, module: nn.Module, args: object) -> None:
        if self.backward_started:  # a new forward (e.g. the next micro-batch)
            self.backward_started = False
            self._recomputed.clear()
            self._batch_start = len(self.calls)  # its recomputations match its own calls
        self.in_root = self.root_called = True

    def _root_exit(self, module: nn.Module, args: object, output: object) -> None:
        self.in_root = False

    def _unit_dim(self, info: _Module, shape: tuple[int, ...]) -> int | None:
        """Channels (dim 1) for conv-like layers and 4-D+ outputs, else features (dim -1);
        an elementwise layer keeps the unit dim of the previous output of the same shape."""
        if len(shape) < 2:
            dim = None
        elif info.channels_first or len(shape) >= 4:
            dim = 1
        else:
            dim = self._last[1] if self._last[0] == shape else -1
        self._last = (shape, dim)
        return dim

    def _forward(self, name: str, info: _Module, module: nn.Module, args: object, output: object) -> None:
        if not self.in_root and self.root_called and (self.backward_started or _in_backward()):
            self.backward_started = True  # gradient hooks in the extension do not say so
            self._recompute(name, output)
            return
        index = self._counts.get(name, 0)
        call = _Call(name, info.type, index, info.weight_layer)
        self._counts[name] = index + 1
        ci = len(self.calls)
        self.calls.append(call)
        # one tensor (the usual output) without the walk's generator
        found = (("", output),) if type(output) is torch.Tensor else walk(output)
        for j, (path, t) in enumerate(found):
            shape = tuple(t.shape)
            out = _Out(path, shape, _dtype_name(t.dtype))
            call.outputs.append(out)
            if not t.is_floating_point():
                out.note = f"{out.dtype} output not measured"
                continue
            if call.main is None:
                call.main = j
            out.unit_dim = self._unit_dim(info, shape)
            # measured, and its gradient hooked by the kernel's extension where it takes t
            out.hooked = self.acc.add_and_watch((ci, j, "fwd"), t, (ci, j, "bwd"), unit_dim=out.unit_dim,
                                                saturation=info.band)
            if t.requires_grad and not out.hooked:  # add_and_watch tried the extension's hook
                self._python_hook(t, (ci, j, "bwd"), out)

    def _hook_grad(self, t: torch.Tensor, key: tuple, out: _Out) -> None:
        # a hook of the kernel's extension where it takes t (it goes inert with the accumulator's
        # clear() or this Tap's exit), else a Python hook
        if self.acc.watch_grad(key, t, out.unit_dim):
            out.hooked = True
        else:
            self._python_hook(t, key, out)

    def _python_hook(self, t: torch.Tensor, key: tuple, out: _Out) -> None:
        self._tensor_handles.append(t.register_hook(functools.partial(self._grad, key, out.unit_dim)))
        out.hooked = True

    def _grad(self, key: tuple, unit_dim: int | None, grad: torch.Tensor) -> None:
        self.backward_started = True
        self.acc.add(key, grad, unit_dim=unit_dim)

    def _recompute(self, name: str, output: object) -> None:
        k = self._recomputed.get(name, 0)
        self._recomputed[name] = k + 1
        matches = [i for i, c in enumerate(self.calls[self._batch_start:], self._batch_start) if c.name == name]
        if k >= len(matches):
            return
        ci = matches[k]
        outs = self.calls[ci].outputs
        for j, (_, t) in enumerate(walk(output)):
            if j < len(outs) and not outs[j].hooked and t.is_floating_point() and t.requires_grad:
                self._hook_grad(t, (ci, j, "bwd"), outs[j])

    def records(self, host: Mapping) -> tuple[LayerRecord, ...]:
        """Layer records from the host statistics returned by ``acc.to_host()``."""
        return tuple(LayerRecord(c.name, c.type, c.index, tuple(
            OutputRecord(o.path, o.shape, o.dtype, host.get((ci, j, "fwd")), host.get((ci, j, "bwd")), o.note)
            for j, o in enumerate(c.outputs)), c.weight_layer) for ci, c in enumerate(self.calls))


def _usable(inputs: Any) -> Any:
    """Inputs with inference-mode tensors cloned (autograd refuses to save them)."""
    return map_tensors(inputs, lambda t: t.clone() if t.is_inference() else t)


def _loss(output: Any, loss_fn: Callable | None, target: Any, notes: list[str]) -> torch.Tensor:
    if loss_fn is None:  # least squares against target 0, or the model's own loss
        output, key = main_output(output)
        notes += [f"default loss taken on output[{key!r}]" + " (the model's own loss)" * (key == "loss")] * bool(key)
        if key == "loss":
            return output
        ts = [t for _, t in walk(output) if t.is_floating_point()]
        if not ts:
            raise LossError("the model's output holds no floating tensor for the default loss "
                            "0.5 * output.pow(2).mean(); pass loss_fn")
        loss = sum(0.5 * t.pow(2).mean() for t in ts)
    else:
        try:
            loss = loss_fn(output) if target is None else loss_fn(output, target)
        except Exception as e:
            raise LossError(f"loss_fn raised {type(e).__name__}: {e}; it is called as loss_fn(output, target), "
                            "or loss_fn(output) without a target") from e
    if not isinstance(loss, torch.Tensor):
        raise LossError(f"loss_fn returned {type(loss).__name__}, not a tensor; return a scalar tensor")
    if loss.numel() != 1:
        raise LossError(f"the loss has shape {tuple(loss.shape)}, not a scalar; reduce it, e.g. with .mean()")
    return loss


def _fail(tap: Tap, e: BaseException, phase: str) -> ForwardError:
    layer = tap.stack[-1] if tap.stack else None
    where = {m: type(mod).__name__ for m, mod in tap.model.named_modules()}
    what = f"`{layer or '(model)'}` ({where.get(layer or '', '?')})" if layer is not None else "the model"
    done = tap.completed
    tail = f"; completed: {', '.join(done[-8:])}" + (f" and {len(done) - 8} earlier" if len(done) > 8 else "")
    return ForwardError(f"{what} raised {type(e).__name__} during the {phase} pass: {e}"
                        + (tail if done else "; no layer completed"), layer=layer, completed=done)


def probe(model: nn.Module, inputs: Any, *, loss_fn: Callable | None = None, target: Any = None,
          backward: bool = True, modules: ModuleSelection = None) -> Trace:
    """Run one forward (and backward) pass and return what every watched layer saw.

    Args:
        model: the network; it is left bitwise as found, also when it raises.
        inputs: a tensor (or a list, passed as one argument), a tuple of positional arguments, or a
            dict of keyword arguments.
        loss_fn: ``loss_fn(output, target)`` (or ``loss_fn(output)`` without a target) giving a
            scalar. Default: ``0.5 * output.pow(2).mean()``, least squares against target 0,
            summed over the output's floating tensors. A mapping output (an HF ``ModelOutput``)
            is reduced first to its main tensor: the model's own scalar ``loss`` when it
            computed one (used as is), else ``logits``, else ``last_hidden_state``; the trace's
            notes say which.
        target: passed to ``loss_fn``.
        backward: run the backward pass too (under ``torch.enable_grad``, also for callers
            inside ``torch.no_grad``).
        modules: which layers to watch; see :func:`select_modules`.

    Returns:
        A :class:`Trace`. Integer and bool outputs are listed with a note and not measured;
        integer, bool and complex parameters are left out.

    Raises:
        ModelError: ``model`` is not a module, has lazy parameters, or the selection is empty.
        ArgumentTypeError: ``inputs`` hold no tensor, or a numpy array.
        ShapeError: the first input tensor has zero elements (a batch of zero samples measures nothing);
            in a process group, on every rank (one rank's share may be empty).
        LossError: a target without ``loss_fn``, a failing ``loss_fn``, or a non-scalar loss.
        ForwardError: the model raised; names the layer that was running and those completed.
    """
    check.module(model, "probe")
    first = check.batch(inputs, "probe", empty_ok=distributed.active())  # a rank's share may be empty
    if target is not None and loss_fn is None:
        raise LossError("a target was given without a loss_fn to use it; pass loss_fn=, "
                        "e.g. torch.nn.functional.cross_entropy")
    lazy = [n for n, p in model.named_parameters() if is_lazy(p)]
    if lazy:
        raise ModelError(f"parameters {', '.join(lazy[:4])} are not initialized yet (lazy modules), and "
                         "probe would have to create them; run one forward pass before probing")
    tap = Tap(model, select_modules(model, modules), StatsAccumulator(), track=True)
    params = measured_params(model)
    leaves = [t for _, t in walk(inputs) if t.requires_grad and t.is_leaf]
    notes, loss = [], None
    reducer = distributed.Reducer("probe") if distributed.active() else None
    _check_global_batch(first, reducer)
    with distributed.section(reducer), preserved(model, params=True, leaves=leaves), tap, \
            torch.inference_mode(False), torch.set_grad_enabled(backward):
        inputs = _usable(inputs)
        for j, (_, t) in enumerate(walk(inputs)):
            if t.is_floating_point():
                tap.acc.add(("input", j), t, unit_dim=1 if t.dim() >= 4 else -1)
        for name, p in params:
            tap.acc.add(("value", name), distributed.local(p))
        try:
            output = call(model, inputs)
        except Exception as e:
            raise _fail(tap, e, "forward") from e
        if backward:
            loss = _loss(output, loss_fn, target, notes)
            del output
            _backward(tap, loss, params, leaves, notes)
        host = _host(tap, params, reducer)
    return _trace(tap, params, inputs, loss, notes, host)


def _check_global_batch(first: torch.Tensor | None, reducer: distributed.Reducer | None) -> None:
    """In a process group: the same ShapeError on every rank when all ranks' shares are empty
    (one share may be: 5 samples over 8 ranks). Empty statistics merge as no data. A batch
    with no tensor the walk can see (a dataclass) counts as not empty."""
    if reducer is None:
        return
    size = 1.0 if first is None else float(first.numel())
    total = int(reducer.keyed_sum(torch.tensor([size]), "probe batch size").item())
    if total == 0:  # this rank's share is empty too, so it holds a tensor
        raise ShapeError(f"probe: the first input tensor has zero elements on every rank (shape "
                         f"{tuple(first.shape)} here): a batch of zero samples measures nothing; pass at least one "
                         "sample (two or more for a std)")


def measured_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters probe and the Recorder measure: (first name, parameter), once per object
    (tied weights once), floating point only (an integer buffer-like parameter has no statistics
    to merge), lazy ones left out."""
    return list(dict((id(p), (n, p)) for n, p in model.named_parameters()
                     if not is_lazy(p) and p.is_floating_point()).values())


def _backward(tap: Tap, loss: torch.Tensor, params: list, leaves: list, notes: list[str]) -> None:
    if not loss.requires_grad:
        notes.append("backward skipped: the loss does not depend on anything that requires grad")
        return
    for t in [p for _, p in params] + leaves:
        t.grad = None  # the snapshot puts the caller's gradients back
    tap.backward_started = True
    tap.stack.clear()
    try:
        loss.backward()
    except Exception as e:
        raise _fail(tap, e, "backward") from e
    for name, p in params:
        if p.grad is not None:
            tap.acc.add(("grad", name), distributed.local(p.grad.to_dense() if p.grad.is_sparse else p.grad))


def _host(tap: Tap, params: list, reducer: distributed.Reducer | None) -> dict:
    """Host statistics; in a process group, merged over ranks (replicated parameters stay local)."""
    items = distributed.reduce_stats(tap.acc.to_host(), reducer, local_keys=distributed.replicated_keys(params),
                                     signature=distributed.model_signature(params))
    host: dict = {}
    for key, s in items:
        host[key] = host[key].merge(s) if key in host else s
    return host


def _trace(tap: Tap, params: list, inputs: Any, loss: torch.Tensor | None, notes: list[str], host: dict) -> Trace:
    ins = tuple(OutputRecord(path, tuple(t.shape), str(t.dtype).replace("torch.", ""), host.get(("input", j)), None)
                for j, (path, t) in enumerate(walk(inputs)))
    prs = tuple(ParamRecord(n, tuple(p.shape), str(p.dtype).replace("torch.", ""), host[("value", n)],
                            host.get(("grad", n))) for n, p in params)
    skipped = sorted({f"{c.type} output {o.dtype}" for c in tap.calls for o in c.outputs if o.note})
    notes = notes + [f"not measured (not floating): {', '.join(skipped)}"] * bool(skipped)
    return Trace(tap.records(host), prs, ins, None if loss is None else float(loss.detach()), tuple(notes))
