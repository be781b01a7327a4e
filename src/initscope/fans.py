"""Layout-aware fans: how many inputs feed a unit, and how many units a unit feeds.

He/Kaiming init sets a weight's variance to ``gain**2 / fan``. With zero-mean
weights of variance ``s2`` and inputs with second moment ``E[h^2]``, a unit that
sums ``fan_in`` terms has ``Var[y] = fan_in * s2 * E[h^2]``; on the backward pass
an input's gradient sums ``fan_out`` terms the same way. The fan is therefore a
count of the terms in a sum, and that count depends on what the layer *does*,
not on where its dimensions sit in the tensor.

``torch.nn.init`` reads the fans off the tensor shape
(``fan_in = shape[1] * prod(shape[2:])``, ``fan_out = shape[0] * prod(shape[2:])``).
That is right for ``Linear`` and plain ``Conv``, and wrong for grouped and strided
convolutions, transposed convolutions (whose weight is laid out ``(in, out, *k)``),
embeddings, and packed parameters (attention's ``in_proj_weight``, RNN gates),
whose rows are several matrices stacked along dim 0. :func:`fan` applies the rule
for the layer and returns one :class:`FanBlock` per stacked matrix.

All functions here read shapes and module attributes only, so they work on
``meta`` tensors and never write.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Union

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from initscope import _validate as check
from initscope.errors import LayerError, ShapeError, UnknownOptionError, choices_message

__all__ = ["FanMode", "FanBlock", "Fan", "tensor_fans", "fan", "fan_value"]

FanMode = Literal["fan_in", "fan_out", "fan_avg", "fan_geo_avg"]
_MODES: dict[str, Callable[[float, float], float]] = {
    "fan_in": lambda i, o: i,
    "fan_out": lambda i, o: o,
    "fan_avg": lambda i, o: (i + o) / 2,
    "fan_geo_avg": lambda i, o: math.sqrt(i * o),
}


def fan_value(fan_in: float, fan_out: float, mode: FanMode) -> float:
    """The fan a mode selects: ``fan_in``, ``fan_out``, their arithmetic mean
    ``fan_avg`` (Glorot/Xavier), or their geometric mean ``fan_geo_avg``.

    Raises:
        UnknownOptionError: ``mode`` is not one of the four names.

    Examples:
        >>> fan_value(4, 9, "fan_avg"), fan_value(4, 9, "fan_geo_avg")
        (6.5, 6.0)
    """
    if mode not in _MODES:
        raise UnknownOptionError(choices_message("fan mode", mode, _MODES, "pass one of these"))
    return float(_MODES[mode](float(fan_in), float(fan_out)))


@dataclass(frozen=True)
class FanBlock:
    """One matrix of a parameter: the rows (along dim 0) it covers and its fans.

    A parameter with a single block names it after the parameter; packed ones
    name their blocks ``q, k, v`` (attention) or after their gates (``i, f, g, o``
    for LSTM, ``r, z, n`` for GRU).
    """

    name: str
    rows: slice
    fan_in: float
    fan_out: float

    def value(self, mode: FanMode) -> float:
        """This block's fan under ``mode`` (see :func:`fan_value`)."""
        return fan_value(self.fan_in, self.fan_out, mode)


@dataclass(frozen=True)
class Fan:
    """The fans of one parameter of one layer, split into its stacked blocks.

    Attributes:
        layer_type: class name of the module that owns the parameter.
        param: the parameter's name in that module.
        shape: the parameter's shape.
        blocks: one :class:`FanBlock` per stacked matrix, in row order.
        fallback: True when no layout rule applied and torch's shape convention was used.
        note: one line saying how the fans were computed.
    """

    layer_type: str
    param: str
    shape: tuple[int, ...]
    blocks: tuple[FanBlock, ...]
    fallback: bool
    note: str

    @property
    def fan_in(self) -> float:
        """The fan-in of a single-block parameter (ShapeError for packed ones)."""
        return self._single().fan_in

    @property
    def fan_out(self) -> float:
        """The fan-out of a single-block parameter (ShapeError for packed ones)."""
        return self._single().fan_out

    def _single(self) -> FanBlock:
        if len(self.blocks) == 1:
            return self.blocks[0]
        names = ", ".join(b.name for b in self.blocks)
        raise ShapeError(
            f"`{self.param}` ({self.layer_type}) packs {len(self.blocks)} blocks ({names}) "
            "with their own fans; read them from `.blocks` instead of `.fan_in`/`.fan_out`"
        )


