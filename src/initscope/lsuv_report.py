"""What :func:`initscope.lsuv.lsuv` did, one row per scaled weight, and its rendering.

:class:`LsuvReport` holds one :class:`LsuvLayer` per weight in execution order and
renders itself as a text table (``repr``), HTML and a JSON-ready dict.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from initscope._render import html_of

__all__ = ["LsuvReport", "LsuvLayer"]

_HEAD = ("layer", "type", "calls", "std before", "mean before", "scale", "bias shift", "std after",
         "mean after", "note")


@dataclass(frozen=True)
class LsuvLayer:
    """What LSUV measured and did at one scaled weight: one row of the report."""

    name: str
    layer_type: str
    calls: int           # times it ran in the last pass (0: never ran, left as pre-initialized)
    std_before: float    # output std when LSUV reached it: after pre_init and the layers before it
    mean_before: float
    scale: float         # product of the factors applied to the weight
    bias_shift: float    # sum of the shifts added to the bias
    std_after: float     # measured on the corrected output (in flight) or in the verification pass
    mean_after: float
    within_tol: bool
    norm_after: str = ""  # the normalization layer it feeds directly, which undoes its scale
    note: str = ""


@dataclass(frozen=True)
class LsuvReport:
    """The result of :func:`lsuv`: one :class:`LsuvLayer` per scaled weight, in execution order."""

    layers: tuple[LsuvLayer, ...]
    target_std: float
    center: bool
    tol: float
    passes: int          # forward passes run, the verification pass included
    verified: str = "pass"  # "in flight": pass 1's measurements of the corrected outputs; "pass k": a fresh pass

    @property
    def converged(self) -> bool:
        """True when every layer that ran is within ``tol`` of the targets."""
        return all(r.within_tol for r in self.layers if r.calls)

    @property
    def worst(self) -> float:
        """The largest |std_after - target_std| over the layers that ran."""
        return max((abs(r.std_after - self.target_std) for r in self.layers if r.calls), default=0.0)

    def summary(self) -> str:
        """One line: passes, convergence, and where a normalization layer makes LSUV moot."""
        ok = "all within tol" if self.converged else f"NOT converged (worst |std - target| {self.worst:.3g})"
        passes = f"{self.passes} forward pass{'es' * (self.passes != 1)} (verified {self.verified})"
        text = f"LsuvReport: {len(self.layers)} layers, {passes}, target std {self.target_std:g}, tol {self.tol:g}: {ok}"
        normed = sum(bool(r.norm_after) for r in self.layers)
        return text + (f"; {normed} of {len(self.layers)} layers feed a normalization layer, which divides "
                       "the scale out again: LSUV has no effect there" if normed else "")

    def to_dict(self) -> dict:
        """JSON-ready form (NaN becomes None)."""
        rows = [{k: None if v != v else v for k, v in asdict(r).items()} for r in self.layers]
        return {"target_std": self.target_std, "center": self.center, "tol": self.tol, "passes": self.passes,
                "verified": self.verified, "converged": self.converged, "worst": self.worst, "layers": rows}

    def __repr__(self) -> str:
        rows = [_HEAD] + [_cells(r) for r in self.layers]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_HEAD) - 1)]
        lines = ["  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[-1]]).rstrip() for row in rows]
        return "\n".join([self.summary(), *lines])

    def _repr_html_(self) -> str | None:
        return html_of("lsuv", self)


def _cells(r: LsuvLayer) -> tuple[str, ...]:
    nums = (r.std_before, r.mean_before, r.scale, r.bias_shift, r.std_after, r.mean_after)
    return (r.name, r.layer_type, str(r.calls), *(f"{v:.4g}" for v in nums), r.note)
