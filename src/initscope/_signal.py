"""What graph discovery knows about one traced tensor: its moments under the Gaussian assumption.

A :class:`Signal` is the mean and second moment of a tensor's entries, in the units
:func:`initscope.initialize` designs for: every weight layer's output, every
normalization's output and the raw input have mean 0 and second moment 1 (the fixed point
``q = 1`` of the gains). From there each op has a rule (:mod:`initscope.oprules`), and the
layer fed by the tensor gets the fan_in gain ``1 / sqrt(E[x^2])``.

``level`` says how far the value is from those sources: 0 for a source, 1 for one
activation of a source (exactly what the producer rule before moment propagation computed:
the activation's moments at q = 1), None for anything composite. Plans of models made only
of levels 0 and 1 are computed as before, bit for bit.

``elems`` names the Gaussian entries a value is a function of: a layer's output is fresh
(at initialization its entries are independent of its input: zero-mean weights), slices
(``chunk``, ``x[..., :h]``) are new names, anything computed from several values is the
union. Two operands whose ``elems`` overlap are dependent, and the product rule does not
apply to them (``x * torch.sigmoid(x)``).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from initscope.errors import InitscopeError
from initscope.moments import Moments, moments

__all__ = ["Signal", "source", "activation", "combine", "short", "gaussian"]

_TEXT_MAX = 90


def short(text: str) -> str:
    """The words of a chain, cut at 90 characters."""
    return text if len(text) <= _TEXT_MAX else text[:_TEXT_MAX - 3] + "..."


def wrap(text: str) -> str:
    """``text`` in parentheses when it is itself an expression (for ``a * (b + c)``)."""
    return f"({text})" if " " in text and not text.endswith(")") else text


class Signal:
    """Mean and second moment of one traced tensor, with the words of the chain that made it.

    ``mean``/``second`` may be computed lazily (``lazy`` returns them): activations' moments
    cost a quadrature, and most are never read. NaN means unknown.
    """

    __slots__ = ("text", "_formula", "level", "elems", "weights", "note", "_values", "_lazy")

    def __init__(self, text: str, mean: float = 0.0, second: float = 1.0, *, formula: str | Callable[[], str] = "",
                 level: int | None = None, elems: frozenset = frozenset(), weights: bool = False,
                 note: str = "", lazy: Callable[[], tuple[float, float]] | None = None):
        self.text, self._formula, self.level, self.elems = short(text), formula, level, elems
        self.weights, self.note = weights, note
        self._values, self._lazy = (None if lazy else (float(mean), float(second))), lazy

    def _get(self) -> tuple[float, float]:
        if self._values is None:
            try:
                self._values = self._lazy()
            except InitscopeError:  # a user's callable that the quadrature cannot integrate
                self._values = (math.nan, math.nan)
        return self._values

    @property
    def formula(self) -> str:
        """How the last op made ``second``, in words ("0.3558 x 1"); may be empty."""
        return self._formula() if callable(self._formula) else self._formula

    @property
    def mean(self) -> float:
        """E[x]."""
        return self._get()[0]

    @property
    def second(self) -> float:
        """E[x^2]."""
        return self._get()[1]

    @property
    def plain(self) -> bool:
        """A source or one activation of a source: the producer rule of before applies."""
        return self.level is not None

    @property
    def known(self) -> bool:
        """The second moment is a finite positive number."""
        return math.isfinite(self.second) and self.second > 0

    def __repr__(self) -> str:
        return f"Signal({self.text!r}, mean={self.mean:.4g}, second={self.second:.4g}, level={self.level})"


def gaussian(spec: object, q: float, param: float | None = None, derivative: bool = False) -> Moments:
    """:func:`initscope.moments`, also inside a discovery run (which runs under ``no_grad``)."""
    with torch.enable_grad():
        return moments(spec, q, param=param, derivative=derivative)


def source(text: str, elems: frozenset, note: str = "") -> Signal:
    """A layer's output, a normalization's, the raw input, a residual stream: mean 0, E[x^2] = 1."""
    return Signal(text, 0.0, 1.0, level=0, elems=elems, note=note)


def activation(x: Signal, spec: object, param: float | None, label: str) -> Signal:
    """phi(x): the moments of phi at q = E[x^2] (1 for a source), x taken as N(0, q).

    A composite x need not be Gaussian or centred (a product of two Gaussians is not): the
    Gaussian assumption of the whole calculus is used there as an approximation.
    """
    q = 1.0 if x.level == 0 else x.second
    level = 1 if x.level == 0 else None

    def lazy() -> tuple[float, float]:
        if not math.isfinite(q):
            return math.nan, math.nan
        m = gaussian(spec, q, param)
        return m.mean, m.second

    name = label.split("(")[0] if "(" in label and not label.endswith(")") else label
    return Signal(f"{name}({x.text})", level=level, elems=x.elems, lazy=lazy,
                  formula=f"E[{name}(z)^2] at q={q:.4g}" if level is None else "")


def combine(signals: list[Signal], weights: list[float] | None = None, text: str | None = None) -> Signal:
    """Entries drawn from ``signals`` in proportions ``weights`` (equal by default): ``cat``, or
    a value with several sources. Mean and second moment are the weighted averages."""
    if len(signals) == 1:
        return signals[0]
    w = weights or [1.0] * len(signals)
    total = sum(w)
    same = len(set(w)) == 1 and all(s.plain for s in signals)
    level = max(s.level for s in signals) if same else None

    def lazy() -> tuple[float, float]:
        return (sum(wi * s.mean for wi, s in zip(w, signals)) / total,
                sum(wi * s.second for wi, s in zip(w, signals)) / total)

    words = text or "cat(" + ", ".join(s.text for s in signals) + ")"
    def formula() -> str:
        return " + ".join(f"{wi / total:.3g} x {s.second:.4g}" for wi, s in zip(w, signals)) if not same else ""

    return Signal(words, level=level, elems=frozenset().union(*(s.elems for s in signals)), lazy=lazy,
                  formula=formula)