def tensor_fans(shape_or_tensor: torch.Tensor | Sequence[int]) -> tuple[float, float]:
    """torch's shape convention: ``fan_in = shape[1] * prod(shape[2:])`` and
    ``fan_out = shape[0] * prod(shape[2:])``, as in ``torch.nn.init``.

    Right for ``Linear`` and ungrouped, unstrided ``Conv``; use :func:`fan` for
    layers whose layout differs.

    Raises:
        ShapeError: fewer than 2 dimensions.

    Examples:
        >>> tensor_fans((16, 8, 3, 3))
        (72.0, 144.0)
    """
    is_tensor = isinstance(shape_or_tensor, torch.Tensor)
    shape = tuple(shape_or_tensor.shape if is_tensor else check.shape(shape_or_tensor))
    if len(shape) < 2:
        raise ShapeError(
            f"fans need a tensor with at least 2 dimensions, got shape {shape}; "
            "1-D parameters (biases, norm scales) are initialized from their layer's "
            "weight or with a constant: call fan(module, name) instead"
        )
    receptive = math.prod(shape[2:])
    return float(shape[1] * receptive), float(shape[0] * receptive)


# --- layout rules --------------------------------------------------------------------
# Each rule maps (module, param, shape) to (blocks, note), or None when it does not
# know the parameter.
_Found = Union[tuple[tuple[FanBlock, ...], str], None]
_Rule = Callable[[nn.Module, str, tuple[int, ...]], _Found]


def _one(param: str, shape: tuple[int, ...], fan_in: float, fan_out: float) -> tuple[FanBlock, ...]:
    return (FanBlock(param, slice(0, shape[0]), float(fan_in), float(fan_out)),)


def _stacked(names: Sequence[str], rows: int, fan_in: float, fan_out: float) -> tuple[FanBlock, ...]:
    return tuple(
        FanBlock(n, slice(i * rows, (i + 1) * rows), float(fan_in), float(fan_out))
        for i, n in enumerate(names)
    )


def _linear(m: nn.Linear, param: str, shape: tuple[int, ...]) -> _Found:
    """``y = W x``: each output sums ``in_features`` terms and each input feeds
    ``out_features`` outputs."""
    if param != "weight":
        return None
    note = f"fan_in = in_features = {m.in_features}, fan_out = out_features = {m.out_features}"
    return _one(param, shape, m.in_features, m.out_features), note


def _bilinear(m: nn.Bilinear, param: str, shape: tuple[int, ...]) -> _Found:
    """``y_k = x1^T W_k x2`` sums ``in1 * in2`` terms, so ``fan_in = in1 * in2``.

    Backward, ``dL/dx1`` sums ``out * in2`` terms and ``dL/dx2`` sums
    ``out * in1``: no single fan_out is exact for both inputs. We use the
    geometric mean ``out * sqrt(in1 * in2)``: exact when ``in1 == in2`` (where it
    equals torch's ``out * in2``), and otherwise it leaves the two input
    gradients off by reciprocal factors ``sqrt(in2/in1)`` and ``sqrt(in1/in2)``
    rather than getting one right and the other off by ``in1/in2``.
    Note the forward gain is the product of the producer gains of *both* inputs.
    """
    if param != "weight":
        return None
    i1, i2, out = m.in1_features, m.in2_features, m.out_features
    note = f"fan_in = in1*in2 = {i1 * i2}, fan_out = out*sqrt(in1*in2) = {out * math.sqrt(i1 * i2):g}"
    return _one(param, shape, i1 * i2, out * math.sqrt(i1 * i2)), note


