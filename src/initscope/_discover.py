"""Drivers that feed a forward pass to a graph tracker (see :mod:`initscope.graph`).

- :func:`run`: one forward under per-module hooks and a ``TorchFunctionMode``, on the
  meta device or for real, with the arithmetic of plain ``nn.Linear`` layers skipped.
  Atomic modules (layers, norms, activations) are single steps; the function mode
  sees every other call, so functional activations in a custom forward count.
- :func:`fallback`: a ``torch.fx`` symbolic trace, or the module registration order.

Hooks and the mode are resources: registered in a ``with`` block, removed in
``finally``. The model's ``training`` flags, buffers and the global RNG come back as
they were.
"""
from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Iterator

import torch
import torch.fx
from torch import nn
from torch.overrides import TorchFunctionMode

from initscope import _shard_meta
from initscope._ops import Step, classify_function, classify_module, leaves
from initscope._state import call, map_tensors, preserved, split_inputs
from initscope.errors import ForwardError

__all__ = ["run", "fallback"]


class _TensorStore:
    """Tags keyed by tensor identity; a weak reference guards against a reused ``id``."""

    def __init__(self) -> None:
        self._tags: dict[int, tuple[weakref.ref, object]] = {}

    def get(self, value: object) -> object:
        entry = self._tags.get(id(value))
        return entry[1] if entry is not None and entry[0]() is value else None

    def set(self, value: torch.Tensor, tag: object) -> None:
        self._tags[id(value)] = (weakref.ref(value), tag)


class _DictStore(dict):
    def set(self, value: object, tag: object) -> None:
        self[value] = tag


def _tensors(obj: object) -> list[torch.Tensor]:
    return [v for v in leaves(obj) if isinstance(v, torch.Tensor)]


class _Mode(TorchFunctionMode):
    def __init__(self, session: _Session):
        super().__init__()
        self.session = session

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        s = self.session
        keep = s.buffer is not None and s.quiet == 1
        if (not s.quiet or keep) and (outputs := _tensors(out)):
            step = classify_function(func, args, kwargs, lambda v: isinstance(v, torch.Tensor))
            call = (step, s.stack[-1][0] if s.stack else "", _tensors((args, kwargs)), outputs)
            s.buffer.append(call) if keep else s.tracker.function(*call)
        return out


class _Session:
    """Module stack, atomic depth and completed modules of one discovery run.

    The function calls inside a parameter-free leaf are kept in ``buffer``: if the leaf
    turns out not to be an activation (a SwiGLU module halves its input), they are replayed
    to the tracker, so the moment rules see its ``chunk`` and product.
    """

    def __init__(self, model: nn.Module, tracker):
        self.tracker, self.stack, self.completed, self.quiet = tracker, [], [], 0
        self.steps = {m: (n, classify_module(m)) for n, m in model.named_modules()}
        self.buffer: list | None = None

    def pre(self, module, args, kwargs):
        name, step = self.steps[module]
        self.stack.append((name, step))
        if step is not None and step.kind == "leaf" and not self.quiet:
            self.buffer = []
        self.quiet += step is not None

    def post(self, module, args, kwargs, output):
        name, step = self.stack.pop()
        self.completed.append(name)
        if step is None:
            return
        self.quiet -= 1
        if not self.quiet:
            buffered, self.buffer = self.buffer, None
            inputs, outputs = _tensors((args, kwargs)), _tensors(output)
            leaf = _leaf(step, inputs, outputs)
            self.quiet += 1  # the tracker's own torch calls (moment quadratures) are not the model's
            try:
                if step.kind == "leaf" and leaf.kind == "pass" and buffered:
                    for call in buffered:
                        self.tracker.function(*call)
                    if all(self.tracker.store.get(o) is not None for o in outputs):
                        return
                self.tracker.module(name, leaf, inputs, outputs)
            finally:
                self.quiet -= 1


def _leaf(step: Step, inputs: list, outputs: list) -> Step:
    """A custom parameter-free leaf is an activation if it keeps its one input's shape."""
    if step.kind != "leaf":
        return step
    same = len(inputs) == len(outputs) == 1 and inputs[0].shape == outputs[0].shape
    return Step("activation" if same else "pass", step.label, step.spec)


