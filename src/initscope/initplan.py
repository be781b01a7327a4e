"""The record of a whole-model initialization: :class:`InitPlan`, one :class:`PlanRow` per
parameter block, and the parameters left untouched, each with its reason.

Rendering is a pure function of the record: ``repr`` (plain-text table),
``_repr_html_`` (an escaped HTML table) and ``to_dict`` (JSON-ready: NaN becomes None).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from initscope._render import html_of

__all__ = ["PlanRow", "Untouched", "InitPlan"]


@dataclass(frozen=True)
class PlanRow:
    """What :func:`initscope.initialize` writes into one block of one parameter.

    Attributes:
        name: the parameter's qualified name.
        block: the block (``q``/``k``/``v``, an RNN gate) or the parameter's local name.
        rows: the rows along dim 0 the block covers, ``(start, stop)``.
        layer: the qualified name of the layer (or normalization) it belongs to.
        layer_type: that module's class name.
        shape: the parameter's shape.
        fan_in, fan_out: the block's layout-aware fans (:func:`initscope.fan`).
        fan: the fan the mode uses; NaN for constants.
        before, after: what produced the layer's input and what consumes its output, each
            with how it was found (observed, traced, assumed, given).
        gain: std * sqrt(fan), before the residual factor.
        std: the std written (residual factor included); 0 for constants.
        bound: the bound of a uniform distribution, else None.
        distribution: normal, truncated_normal, uniform, orthogonal, delta_orthogonal, zeros,
            ones or reset_parameters.
        residual: the factor the residual option multiplied the std by (1: none).
        reason: why these numbers.
    """

    name: str
    block: str
    rows: tuple[int, int]
    layer: str
    layer_type: str
    shape: tuple[int, ...]
    fan_in: float
    fan_out: float
    fan: float
    before: tuple[str, ...]
    after: tuple[str, ...]
    gain: float
    std: float
    bound: float | None
    distribution: str
    residual: float
    reason: str


@dataclass(frozen=True)
class Untouched:
    """A parameter that was left as it was, and why."""

    name: str
    shape: tuple[int, ...]
    reason: str


def _json(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (tuple, list)):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    return value


def _num(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _side(items: tuple[str, ...]) -> str:
    return "; ".join(items[:2]) + (f"; +{len(items) - 2} more" if len(items) > 2 else "") if items else "-"


_COLUMNS = ("parameter", "layer type", "shape", "fan", "before", "after", "gain", "std", "distribution",
            "residual", "reason")


@dataclass(frozen=True)
class InitPlan:
    """What :func:`initscope.plan` decided (and :func:`initscope.initialize` wrote).

    Attributes:
        scheme, mode, distribution, residual, bias, convention, seed: the options, resolved.
        discovery: how activations were found: ``run`` (example_input), ``fx`` or ``order``.
        rows: one :class:`PlanRow` per parameter block, in parameter order.
        untouched: the parameters left as they were, with the reason.
        norms: normalization layers whose running statistics are reset.
        notes: plan-wide remarks (residual branches, fallbacks).
    """

    scheme: str
    mode: str
    distribution: str
    residual: str
    bias: str
    convention: str
    seed: int
    discovery: str
    rows: tuple[PlanRow, ...]
    untouched: tuple[Untouched, ...]
    norms: tuple[str, ...]
    notes: tuple[str, ...]

    def row(self, name: str, block: str | None = None) -> PlanRow:
        """The row of parameter ``name`` (and ``block``, for packed parameters).

        Raises:
            KeyError: no such row; the message lists the untouched reason if there is one.
        """
        for r in self.rows:
            if r.name == name and (block is None or r.block == block):
                return r
        why = next((u.reason for u in self.untouched if u.name == name), "no such parameter")
        raise KeyError(f"no row for {name!r}{'' if block is None else f'[{block}]'}: {why}")

    def to_dict(self) -> dict:
        """JSON-ready form: plain types, NaN as None."""
        head = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("rows", "untouched")}
        return _json({**head, "rows": [asdict(r) for r in self.rows],
                      "untouched": [asdict(u) for u in self.untouched]})

    def _cells(self) -> list[tuple[str, ...]]:
        return [(r.name + (f"[{r.block}]" if r.block != r.name.rsplit(".", 1)[-1] else ""), r.layer_type,
                 "x".join(map(str, r.shape)), _num(r.fan), _side(r.before), _side(r.after), _num(r.gain),
                 _num(r.std) if r.bound is None else f"b={_num(r.bound)}", r.distribution, _num(r.residual),
                 r.reason) for r in self.rows]

    def _title(self) -> str:
        return (f"InitPlan(scheme={self.scheme!r}, mode={self.mode!r}, distribution={self.distribution!r}, "
                f"residual={self.residual!r}, bias={self.bias!r}, convention={self.convention!r}, "
                f"seed={self.seed}, discovery={self.discovery!r})")

    def __repr__(self) -> str:
        rows = [_COLUMNS, *self._cells()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS) - 1)]
        lines = [self._title()]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
        if self.untouched:
            lines.append(f"untouched ({len(self.untouched)}):")
            lines += [f"  {u.name} {'x'.join(map(str, u.shape)) or 'scalar'}: {u.reason}" for u in self.untouched]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str | None:
        return html_of("plan", self)