def _conv(m: nn.Module, param: str, shape: tuple[int, ...]) -> _Found:
    """Conv weight ``(out, in/g, *k)``. An output sums ``(in/g) * prod(k)`` terms.
    An input position feeds ``out/g`` channels at ``k/stride`` positions per dim
    (on average over positions), so ``fan_out = (out/g) * prod(k) / prod(stride)``.
    Dilation spreads the taps but does not change their number.

    Differs from torch, whose ``fan_out = out * prod(k)`` ignores groups and
    stride: ``groups * prod(stride)`` times too large (``channels`` times for depthwise).
    """
    if param != "weight":
        return None
    k, s, g = math.prod(m.kernel_size), math.prod(m.stride), m.groups
    fan_in, fan_out = m.in_channels // g * k, m.out_channels // g * k / s
    note = (f"fan_in = in/groups*prod(k) = {fan_in}, "
            f"fan_out = out/groups*prod(k)/prod(stride) = {fan_out:g}")
    return _one(param, shape, fan_in, fan_out), note


def _conv_transpose(m: nn.Module, param: str, shape: tuple[int, ...]) -> _Found:
    """ConvTranspose weight ``(in, out/g, *k)``. An output position receives
    ``(in/g) * k/stride`` taps per dim (on average), so
    ``fan_in = (in/g) * prod(k) / prod(stride)``; an input feeds
    ``(out/g) * prod(k)`` outputs, so ``fan_out = (out/g) * prod(k)``.

    Differs from torch, which reads ``fan_in = shape[1] * prod(k) = (out/g) * prod(k)``,
    the true fan_out, because the layout is transposed.
    """
    if param != "weight":
        return None
    k, s, g = math.prod(m.kernel_size), math.prod(m.stride), m.groups
    fan_in, fan_out = m.in_channels // g * k / s, m.out_channels // g * k
    note = (f"fan_in = in/groups*prod(k)/prod(stride) = {fan_in:g}, "
            f"fan_out = out/groups*prod(k) = {fan_out}")
    return _one(param, shape, fan_in, fan_out), note


def _embedding(m: nn.Embedding, param: str, shape: tuple[int, ...]) -> _Found:
    """A lookup is ``one_hot(i) @ W``: one nonzero input, so ``fan_in = 1`` and
    ``std = gain`` (torch's N(0, 1) default is the gain-1 case). Each one-hot
    coordinate feeds ``embedding_dim`` outputs: ``fan_out = embedding_dim``.
    torch's shape convention would give ``fan_in = embedding_dim``.
    """
    if param != "weight":
        return None
    note = f"lookup = one-hot matmul: fan_in = 1, fan_out = embedding_dim = {m.embedding_dim}"
    return _one(param, shape, 1, m.embedding_dim), note


def _attention(m: nn.MultiheadAttention, param: str, shape: tuple[int, ...]) -> _Found:
    """``in_proj_weight`` stacks the ``E x E`` q, k and v projections: three blocks
    with ``fan_in = fan_out = E``. Separate ``{q,k,v}_proj_weight`` (when kdim or
    vdim differ) are ``E x dim`` each, and ``in_proj_bias`` still stacks all three.
    ``out_proj`` is a Linear child."""
    e = m.embed_dim
    dims = {"q": e, "k": m.kdim, "v": m.vdim}
    if param in ("in_proj_weight", "in_proj_bias"):
        blocks = tuple(FanBlock(n, slice(i * e, (i + 1) * e), float(d), float(e))
                       for i, (n, d) in enumerate(dims.items()))
        fans_in = tuple(dims.values())
        return blocks, f"packed q,k,v: 3 blocks of {e} rows, fan_in = {fans_in}, fan_out = E = {e}"
    name = param.removesuffix("_proj_weight")
    if name == param or name not in dims:
        return None
    note = f"fan_in = {name} input dim = {dims[name]}, fan_out = E = {e}"
    return _one(param, shape, dims[name], e), note