@contextlib.contextmanager
def _hooks(model: nn.Module, session: _Session) -> Iterator[None]:
    handles = []
    try:
        for m in session.steps:
            handles.append(m.register_forward_pre_hook(session.pre, with_kwargs=True))
            handles.append(m.register_forward_hook(session.post, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _shape_only(model: nn.Module) -> Iterator[None]:
    """Plain ``nn.Linear`` layers answer with zeros of their output's shape.

    Discovery needs the data flow, not the values, and the values in a discovery run come
    from weights about to be overwritten. A large model's forward on a small input is
    dominated by reading those weights (a 99M-parameter transformer on 8 tokens: ~50 ms,
    two thirds of it in its Linear layers). An input the layer would reject (wrong size,
    dtype or device) takes the real forward, which raises as it would.
    """
    patched = [m for m in _plain_linears(model) if "forward" not in vars(m)]
    try:
        for m in patched:
            m.forward = functools.partial(_linear_shape, m)
        yield
    finally:
        for m in patched:
            vars(m).pop("forward", None)


def _plain_linears(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).forward is nn.Linear.forward]


def _linear_shape(layer: nn.Linear, input: object) -> torch.Tensor:
    w = layer.weight
    if (not isinstance(input, torch.Tensor) or input.dim() < 1 or input.shape[-1] != layer.in_features
            or input.dtype != w.dtype or input.device != w.device):
        return nn.Linear.forward(layer, input)
    return input.new_zeros((*input.shape[:-1], layer.out_features))


#: inputs at least this large are first run on the meta device (see :func:`run`)
META_MIN_ELEMENTS = 1 << 16
#: plain nn.Linear weights at least this large (elements, together) make a real run try
#: :func:`_shape_only` first (below it, reading them costs well under a millisecond)
SHAPE_ONLY_MIN_ELEMENTS = 1 << 22


def run(model: nn.Module, example_input: object, tracker_type) -> object:
    """Run ``model`` once on ``example_input`` and return the filled tracker.

    For an input of at least META_MIN_ELEMENTS elements the run goes first on the
    ``meta`` device (parameters, buffers and input swapped for meta tensors with
    ``torch.func.functional_call``): the same module calls in the same order, but no
    arithmetic, so its cost is the Python overhead of the ops, whatever the batch or
    resolution (a 20-layer CNN at batch 64: 15 ms on meta against 230 ms for a real
    forward). Meta kernels of some ops are Python decompositions, so for small inputs a
    real run is cheaper (a 100M transformer at 1 x 8 tokens: 60 ms on meta, 25 ms real).
    A forward that cannot run on meta (``.item()``, data-dependent control flow, tensors
    made on a fixed device) is run for real.

    A model that holds DTensor parameters (FSDP2, tensor parallel) runs on ``meta`` first
    whatever its input, on global shapes and without FSDP2's hooks (:mod:`initscope._shard_meta`),
    so that no rank gathers a parameter; the real run is the fallback there too.

    A real run of a model whose plain ``nn.Linear`` weights hold at least
    SHAPE_ONLY_MIN_ELEMENTS values first skips their arithmetic (:func:`_shape_only`). Its
    result stands only if it completes and every weight layer ran: zeros can send
    value-dependent code elsewhere (a mixture-of-experts router, a mask that comes out
    empty), and then a full real run decides. The last real run reports any error.
    """
    if _shard_meta.sharded(model):  # never gather a shard: global shapes on meta (see _shard_meta)
        tracker = _shard_meta.run(model, example_input, lambda state, x: _run(model, state, x, tracker_type)[0])
        if tracker is not None:
            return tracker
    elif sum(t.numel() for t in _tensors(example_input)) >= META_MIN_ELEMENTS:
        try:
            return _run(model, *_on_meta(model, example_input), tracker_type)[0]
        except Exception:  # noqa: BLE001  any failure on meta: the real run decides, and reports
            pass
    if sum(m.weight.numel() for m in _plain_linears(model)) >= SHAPE_ONLY_MIN_ELEMENTS:
        try:
            tracker, completed = _run(model, None, example_input, tracker_type, shape_only=True)
            if _weight_layers(model) <= set(completed):
                return tracker
        except Exception:  # noqa: BLE001  the full run decides, and reports
            pass
    return _run(model, None, example_input, tracker_type)[0]


def _weight_layers(model: nn.Module) -> set[str]:
    """Names of the weight layers a forward calls as modules (not those inside another atomic module)."""
    return {name for name, step in _atomic(model) if step.kind == "layer"}


def _on_meta(model: nn.Module, example_input: object) -> tuple[dict, object]:
    state = {n: torch.empty_like(t, device="meta") for n, t in
             [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]}
    return state, _meta_tree(example_input)


def _meta_tree(obj: object) -> object:
    """The same tuples, lists and dicts with every tensor replaced by a meta tensor of its shape."""
    return map_tensors(obj, lambda t: torch.empty_like(t, device="meta"))


def _run(model: nn.Module, state: dict | None, example_input: object, tracker_type,
         shape_only: bool = False) -> tuple[object, list[str]]:
    """The filled tracker and the modules that completed."""
    tracker = tracker_type(_TensorStore(), ("observed", "traced"))
    session = _Session(model, tracker)
    tracker.input(_tensors(example_input))
    quick = _shape_only(model) if shape_only else contextlib.nullcontext()
    with preserved(model), torch.no_grad(), _hooks(model, session), quick:
        try:
            with _Mode(session):
                out = call(model, example_input) if state is None else _functional(model, state, example_input)
        except Exception as exc:
            raise _forward_error(model, session, exc) from exc
    tracker.output(_tensors(out))
    return tracker, session.completed


def _functional(model: nn.Module, state: dict, x: object) -> object:
    args, kwargs = split_inputs(x)
    return torch.func.functional_call(model, state, args, kwargs, tie_weights=True)


def _forward_error(model: nn.Module, session: _Session, exc: Exception) -> ForwardError:
    layer = session.stack[-1][0] if session.stack and session.stack[-1][0] else None
    kind = type(model.get_submodule(layer)).__name__ if layer else type(model).__name__
    done = [n for n in session.completed if n]
    where = f"`{layer}` ({kind})" if layer else f"the top-level forward of {kind}"
    tail = ", ".join(done[-5:]) or "none"
    return ForwardError(
        f"example_input failed in {where}: {type(exc).__name__}: {exc}; layers completed before it: "
        f"{tail}{' (last 5 of %d)' % len(done) if len(done) > 5 else ''}; fix: pass an input the model "
        "accepts (a tuple is unpacked as positional arguments, a dict as keyword arguments)",
        layer=layer, completed=done)


# --- without example_input ---------------------------------------------------------------
class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if classify_module(m) is not None:
            return True
        return super().is_leaf_module(m, qualname) and not any(True for _ in m.children())


def _fx(model: nn.Module, tracker) -> None:
    graph = _Tracer().trace(model)
    is_node = lambda v: isinstance(v, torch.fx.Node)  # noqa: E731
    for node in graph.nodes:
        values = [v for v in leaves((node.args, node.kwargs)) if is_node(v)]
        if node.op == "placeholder":
            tracker.input([node])
        elif node.op == "output":
            tracker.output(values)
        elif node.op == "call_module":
            module = model.get_submodule(node.target)
            step = classify_module(module) or _torch_leaf(module, values)
            step = Step("activation", step.label, step.spec) if step.kind == "leaf" else step
            tracker.module(node.target, step, values, [node])
        elif node.op in ("call_function", "call_method"):
            stack = node.meta.get("nn_module_stack") or {}
            where = next(reversed(stack), "") if stack else ""
            tracker.function(classify_function(node.target, node.args, node.kwargs, is_node), where, values, [node])


def _torch_leaf(module: nn.Module, values: list) -> Step:
    """A torch.nn leaf without a step of its own, as the function it calls: GLU, Softmax and
    Softmin have moment rules, dropout passes (with its rule), other softmax-like ones are ops."""
    name = type(module).__name__
    x = tuple(values[:1])
    if isinstance(module, (nn.GLU, nn.Softmax, nn.Softmin)):
        function = "glu" if isinstance(module, nn.GLU) else name.lower()
        return Step("rule", name, call=(function, function, x, {"dim": module.dim}))
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return Step("pass", name, call=("dropout", "dropout", (*x, module.p, module.training), {}))
    return Step("op" if "Softm" in name else "pass", name)


def _atomic(model: nn.Module) -> Iterator[tuple[str, Step]]:
    """Atomic modules in registration order, leaving out those inside another atomic module."""
    atomic: tuple[str, ...] = ()
    for name, module in model.named_modules():
        step = classify_module(module)
        if step is None or any(name.startswith(a + ".") for a in atomic):
            continue
        atomic += (name,)
        yield name, step


def _order(model: nn.Module, tracker) -> None:
    previous = object()
    tracker.input([previous])
    for name, step in _atomic(model):
        out = object()
        step = Step("activation", step.label, step.spec) if step.kind == "leaf" else step
        tracker.module(name, step, [previous], [out])
        previous = out
    tracker.output([previous])


def fallback(model: nn.Module, tracker_type) -> tuple[object, str]:
    """fx when the model traces, else registration order: (tracker, "fx" or "order")."""
    tracker = tracker_type(_DictStore(), ("assumed", "assumed"))
    try:
        _fx(model, tracker)
        return tracker, "fx"
    except Exception:  # fx cannot trace data-dependent control flow and more; fall back
        tracker = tracker_type(_DictStore(), ("assumed", "assumed"))
        _order(model, tracker)
        return tracker, "order"
