"""What one step of a forward pass is, as graph discovery sees it.

:func:`classify_module` decides whether a module is *atomic* (a weight layer, a
normalization, an activation, a parameter-free custom leaf) or is traced
through; :func:`classify_function` sorts the torch functions a custom forward
calls: activations (``F.relu``, ``torch.tanh``, ``x.relu()``, in-place
variants), normalizations, additions, pass-through ops (shapes, dropout,
pooling), ops with a moment rule (:mod:`initscope.oprules`: products, ``glu``, softmax,
matmul, your own), and everything else ("op": its second moment is unknown, gain 1).

Functions are matched by name (``relu_`` -> ``relu``, ``__iadd__`` -> ``add``),
so the same table serves a real run under a torch function mode and a
``torch.fx`` graph, whose ``call_method`` targets are names.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Step", "LAYER_TYPES", "classify_module", "classify_function", "function_name", "leaves"]


@dataclass(frozen=True)
class Step:
    """One classified step. ``kind``: layer, norm, activation, leaf, add, merge, pass, rule, op.

    ``spec``/``param`` are what :func:`initscope.moments` takes, for activations; ``call`` is
    (name, raw name, args, kwargs) of a function call, for the moment rules of
    :mod:`initscope.oprules` ("rule": an op with a rule, "op": one without).
    """

    kind: str
    label: str
    spec: object = None
    param: float | None = None
    call: tuple | None = field(default=None, compare=False, repr=False)


LAYER_TYPES: tuple[type, ...] = (
    nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d, nn.Embedding, nn.EmbeddingBag, nn.MultiheadAttention, nn.RNNBase, nn.RNNCellBase,
)
_NORM_TYPES: tuple[type, ...] = tuple(getattr(nn, n) for n in (
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "InstanceNorm1d", "InstanceNorm2d",
    "InstanceNorm3d", "LayerNorm", "GroupNorm", "RMSNorm", "LocalResponseNorm") if hasattr(nn, n))
_NOT_ELEMENTWISE = (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.GLU, nn.MultiheadAttention)


def _direct(module: nn.Module) -> list[torch.Tensor]:
    return [p for _, p in module.named_parameters(recurse=False)]


def _is_custom_norm(module: nn.Module) -> bool:
    """A user's normalization (``RMSNorm``, ``LayerNorm2d``, ...): 'Norm' in the class name,
    only 1-D parameters, no children."""
    params = _direct(module)
    return ("Norm" in type(module).__name__ and bool(params) and all(p.dim() == 1 for p in params)
            and not any(True for _ in module.children()))


def _label(module: nn.Module) -> str:
    extra = ", ".join(p for p in module.extra_repr().split(", ") if p not in ("", "inplace=True", "approximate='none'"))
    return f"{type(module).__name__}({extra})" if extra else type(module).__name__


def classify_module(module: nn.Module) -> Step | None:
    """The step an atomic module is, or None for a module to trace through.

    Custom modules with a matrix parameter and no parameterized children are read as
    weight layers; custom parameter-free, buffer-free leaves as ``leaf`` (an activation
    when they keep their input's shape, else pass-through: decided after the call).
    """
    if isinstance(module, LAYER_TYPES):
        return Step("layer", type(module).__name__)
    if isinstance(module, _NORM_TYPES) or _is_custom_norm(module):
        return Step("norm", type(module).__name__)
    if type(module).__module__ == "torch.nn.modules.activation" and not isinstance(module, _NOT_ELEMENTWISE):
        return Step("activation", _label(module), module)
    if type(module).__module__.startswith("torch."):
        return None
    if any(p.dim() >= 2 for p in _direct(module)) and not any(
            True for c in module.children() for _ in c.parameters()):
        return Step("layer", type(module).__name__)
    if not any(True for _ in module.children()) and not _direct(module) and not any(
            True for _ in module.buffers(recurse=False)):
        return Step("leaf", _label(module), module)
    return None


# --- functions ------------------------------------------------------------------------
_PARAM = {"leaky_relu": 0.01, "elu": 1.0, "celu": 1.0, "softplus": 1.0}
_NAMED = {"relu", "relu6", "tanh", "sigmoid", "silu", "selu", "mish", "hardswish", "hardsigmoid",
          "gelu", "hardtanh", *_PARAM}
_OTHER_ACTS = {"softsign", "tanhshrink", "logsigmoid", "softshrink", "hardshrink", "threshold", "rrelu",
               "sin", "cos", "erf"}
_NORMS = {"layer_norm", "batch_norm", "group_norm", "instance_norm", "rms_norm", "local_response_norm"}
_PASS = {
    "view", "reshape", "flatten", "unflatten", "ravel", "permute", "transpose", "t", "contiguous", "squeeze",
    "unsqueeze", "getitem", "expand", "expand_as", "view_as", "reshape_as", "repeat", "tile", "narrow",
    "select", "flip", "roll", "movedim", "moveaxis", "swapaxes", "swapdims", "chunk", "split", "unbind",
    "tensor_split", "cat", "concat", "concatenate", "stack", "hstack", "vstack", "clone", "detach", "to",
    "float", "double", "half", "bfloat16", "type", "type_as", "cpu", "cuda", "get", "getattr",
    "requires_grad_", "size", "dim", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "pad", "interpolate", "upsample", "pixel_shuffle", "pixel_unshuffle",
    "channel_shuffle", "mean", "amax", "max", "index_select", "gather", "as_strided",
    *(f"{k}_pool{d}d" for k in ("max", "avg", "adaptive_avg", "adaptive_max", "lp") for d in (1, 2, 3)),
    *(f"{k}_pool{d}d_with_indices" for k in ("max", "adaptive_max") for d in (1, 2, 3)),
}
_SCALE = {"mul", "div", "true_divide", "neg"}


def function_name(func: object) -> str:
    """The normalized name of a torch function, method or fx target: ``relu_`` -> ``relu``,
    ``__iadd__``/``__radd__`` -> ``add``, ``Tensor.shape.__get__`` -> ``get``."""
    name = func if isinstance(func, str) else getattr(func, "__name__", type(func).__name__)
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name[:1] in ("i", "r") and name[1:] in ("add", "sub", "mul", "truediv", "div", "matmul"):
            name = name[1:]
        return "div" if name == "truediv" else name
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


def _arg(args: tuple, kwargs: dict, index: int, key: str, default: object) -> object:
    return args[index] if len(args) > index else kwargs.get(key, default)


def _activation(name: str, args: tuple, kwargs: dict) -> Step:
    if name == "gelu":
        tanh = _arg(args, kwargs, 1, "approximate", "none") == "tanh"
        return Step("activation", "gelu(tanh)" if tanh else "gelu", "gelu_tanh" if tanh else "gelu")
    if name == "hardtanh":
        lo, hi = _arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0)
        if (lo, hi) != (-1.0, 1.0):
            return Step("activation", f"hardtanh({lo:g},{hi:g})", functools.partial(F.hardtanh, min_val=lo, max_val=hi))
    if name in _PARAM:
        key = {"leaky_relu": "negative_slope", "softplus": "beta"}.get(name, "alpha")
        value = float(_arg(args, kwargs, 1, key, _PARAM[name]))
        label = name if value == _PARAM[name] else f"{name}({value:g})"
        return Step("activation", label, name, value)
    if name in _NAMED:
        return Step("activation", name, name)
    fn = getattr(F, name, None) or getattr(torch, name)
    extra = {k: v for k, v in kwargs.items() if k not in ("inplace", "out")}
    return Step("activation", name, functools.partial(fn, *args[1:], **extra))


def classify_function(func: object, args: tuple, kwargs: dict, is_value: Callable[[object], bool]) -> Step:
    """Classify one call of a torch function or fx target on ``args``/``kwargs``.

    ``is_value`` says which arguments are traced values (tensors, or fx nodes).
    """
    from initscope.oprules import rule_for  # the rule table imports this module

    name = function_name(func)
    values = sum(1 for a in (*args, *kwargs.values()) for v in leaves(a) if is_value(v))
    if name in _NAMED | _OTHER_ACTS and values == 1 and args and is_value(args[0]):
        return _activation(name, args, kwargs)
    if name in _NORMS:
        return Step("norm", name)
    call = (name, getattr(func, "__name__", str(func)), args, kwargs)
    if name in ("add", "sub") and values >= 2:
        return Step("add" if name == "add" else "merge", name, call=call)
    if name in _PASS or (name in _SCALE | {"add", "sub", "rsub"} and values <= 1):
        return Step("pass", name, call=call)
    return Step("rule" if rule_for(name) else "op", f"torch.{name}", call=call)


def leaves(obj: object):
    """Values inside nested tuples, lists and dicts."""
    if isinstance(obj, (tuple, list)):
        for item in obj:
            yield from leaves(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from leaves(item)
    else:
        yield obj
