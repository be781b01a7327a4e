"""The built-in moment rules; their derivations are in :mod:`initscope.oprules`.

A rule takes a :class:`Call` and returns an :class:`Outcome` (the output signals and, for
each traced operand, the backward factor and its words, or None where the backward chain is
not followed), or None when it does not apply to this call (an untraced operand, operands
that share inputs): then the op counts as one without a rule.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from initscope._signal import Signal, combine, gaussian, wrap

__all__ = ["Call", "Outcome", "BUILTIN", "product", "total"]


@dataclass
class Call:
    """One call as the tracker saw it; ``values`` are its tensor arguments in order."""

    name: str
    raw: str
    args: tuple
    kwargs: dict
    values: list
    sig: Callable[[object], Signal | None]
    shape: Callable[[object], tuple | None]
    outputs: int = 1

    def arg(self, index: int, key: str, default: object) -> object:
        return self.args[index] if len(self.args) > index else self.kwargs.get(key, default)


@dataclass
class Outcome:
    """Output signals (one, or one per output) and per-operand backward (factor, words) or None."""

    signals: list[Signal]
    back: list[tuple[float, str] | None]


def _same(call: Call, x: Signal) -> Outcome:
    return Outcome([x], [(1.0, "")] * len(call.values))


def _real(a: object) -> float | None:
    """``a`` as a number: a Python or numpy real (not a bool), or a 0-d tensor with a value."""
    if isinstance(a, numbers.Real) and not isinstance(a, (bool, np.bool_)):
        return float(a)
    if isinstance(a, torch.Tensor) and a.dim() == 0 and not a.is_meta and not a.is_complex():
        return float(a)
    return None


def _one(call: Call) -> tuple[Signal | None, float | None]:
    """The one traced operand and the one number of a scalar op (x * c, x + d, ``other=`` too)."""
    sigs = [s for s in map(call.sig, call.values) if s is not None]
    found = [n for n in map(_real, (*call.args[:2], call.kwargs.get("other"))) if n is not None]
    if len(sigs) != 1 or len(found) != 1 or any(_real(v) is None for v in call.values if call.sig(v) is None):
        return None, None
    return sigs[0], found[0]


def _scale(call: Call) -> Outcome | None:
    x, c = _one(call)
    if call.name == "neg" and len(call.values) == 1 and call.sig(call.values[0]) is not None:
        x, c = call.sig(call.values[0]), -1.0
    if x is None or (call.name in ("div", "true_divide") and (call.raw.startswith("__r") or c == 0)):
        return None
    c = 1.0 / c if call.name in ("div", "true_divide") else c
    if c == 1.0:
        return _same(call, x)
    out = Signal(f"{c:.4g} * {wrap(x.text)}", c * x.mean, c * c * x.second, elems=x.elems,
                 formula=f"{c:.4g}^2 x {x.second:.4g}")
    return Outcome([out], [(c * c, f" * {c:.4g}")])


def _shift(call: Call) -> Outcome | None:
    """x + alpha d, x - alpha d, and rsub(x, d, alpha) = d - alpha x (``d - x`` is rsub, alpha 1)."""
    x, d = _one(call)
    if x is None:
        return None
    alpha = _real(call.kwargs.get("alpha", 1.0))
    if alpha is None:
        return None
    flip = "rsub" in call.raw
    c = -alpha if flip else 1.0  # the operand's scale
    d = d * (1.0 if flip else alpha) * (-1.0 if call.name == "sub" and not flip else 1.0)
    if d == 0.0 and c == 1.0:
        return _same(call, x)
    text = f"{d:.4g} - {wrap(x.text)}" if flip and c == -1.0 else (
        f"{d:.4g} - {alpha:.4g} * {wrap(x.text)}" if flip else f"{wrap(x.text)} + {d:.4g}")
    out = Signal(text, c * x.mean + d, c * c * x.second + d * d + 2.0 * c * d * x.mean, elems=x.elems,
                 formula=(f"{c * c:.4g} x " if c * c != 1.0 else "") + f"{x.second:.4g} + shift {d:.4g}")
    return Outcome([out], [(c * c, f" * {c:.4g}" if c * c != 1.0 else "")])


def product(call: Call) -> Outcome | None:
    """a * b of two traced, independent values (else the scalar rule)."""
    sigs = [call.sig(v) for v in call.values]
    if sum(s is not None for s in sigs) < 2:
        return _scale(call)
    if len(sigs) != 2 or None in sigs or sigs[0].elems & sigs[1].elems:
        return None
    a, b = sigs
    out = Signal(f"{wrap(a.text)} * {wrap(b.text)}", a.mean * b.mean, a.second * b.second,
                 elems=a.elems | b.elems, formula=f"{a.second:.4g} x {b.second:.4g}")
    return Outcome([out], [None if _broadcast(call, 0) else (b.second, f" * {b.text}"),
                           None if _broadcast(call, 1) else (a.second, f" * {a.text}")])


def _broadcast(call: Call, i: int) -> bool:
    """Whether operand ``i`` is broadcast over the other (a gate over space): its gradient is a
    sum over the broadcast entries, which the rules do not follow."""
    shapes = [call.shape(v) for v in call.values]
    return None not in shapes and math.prod(shapes[i]) < math.prod(shapes[1 - i])


def total(call: Call, sign: float = 1.0) -> Outcome | None:
    """a + w b (``add``, w = alpha) or a - w b (``sub``) of traced operands taken as independent."""
    alpha = _real(call.kwargs.get("alpha", 1.0))
    if alpha is None:
        return None
    every = [(call.sig(v), 1.0 if i == 0 else sign * alpha) for i, v in enumerate(call.values)]
    pairs = [(s, w) for s, w in every if s is not None]
    if len(pairs) <= 1:
        return _lone(call, every, pairs)
    second = sum(w * w * s.second for s, w in pairs)
    second += 2 * sum(pairs[i][1] * pairs[j][1] * pairs[i][0].mean * pairs[j][0].mean
                      for i in range(len(pairs)) for j in range(i + 1, len(pairs)))
    op = " + " if sign > 0 else " - "
    scaled = [wrap(s.text) if abs(w) == 1.0 else f"{abs(w):.4g} * {wrap(s.text)}" for s, w in pairs]
    terms = [f"{w * w:.4g} x {s.second:.4g}" if w * w != 1.0 else f"{s.second:.4g}" for s, w in pairs]
    out = Signal(op.join(scaled), sum(w * s.mean for s, w in pairs), second,
                 elems=frozenset().union(*(s.elems for s, _ in pairs)), formula=" + ".join(terms))
    return Outcome([out], [(w * w, f" * {abs(w):.4g}" if w * w != 1.0 else "") for _, w in every])


def _lone(call: Call, every: list, pairs: list) -> Outcome | None:
    """A sum with one traced operand: a number (a 0-d tensor) shifts it, another tensor is left out."""
    if not pairs:
        return None
    x, w = pairs[0]
    if x is every[0][0] and _one(call)[0] is not None:
        return _shift(call)
    if w == 1.0:
        return _same(call, x)
    out = Signal(f"{w:.4g} * {wrap(x.text)}", w * x.mean, w * w * x.second, elems=x.elems,
                 formula=f"{w:.4g}^2 x {x.second:.4g}")
    return Outcome([out], [(w * w, f" * {w:.4g}") if s is not None else None for s, _ in every])


def _slices(call: Call) -> Outcome | None:
    x = call.sig(call.values[0]) if call.values else None
    if x is None:
        return None
    if call.name in ("chunk", "split", "unbind", "tensor_split"):
        outs = [_like(x, f"{x.text}[{i}]", _part(x, call.name, i)) for i in range(call.outputs)]
    else:
        key = repr(tuple("tensor" if hasattr(a, "shape") else a for a in call.args[1:]))
        outs = [_like(x, f"{x.text}[...]", _part(x, key, 0))]
    return Outcome(outs, [(1.0, "")] + [None] * (len(call.values) - 1))


def _like(x: Signal, text: str, elems: frozenset) -> Signal:
    """Other entries of the same law as ``x`` (its moments, read lazily through ``x``)."""
    return Signal(text, level=x.level, elems=elems, lazy=x._get, formula=lambda: x.formula)


def _part(x: Signal, key: object, i: int) -> frozenset:
    return frozenset((e, key, i) for e in x.elems)


def _cat(call: Call) -> Outcome | None:
    pairs = [(s, call.shape(v)) for v, s in zip(call.values, map(call.sig, call.values)) if s is not None]
    if not pairs:
        return None
    sizes = [float(math.prod(shape)) if shape is not None else 1.0 for _, shape in pairs]
    return Outcome([combine([s for s, _ in pairs], sizes)], [(1.0, "")] * len(call.values))


def _dropout(call: Call) -> Outcome | None:
    x = call.sig(call.values[0]) if call.values else None
    if x is None:
        return None
    p = float(call.arg(1, "p", 0.5))
    training = bool(call.arg(2, "training", call.kwargs.get("train", True)))
    if call.name in ("alpha_dropout", "feature_alpha_dropout") or not training or not 0 < p < 1:
        return _same(call, x)
    out = Signal(f"dropout({x.text})", x.mean, x.second / (1 - p), elems=x.elems,
                 formula=f"{x.second:.4g} / (1 - {p:g}) (dropout in training)")
    return Outcome([out], [(1 / (1 - p), f" -> dropout(p={p:g})")])


def _glu(call: Call) -> Outcome | None:
    x = call.sig(call.values[0]) if call.values else None
    if x is None or not x.known:
        return None
    s = gaussian("sigmoid", 1.0 if x.level == 0 else x.second, derivative=True)
    out = Signal(f"glu({x.text})", x.mean * s.mean, x.second * s.second, elems=x.elems,
                 formula=f"{x.second:.4g} x E[sigmoid^2] {s.second:.4g}")
    return Outcome([out], [((s.second + x.second * s.deriv_second) / 2, " -> glu")])


def _softmax(call: Call) -> Outcome | None:
    x = call.sig(call.values[0]) if call.values else None
    shape = call.shape(call.values[0]) if call.values else None
    if x is None:
        return None
    dim = call.arg(1, "dim", -1)
    n = float(shape[dim]) if shape is not None and isinstance(dim, int) else math.nan
    out = Signal(f"softmax({x.text})", 1 / n, 1 / n**2, elems=x.elems, weights=True, formula="weights summing to 1")
    return Outcome([out], [None])


def _average(weights: Signal, v: Signal) -> Signal:
    return Signal(f"attention average of {wrap(v.text)}", v.mean, v.second, elems=weights.elems | v.elems,
                  formula=f"{v.second:.4g} (a softmax-weighted average keeps E[v^2])")


def _matmul(call: Call) -> Outcome | None:
    sigs = [call.sig(v) for v in call.values]
    if len(sigs) != 2 or None in sigs:
        return None
    a, b = sigs
    if a.weights:
        return Outcome([_average(a, b)], [None, (1.0, " -> attention average")])
    shape = call.shape(call.values[0])
    if shape is None or not shape or a.elems & b.elems:
        return None
    n = float(shape[-1])
    second = n * a.second * b.second + n * (n - 1) * (a.mean * b.mean) ** 2
    out = Signal(f"{wrap(a.text)} @ {wrap(b.text)}", n * a.mean * b.mean, second, elems=a.elems | b.elems,
                 formula=f"{n:g} x {a.second:.4g} x {b.second:.4g}")
    return Outcome([out], [None, None])


def _attention(call: Call) -> Outcome | None:
    v = call.arg(2, "value", None)
    sv = call.sig(v) if v is not None else None
    if sv is None:
        return None
    out = _average(call.sig(call.values[0]) or sv, sv)
    return Outcome([out], [(1.0, " -> attention average") if x is v else None for x in call.values])


BUILTIN: dict[str, Callable[[Call], Outcome | None]] = {
    "mul": product, "div": _scale, "true_divide": _scale, "neg": _scale, "add": _shift, "sub": _shift,
    "rsub": _shift, "glu": _glu, "softmax": _softmax, "softmin": _softmax, "matmul": _matmul, "bmm": _matmul,
    "mm": _matmul, "scaled_dot_product_attention": _attention,
    **{n: _slices for n in ("chunk", "split", "unbind", "tensor_split", "getitem", "narrow", "select")},
    **{n: _cat for n in ("cat", "concat", "concatenate", "stack", "hstack", "vstack")},
    **{n: _dropout for n in ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                             "feature_alpha_dropout")},
}