_GATES = {"LSTM": "ifgo", "GRU": "rzn", "RNN_TANH": "", "RNN_RELU": ""}
_RNN_PARAM = re.compile(r"weight_(ih|hh|hr)_l(\d+)(_reverse)?")


def _gate_blocks(param: str, gates: str, hidden: int, fan_in: int) -> _Found:
    """One block per gate: each gate is its own ``hidden x fan_in`` matrix."""
    blocks = _stacked(gates or (param,), hidden, fan_in, hidden)
    label = f"{len(blocks)} gate blocks ({','.join(gates)})" if gates else "one gate"
    return blocks, f"{label} of {hidden} rows, fan_in = columns = {fan_in}, fan_out = hidden = {hidden}"


def _rnn(m: nn.RNNBase, param: str, shape: tuple[int, ...]) -> _Found:
    """``weight_ih_l{k}`` / ``weight_hh_l{k}`` stack one ``hidden x columns``
    matrix per gate; ``weight_hr_l{k}`` (LSTM projection) is ``proj x hidden``.
    A layer above the first reads ``num_directions * (proj_size or hidden)`` inputs."""
    match, gates = _RNN_PARAM.fullmatch(param), _GATES.get(m.mode)
    if match is None or gates is None:
        return None
    kind, layer = match[1], int(match[2])
    h, p = m.hidden_size, m.proj_size
    if kind == "hr":
        return _one(param, shape, h, p), f"projection: fan_in = hidden = {h}, fan_out = proj_size = {p}"
    below = (p or h) * (2 if m.bidirectional else 1)
    fan_in = (m.input_size if layer == 0 else below) if kind == "ih" else (p or h)
    return _gate_blocks(param, gates, h, fan_in)


def _rnn_cell(m: nn.RNNCellBase, param: str, shape: tuple[int, ...]) -> _Found:
    """Cells stack their gates as the full RNNs do (see ``_rnn``)."""
    columns = {"weight_ih": m.input_size, "weight_hh": m.hidden_size}
    if param not in columns:
        return None
    gates = {nn.LSTMCell: "ifgo", nn.GRUCell: "rzn"}.get(type(m), "")
    return _gate_blocks(param, gates, m.hidden_size, columns[param])


def _transposed_linear(m: nn.Module, param: str, shape: tuple[int, ...]) -> _Found:
    """transformers' ``Conv1D`` (GPT, GPT-2): ``y = x @ W + b`` with ``W`` stored ``(nx, nf)``,
    i.e. ``(in, out)``, the transpose of ``Linear``. Each output sums ``nx`` terms, so
    ``fan_in = nx = shape[0]`` and ``fan_out = nf = shape[1]``.

    Differs from torch's shape convention, which reads ``fan_in = shape[1] = nf``: for
    GPT-2's ``c_fc`` (768 -> 3072) that is 4x too large a fan_in (std 2x too small), for
    ``c_proj`` (3072 -> 768) 4x too small. GPT-2's ``c_attn`` packs q, k, v along the
    columns; they share ``fan_in = nx``, so one block covers them.
    """
    if param != "weight" or len(shape) != 2:
        return None
    nx, nf = shape
    note = f"weight stored (in, out): fan_in = nx = {nx}, fan_out = nf = {nf}"
    return _one(param, shape, nx, nf), note


def is_transposed_linear(m: nn.Module) -> bool:
    """transformers' ``Conv1D``, recognised without importing transformers: its class name,
    its ``nx``/``nf`` and a weight of shape ``(nx, nf)``."""
    w = getattr(m, "weight", None)
    return (type(m).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and not is_lazy(w)
            and tuple(w.shape) == (getattr(m, "nx", None), getattr(m, "nf", None)))


