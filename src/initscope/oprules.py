"""Moment rules for the ops between weight layers, and :func:`register_rule` for your own.

Graph discovery (:mod:`initscope.graph`) gives every traced tensor a mean and a second
moment, in units where weight layers, normalizations and the raw input give N(0, 1)
entries (:mod:`initscope._signal`). A layer fed by a tensor with E[x^2] = S gets the
fan_in gain 1/sqrt(S). Each rule below also says what happens backwards: the factor by
which E[(dL/d operand)^2] exceeds E[(dL/d output)^2], so that fan_out gains see gates too.
All operands are taken as independent unless they share inputs (then no product rule).
Backwards, the chain from a layer goes on through activations: an activation multiplies the
factor by its E[phi'^2] at its input's q, so ``relu(a) * relu(b)`` or ``dropout(relu(a))``
see both. While every op after an activation leaves the factor at 1, the plan keeps naming
that activation as the consumer (the classic rule); an operand broadcast over the other (a
gate over space) is not followed backwards (its gradient is a sum over the broadcast entries).

- **product** ``a * b``: E[(ab)^2] = E[a^2] E[b^2], E[ab] = E[a] E[b] (independence).
  Gated forms f(a) * b, f(a) * g(b) are products of an activation's moments (at the
  pre-activation's q) and the other side's. Backwards: dL/da = b dL/dy, so a's factor is
  E[b^2] (and b's is E[a^2]).
- **GLU** ``F.glu(x, dim)`` = a * sigmoid(b) for the two halves of x (independent entries of
  one layer): E = E[a^2] E[sigmoid(b)^2]. SwiGLU, GeGLU, ReGLU written as
  ``act(a) * b`` with ``chunk(2, dim=-1)`` are the product rule after ``chunk``.
  Backwards, x's factor is the average over its halves, (E[sig^2] + E[a^2] E[sig'^2]) / 2.
- **squeeze-excitation** ``x * sigmoid(conv(pool(x)))``: a product. The gate is a
  function of x's spatial mean, which over H*W positions hardly depends on any one entry,
  so gate and x are taken as independent, E[(s x)^2] = E[s^2] E[x^2], with E[s^2] the
  Gaussian moment of the gate's activation at its pre-activation's q (1 after a
  layer). Backwards only x's factor E[s^2] is followed; the gate's branch gets the rule of its
  own activation (the sum over space into the pooled value is not followed).
- **sum / sub** of independent operands, ``torch.add(a, b, alpha=w)`` = a + w b:
  E[(a +- w b)^2] = E[a^2] + w^2 E[b^2] +- 2 w E[a] E[b]; factors 1 and w^2. A
  residual add x + f(x) is not summed: its scale is the residual option's business
  (zero_last_norm, scale_depth keep it at x's), so its output counts as a unit source.
  Operands that are not traced (a positional table held as a parameter) are left out.
- **scalar affine** x * c + d: mean c m + d, E = c^2 E[x^2] + 2 c d m + d^2; factor c^2
  (``rsub(x, d, alpha)`` = d - alpha x: c = -alpha). The number may be positional, ``other=``,
  a numpy scalar or a 0-d tensor; a scalar op whose number is not read (``2 / x``) is an op
  without a rule.
- **mean over dims**, average pooling, and a **softmax-weighted average** (``A @ v`` with
  A a softmax output, ``F.scaled_dot_product_attention``): second moment kept. This is the
  averaging assumption: exact where the values averaged are equal (positions fully
  correlated, attention concentrated on one token), an upper bound otherwise (independent
  values: E[x^2] / n). It is the convention of a classifier after global pooling.
  Backwards: v's factor 1; the scores' side is not followed (gain 1).
- **concat** / stack: the average of the parts' moments weighted by their sizes.
- **chunk, split, view, reshape, permute, transpose, flatten**, slicing: moments unchanged.
- **dropout**: eval (or p = 0) unchanged; train, inverted dropout keeps the mean and
  E[x^2] / (1 - p), factor 1 / (1 - p). alpha_dropout keeps both moments by design.
- **matmul** ``a @ b`` of two traced values, contraction n: E = n E[a^2] E[b^2] +
  n (n - 1) E[a]^2 E[b]^2; backwards not followed.
- an op with no rule: E[x^2] = 1 is assumed after it (gain 1) and the plan names the op.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from initscope import _signal
from initscope._builtin_rules import BUILTIN, Outcome
from initscope._ops import function_name
from initscope.errors import ArgumentError

__all__ = ["OpCall", "register_rule", "rule_for", "is_user_rule"]


@dataclass(frozen=True)
class OpCall:
    """What a user's rule sees of one call of its op.

    Attributes:
        operands: (mean, second moment) of each traced tensor argument, in argument order.
        args, kwargs: the call's arguments (tensors, numbers, ...) as the op got them.
        shapes: the traced tensor arguments' shapes (None where unknown, in a ``torch.fx`` trace).
    """

    operands: tuple[tuple[float, float], ...]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    shapes: tuple = ()


_USER: dict[str, tuple[Callable, Callable | None]] = {}


def register_rule(op: object, forward: Callable[[OpCall], object] | None,
                  backward: Callable[[OpCall], object] | None = None) -> None:
    """Tell graph discovery the moments of an op it has no rule for (or replace a built-in one).

    Args:
        op: a torch function or method (``torch.lerp``), its name (``"lerp"``), or a custom
            op (``torch.ops.mylib.scale``); matched by name as discovery sees it.
        forward: ``forward(call)`` gets an :class:`OpCall` and returns ``(mean, second)`` of
            the output (or a list of them, one per output tensor; None: no rule for this
            call). ``forward=None`` removes the rule.
        backward: optional; ``backward(call)`` returns one factor per operand,
            E[(dL/d operand)^2] / E[(dL/d output)^2], or None for an operand not followed.
            Without it, fan_out gains stop at this op (gain 1 for the layers before it).

    Raises:
        ArgumentError: ``forward`` or ``backward`` is not callable.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import initscope
        >>> def lerp(call):  # torch.lerp(a, b, w) = (1 - w) a + w b, a and b independent
        ...     (ma, sa), (mb, sb) = call.operands
        ...     w = call.args[2]
        ...     return (1 - w) * ma + w * mb, (1 - w) ** 2 * sa + w ** 2 * sb + 2 * w * (1 - w) * ma * mb
        >>> initscope.register_rule(torch.lerp, lerp)
        >>> class Mix(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 1)
        ...     def forward(self, x):
        ...         return self.out(torch.lerp(self.a(x), self.b(x), 0.5))
        >>> p = initscope.plan(Mix(), example_input=torch.randn(2, 8))
        >>> round(p.row("out.weight").gain, 4)  # E[x^2] = 0.25 + 0.25: gain 1/sqrt(0.5)
        1.4142
        >>> initscope.register_rule(torch.lerp, None)  # remove it again
    """
    name = op if isinstance(op, str) else function_name(op)
    if forward is None:
        _USER.pop(name, None)
        return
    for arg, value in (("forward", forward), ("backward", backward)):
        if value is not None and not callable(value):
            raise ArgumentError(f"register_rule({name!r}): {arg} must be callable (it gets an OpCall); "
                                f"got {type(value).__name__}")
    _USER[name] = (forward, backward)


def is_user_rule(name: str) -> bool:
    """Whether op ``name`` has a rule from :func:`register_rule`."""
    return name in _USER


def rule_for(name: str) -> Callable | None:
    """The rule for op ``name``: the user's first, then the built-in one, else None."""
    if name in _USER:
        return _user_rule(name, *_USER[name])
    return BUILTIN.get(name)


def _user_rule(name: str, forward: Callable, backward: Callable | None) -> Callable:
    def rule(call) -> Outcome | None:
        sigs = [call.sig(v) for v in call.values]
        if any(s is None for s in sigs):
            return None
        op = OpCall(tuple((s.mean, s.second) for s in sigs), tuple(call.args), dict(call.kwargs),
                    tuple(call.shape(v) for v in call.values))
        out = forward(op)
        if out is None:
            return None
        pairs = [out] if isinstance(out, tuple) and len(out) == 2 and not isinstance(out[0], tuple) else list(out)
        text = f"{name}(" + ", ".join(s.text for s in sigs) + ")"
        elems = frozenset().union(*(s.elems for s in sigs))
        outs = [_signal.Signal(text, m, s, elems=elems, formula=f"rule for {name}") for m, s in pairs]
        factors = list(backward(op)) if backward is not None else [None] * len(sigs)
        back = [None if f is None else (float(f), f" {name}") for f in factors]
        return Outcome(outs, back)
    return rule
