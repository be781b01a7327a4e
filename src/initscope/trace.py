"""What a probe saw: per-layer records, the :class:`Trace` that holds them, and its rendering.

Collecting (:mod:`initscope.probe`, :mod:`initscope.recorder`), judging
(:mod:`initscope.diagnose`) and rendering stay separate: the records are plain frozen
dataclasses, and a Trace renders itself as a text table (``repr``), HTML and a JSON-ready dict.
"""
from __future__ import annotations

import dataclasses
import functools
import math

from initscope._render import html_of
from initscope.stats import Stats

__all__ = ["Trace", "LayerRecord", "OutputRecord", "ParamRecord"]


@dataclasses.dataclass(frozen=True, eq=False)
class OutputRecord:
    """One tensor of a layer's output: its path in the output, shape, dtype and statistics."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    forward: Stats | None
    backward: Stats | None
    note: str = ""


@dataclasses.dataclass(frozen=True, eq=False)
class LayerRecord:
    """One call of a watched module, in execution order."""

    name: str
    type: str
    call: int
    outputs: tuple[OutputRecord, ...]
    weight_layer: bool = False

    @property
    def _main(self) -> OutputRecord | None:
        return next((o for o in self.outputs if o.forward is not None), self.outputs[0] if self.outputs else None)

    @property
    def label(self) -> str:
        """Name, with the call index after '#' for second and later calls."""
        base = self.name or "(model)"
        return f"{base}#{self.call}" if self.call else base

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Shape of the main (first floating) output."""
        return self._main.shape if self._main else None

    @property
    def dtype(self) -> str | None:
        """Dtype of the main output."""
        return self._main.dtype if self._main else None

    @property
    def forward(self) -> Stats | None:
        """Statistics of the main output."""
        return self._main.forward if self._main else None

    @property
    def backward(self) -> Stats | None:
        """Statistics of the gradient of the loss with respect to the main output."""
        return self._main.backward if self._main else None


@dataclasses.dataclass(frozen=True, eq=False)
class ParamRecord:
    """A parameter's value and gradient statistics."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    value: Stats
    grad: Stats | None


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _row(r: LayerRecord) -> list[str]:
    f, b = r.forward, r.backward
    zero = "-" if f is None else f"{100 * f.zero_frac:.0f}%"
    bad = sum(s.nonfinite for s in (f, b) if s is not None)
    return [r.label, r.type, "x".join(map(str, r.shape or ())) or "-", _g(f and f.mean), _g(f and f.std),
            zero, _g(b and b.std), f"{bad} nonfinite" if bad else ""]


_HEAD = ["layer", "type", "shape", "mean", "std", "zeros", "grad std", ""]


@dataclasses.dataclass(frozen=True, eq=False)
class Trace:
    """What one probe saw: per-call layer records in execution order, parameters, inputs.

    ``findings`` judges it with the default :class:`~initscope.diagnose.Thresholds`; call
    :func:`initscope.diagnose.diagnose` to use others.
    """

    layers: tuple[LayerRecord, ...]
    params: tuple[ParamRecord, ...] = ()
    inputs: tuple[OutputRecord, ...] = ()
    loss: float | None = None
    notes: tuple[str, ...] = ()

    @functools.cached_property
    def findings(self) -> list:
        """Plain-word findings with numbers and fixes (see :mod:`initscope.diagnose`)."""
        from initscope.diagnose import diagnose

        return diagnose(self)

    def layer(self, name: str, call: int = 0) -> LayerRecord:
        """The record of ``name``'s ``call``-th call (KeyError if absent)."""
        for r in self.layers:
            if r.name == name and r.call == call:
                return r
        raise KeyError(f"no record of layer {name!r} call {call}; layers: {[r.label for r in self.layers][:10]}")

    def __repr__(self) -> str:
        rows = [_HEAD] + [_row(r) for r in self.layers[:60]]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_HEAD))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        if len(self.layers) > 60:
            lines.append(f"... {len(self.layers) - 60} more layers")
        loss = "" if self.loss is None else f", loss {self.loss:.4g}"
        head = f"Trace({len(self.layers)} layer calls, {len(self.params)} parameters{loss})"
        return "\n".join([head, *lines, *(f"note: {n}" for n in self.notes)])

    def _repr_html_(self) -> str | None:
        return html_of("trace", self)

    def to_dict(self) -> dict:
        """JSON-ready dict (non-finite floats become strings)."""
        def out(o: OutputRecord) -> dict:
            return {"path": o.path, "shape": list(o.shape), "dtype": o.dtype, "note": o.note,
                    "forward": o.forward and o.forward.to_dict(), "backward": o.backward and o.backward.to_dict()}

        return {
            "loss": self.loss if self.loss is None or math.isfinite(self.loss) else str(self.loss),
            "layers": [{"name": r.name, "type": r.type, "call": r.call, "weight_layer": r.weight_layer,
                        "outputs": [out(o) for o in r.outputs]} for r in self.layers],
            "params": [{"name": p.name, "shape": list(p.shape), "dtype": p.dtype, "value": p.value.to_dict(),
                        "grad": p.grad and p.grad.to_dict()} for p in self.params],
            "inputs": [out(o) for o in self.inputs],
            "notes": list(self.notes),
            "findings": [dataclasses.asdict(f) for f in self.findings],
        }
