"""Initialize one layer with its layout-aware fans: :func:`init_layer_`.

Packed parameters (attention's ``in_proj_weight``, RNN gate matrices) are
initialized block by block, each with its own fans. Biases become 0,
normalization scales 1. The call returns a :class:`LayerInit` record of what it
did, never None.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from initscope import _validate as check
from initscope.errors import LayerError, ShapeError, UnknownOptionError, choices_message
from initscope.fans import Fan, fan
from initscope.init import (
    DISTRIBUTIONS, MODES, Convention, Distribution, Mode, _fill, delta_orthogonal_, gains, scaled_std,
)
from initscope.moments import ActivationLike

__all__ = ["SCHEMES", "BlockInit", "LayerInit", "init_layer_"]

Scheme = Literal["kaiming", "xavier", "lecun", "orthogonal", "delta_orthogonal"]
# scheme -> (default mode, default distribution, default nonlinearity)
SCHEMES: dict[str, tuple[str, str, ActivationLike | None]] = {
    "kaiming": ("fan_in", "normal", "relu"),
    "xavier": ("fan_avg", "normal", None),
    "lecun": ("fan_in", "truncated_normal", None),
    "orthogonal": ("fan_in", "orthogonal", None),
    "delta_orthogonal": ("fan_in", "orthogonal", None),
}
_AUTO = "auto"


@dataclass(frozen=True)
class BlockInit:
    """What was written into one block of one parameter."""

    param: str
    block: str
    rows: tuple[int, int]
    fan_in: float
    fan_out: float
    mode: str
    gain: float            # std * sqrt(fan used by the mode): the effective gain
    std: float
    bound: float | None    # for uniform
    distribution: str      # normal, truncated_normal, uniform, orthogonal, delta_orthogonal, zeros, ones
    note: str = ""


@dataclass(frozen=True)
class LayerInit:
    """The record :func:`init_layer_` returns: one :class:`BlockInit` per block written."""

    layer_type: str
    scheme: str
    blocks: tuple[BlockInit, ...]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"layer_type": self.layer_type, "scheme": self.scheme, "blocks": [asdict(b) for b in self.blocks]}

    def __repr__(self) -> str:
        lines = [f"LayerInit({self.layer_type}, scheme={self.scheme!r})"]
        for b in self.blocks:
            what = b.distribution if b.distribution in ("zeros", "ones", "unchanged") else \
                f"{b.distribution} std={b.std:.4g} gain={b.gain:.4g} fan_in={b.fan_in:g} fan_out={b.fan_out:g}"
            lines.append(f"  {b.param}[{b.block}] {what}")
        return "\n".join(lines)


def _is_norm_scale(module: nn.Module, name: str) -> bool:
    """Normalization scales act elementwise (fans.py says so in its note); a PReLU slope does
    too but is an activation parameter, left as it is."""
    if isinstance(module, nn.PReLU):
        return False
    try:
        return fan(module, name).note.startswith("elementwise")
    except ShapeError:
        return False


def _constant(param: str, shape: tuple[int, ...], value: float | None, note: str) -> BlockInit:
    name = {0.0: "zeros", 1.0: "ones", None: "unchanged"}[value]
    return BlockInit(param, param, (0, shape[0] if shape else 1), 1.0, 1.0, "-", 0.0, 0.0, None, name, note)


def _write_blocks(p: torch.Tensor, f: Fan, scheme: str, mode: str, distribution: str,
                  g: tuple[float, float], generator: torch.Generator | None) -> list[BlockInit]:
    out = []
    for block in f.blocks:
        std = scaled_std(block.fan_in, block.fan_out, mode, *g)
        view = p[block.rows]
        if scheme == "delta_orthogonal":
            shape = view.shape
            delta_orthogonal_(view, std * math.sqrt(max(shape[0], shape[1])), generator)
        else:
            _fill(view, std, distribution, generator)
        used = block.value(mode)
        bound = math.sqrt(3.0) * std if distribution == "uniform" else None
        dist = "delta_orthogonal" if scheme == "delta_orthogonal" else distribution
        out.append(BlockInit(f.param, block.name, (block.rows.start, block.rows.stop), block.fan_in,
                             block.fan_out, mode, std * math.sqrt(used), std, bound, dist, f.note))
    return out


def _resolve(module: nn.Module, scheme: str, mode: str | None, distribution: str | None, nonlinearity):
    if scheme not in SCHEMES:
        raise UnknownOptionError(choices_message("scheme", scheme, SCHEMES, "or use initscope.init functions"))
    d_mode, d_dist, d_nl = SCHEMES[scheme]
    mode, distribution = mode or d_mode, distribution or d_dist
    if mode not in MODES:
        raise UnknownOptionError(choices_message("mode", mode, MODES))
    if distribution not in DISTRIBUTIONS:
        raise UnknownOptionError(choices_message("distribution", distribution, DISTRIBUTIONS))
    if scheme == "delta_orthogonal" and not isinstance(module, nn.modules.conv._ConvNd):
        raise LayerError(
            f"scheme 'delta_orthogonal' needs a convolution; got {type(module).__name__}; "
            "use scheme='orthogonal' for other layers")
    return mode, distribution, d_nl if nonlinearity == _AUTO else nonlinearity


def init_layer_(
    module: nn.Module, scheme: Scheme = "kaiming", nonlinearity: ActivationLike | None = _AUTO,
    mode: Mode | None = None, distribution: Distribution | None = None,
    generator: torch.Generator | None = None, *, convention: Convention = "variance",
    param: float | None = None, bias: Literal["zeros", "keep"] = "zeros",
) -> LayerInit:
    """Initialize one layer's own parameters in place, block by block.

    Args:
        module: the layer (its direct parameters only; children are not touched).
        scheme: kaiming, xavier, lecun, orthogonal or delta_orthogonal (convs).
        nonlinearity: the activation, read as in :mod:`initscope.init` (fan_in: the one
            that produced the input; fan_out: the one after the layer). ``"auto"``:
            relu for kaiming, none (gain 1) for the others.
        mode: fan_in, fan_out, fan_avg, fan_geo_avg; default per scheme (xavier: fan_avg).
        distribution: normal, truncated_normal, uniform, orthogonal; default per scheme.
        generator: the random generator; None uses torch's global one.
        convention: "variance" or "torch" (torch's gain table).
        param: the activation's parameter (leaky_relu slope, ...).
        bias: "zeros" sets biases to 0; "keep" leaves them.

    Returns:
        A :class:`LayerInit` with, per block, the fans, gain, std (or bound) and distribution.

    Raises:
        UnknownOptionError: a bad scheme, mode or distribution.
        LayerError: delta_orthogonal on a layer that is not a convolution.

    Examples:
        >>> rec = init_layer_(nn.LSTM(8, 16), generator=torch.Generator().manual_seed(0))
        >>> [b.block for b in rec.blocks[:4]]
        ['i', 'f', 'g', 'o']
    """
    check.layer_params(module, "init_layer_")
    mode, distribution, nonlinearity = _resolve(module, scheme, mode, distribution, nonlinearity)
    g = gains(nonlinearity, mode, param=param, convention=convention)
    blocks: list[BlockInit] = []
    for name, p in module.named_parameters(recurse=False):
        if p.dim() >= 2:
            blocks += _write_blocks(p, fan(module, name), scheme, mode, distribution, g, generator)
        elif "bias" in name.split("_"):
            if bias == "zeros":
                with torch.no_grad():
                    p.zero_()
            blocks.append(_constant(name, tuple(p.shape), 0.0 if bias == "zeros" else None, f"bias: {bias}"))
        elif name == "weight" and _is_norm_scale(module, name):
            with torch.no_grad():
                p.fill_(1.0)
            blocks.append(_constant(name, tuple(p.shape), 1.0, "normalization scale set to 1"))
        else:
            blocks.append(_constant(name, tuple(p.shape), None, "no rule for this parameter: left as it was"))
    return LayerInit(type(module).__name__, scheme, tuple(blocks))