def _experts(m: nn.Module, param: str, shape: tuple[int, ...]) -> _Found:
    """transformers' stacked experts (Mixtral, Qwen-MoE, ...): one ``(out, in)`` matrix per expert
    along dim 0, ``(in, out)`` when the module says ``is_transposed``. A token routed to an
    expert meets that expert's matrix alone, so the fans are those of one expert:
    ``fan_in = in``, ``fan_out = out`` (routing to top-k experts is not counted in fan_out).

    Differs from torch's shape convention, which reads ``fan_in = shape[1] * shape[2]``:
    ``out`` times too large a fan_in.
    """
    if len(shape) != 3 or "bias" in param.split("_"):
        return None
    n_in, n_out = (shape[1], shape[2]) if getattr(m, "is_transposed", False) else (shape[2], shape[1])
    note = f"{shape[0]} stacked experts, each a matrix: fan_in = {n_in}, fan_out = {n_out}"
    return _one(param, shape, n_in, n_out), note


def is_stacked_experts(m: nn.Module) -> bool:
    """transformers' experts module: ``num_experts`` and ``is_transposed`` attributes and 3-D
    parameters with one matrix per expert along dim 0."""
    n = getattr(m, "num_experts", None)
    params = [p for p in m.parameters(recurse=False) if p.dim() == 3 and not is_lazy(p)]
    return isinstance(n, int) and hasattr(m, "is_transposed") and bool(params) and \
        all(p.shape[0] == n for p in params)


def _not_fan_initialized(m: nn.Module, param: str, shape: tuple[int, ...]) -> _Found:
    """Normalization scales/shifts and PReLU slopes act elementwise: nothing is
    summed, so the fans are 1. They are set to constants, not from a fan."""
    return _one(param, shape, 1, 1), "elementwise: fans 1, not fan-initialized (set to a constant)"


_NORMS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "InstanceNorm1d",
          "InstanceNorm2d", "InstanceNorm3d", "LayerNorm", "GroupNorm", "RMSNorm", "PReLU")
_RULES: dict[type, _Rule] = {
    nn.Linear: _linear, nn.Bilinear: _bilinear, nn.Embedding: _embedding,
    nn.Conv1d: _conv, nn.Conv2d: _conv, nn.Conv3d: _conv,
    nn.ConvTranspose1d: _conv_transpose, nn.ConvTranspose2d: _conv_transpose,
    nn.ConvTranspose3d: _conv_transpose, nn.MultiheadAttention: _attention,
    nn.RNNBase: _rnn, nn.RNNCellBase: _rnn_cell,
    **{getattr(nn, n): _not_fan_initialized for n in _NORMS if hasattr(nn, n)},
}


# --- fan() -----------------------------------------------------------------------------
def _parameter(module: nn.Module, param: str) -> tuple[nn.Module, str, tuple[int, ...]]:
    """Resolve a (possibly dotted) name to its owning module, local name and shape."""
    owner_name, _, local = param.rpartition(".")
    try:
        owner = module.get_submodule(owner_name)
        tensor = dict(owner.named_parameters(recurse=False)).get(local)
    except AttributeError:
        owner, tensor = module, None
    if tensor is None:
        known = ", ".join(n for n, _ in module.named_parameters()) or "none"
        raise LayerError(f"{type(module).__name__} has no parameter {param!r}; "
                         f"its parameters: {known}; pass one of these names")
    if is_lazy(tensor):
        raise LayerError(f"`{param}` ({type(owner).__name__}) is not materialized yet; "
                         "run one forward pass before asking for its fans")
    return owner, local, tuple(tensor.shape)


def _rule(module: nn.Module) -> _Rule | None:
    if is_transposed_linear(module):
        return _transposed_linear
    if is_stacked_experts(module):
        return _experts
    return next((_RULES[c] for c in type(module).__mro__ if c in _RULES), None)


def _from_weight(module: nn.Module, param: str, shape: tuple[int, ...]) -> Fan | None:
    """A bias shares the blocks and fans of its weight (``bias_ih_l0`` <- ``weight_ih_l0``)."""
    parts = param.split("_")
    if "bias" not in parts or not shape:
        return None
    weight = "_".join("weight" if p == "bias" else p for p in parts)
    if weight not in dict(module.named_parameters(recurse=False)):
        return None
    w = fan(module, weight)
    blocks = w.blocks
    if len(blocks) == 1:  # e.g. a ConvTranspose bias has out rows, its weight in rows
        blocks = (replace(blocks[0], name=param, rows=slice(0, shape[0])),)
    if blocks[-1].rows.stop != shape[0]:
        return None
    return Fan(w.layer_type, param, shape, blocks, w.fallback, f"from `{weight}`: {w.note}")


def _fallback(module: nn.Module, param: str, shape: tuple[int, ...], known: bool) -> Fan:
    layer = type(module).__name__
    why = f"no rule for {param!r} of {layer}" if known else f"unknown layer type {layer}"
    try:
        fan_in, fan_out = tensor_fans(shape)
    except ShapeError as error:
        raise ShapeError(f"`{param}` ({layer}): {error}") from None
    note = f"{why}: torch's shape convention, fan_in = {fan_in:g}, fan_out = {fan_out:g}"
    return Fan(layer, param, shape, _one(param, shape, fan_in, fan_out), True, note)


def fan(module: nn.Module, param: str = "weight") -> Fan:
    """The fans of ``module``'s parameter ``param``, by what the layer computes.

    Each fan counts the terms of a sum (see the module docstring); the reasoning
    for each layer is in the docstring of its rule (``_conv``, ``_embedding``, ...):

    ====================  ================================  ================================
    layer                 fan_in                            fan_out
    ====================  ================================  ================================
    Linear                in_features                       out_features
    HF Conv1D (in, out)   nx = shape[0]                     nf = shape[1]
    HF experts (E, o, i)  i, per expert                     o, per expert
    Bilinear              in1 * in2                         out * sqrt(in1 * in2)
    Conv1d/2d/3d          (in/g) * prod(k)                  (out/g) * prod(k) / prod(stride)
    ConvTranspose1-3d     (in/g) * prod(k) / prod(stride)   (out/g) * prod(k)
    Embedding             1 (a lookup is one-hot)           embedding_dim
    MultiheadAttention    q, k, v blocks: input dim         embed_dim
    RNN/LSTM/GRU, cells   one block per gate: columns       hidden_size
    norms, PReLU          1 (elementwise)                   1
    ====================  ================================  ================================

    A bias gets the blocks of its weight (torch's default bias bound is
    ``1/sqrt(fan_in)``). Anything else falls back to :func:`tensor_fans` with
    ``fallback=True``. Subclasses use their base class's rule. ``param`` may be
    dotted (``"out_proj.weight"``). Only shapes and module attributes are read.

    Raises:
        LayerError: no such parameter, or a lazy parameter not yet materialized.
        ShapeError: a fallback on a parameter with fewer than 2 dimensions.

    Examples:
        >>> f = fan(nn.Conv2d(32, 32, 3, stride=2, groups=32, device="meta"))
        >>> f.fan_in, f.fan_out, tensor_fans(f.shape)
        (9.0, 2.25, (9.0, 288.0))
        >>> [(b.name, b.rows, b.fan_in) for b in fan(nn.GRU(5, 8), "weight_ih_l0").blocks]
        [('r', slice(0, 8, None), 5.0), ('z', slice(8, 16, None), 5.0), ('n', slice(16, 24, None), 5.0)]
    """
    check.module(module, "fan")
    owner, param, shape = _parameter(module, param)
    rule = _rule(owner)
    found = rule(owner, param, shape) if rule else None
    if found is not None:
        return Fan(type(owner).__name__, param, shape, found[0], False, found[1])
    return _from_weight(owner, param, shape) or _fallback(owner, param, shape, rule is not None)
