"""Residual options: the factor each branch's weights get.

- ``zero_last_norm``: the normalization after a branch's last weight layer gets gamma 0,
  so the block starts as the identity (Goyal et al. 2017; timm's ``zero_init_last``).
- ``scale_depth``: the branch's last layer is multiplied by 1/sqrt(N), N the number of
  residual branches found (GPT-2's 1/sqrt(2 * n_layer): two branches per layer).
- ``fixup``: Zhang et al. 2019 without their added scalars: the layers of a branch with m
  weight layers are multiplied by L^(-1/(2m-2)) (L = N branches), its last layer and
  the classifier (the layer whose output is the model's) are set to 0.
- ``auto``: per branch, ``zero_last_norm`` where a normalization follows its last layer
  (ResNets), else ``scale_depth`` (pre-LN transformers); nothing when there are no branches.
- ``none``: no factor.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from initscope.graph import Graph

__all__ = ["RESIDUAL", "Factors", "factors"]

RESIDUAL = ("auto", "zero_last_norm", "scale_depth", "fixup", "none")


@dataclass
class Factors:
    """``layers``: layer name -> (which weights: "exit" or "all", factor, reason);
    ``norms``: normalization name -> reason for gamma 0; ``summary`` for the plan."""

    layers: dict[str, tuple[str, float, str]] = field(default_factory=dict)
    norms: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    summary: str = "none"


def factors(graph: Graph, option: str) -> Factors:
    """The residual factors for ``option`` over the branches of ``graph``."""
    out, n = Factors(), len(graph.branches)
    if not n:
        if option not in ("none", "auto"):
            out.notes.append(f"residual={option!r}: no residual branch x + f(x) found"
                             + ("" if graph.method == "run" else " (pass example_input to detect them)"))
        out.summary = f"{option}: no branches" if option != "none" else "none"
        return out
    if option == "none":
        out.notes.append(f"{n} residual branches found; residual='none' leaves them unscaled")
        return out
    if option == "fixup":
        return _fixup(graph, out)
    used = []
    for b in graph.branches:
        kind = ("zero_last_norm" if b.last_norm else "scale_depth") if option == "auto" else option
        used.append(kind)
        where = f"residual branch in `{b.where or 'forward'}` ending at `{b.last_layer}`"
        if kind == "zero_last_norm" and b.last_norm:
            out.norms[b.last_norm] = f"zero_last_norm: gamma 0, last normalization of the {where} (Goyal et al. 2017)"
        elif kind == "zero_last_norm":
            out.notes.append(f"zero_last_norm: no normalization after `{b.last_layer}` ({where}): nothing zeroed")
        else:
            why = f"scale_depth: 1/sqrt({n} branches), last layer of the {where}"
            out.layers[b.last_layer] = ("exit", n ** -0.5, why)
    counts = {k: used.count(k) for k in dict.fromkeys(used)}
    out.summary = f"{option}: " + ", ".join(f"{k} on {c} of {n} branches" for k, c in counts.items())
    return out


def _fixup(graph: Graph, out: Factors) -> Factors:
    n = len(graph.branches)
    inside = set()
    for b in graph.branches:
        m = len(b.layers)
        inside.update(b.layers)
        if m >= 2:
            scale = n ** (-1.0 / (2 * m - 2))
            for name in b.layers[:-1]:
                out.layers[name] = ("all", scale, f"fixup: L^(-1/(2m-2)) with L={n} branches, m={m} layers")
        out.layers[b.last_layer] = ("exit", 0.0, "fixup: last layer of a residual branch set to 0")
    for name in graph.final:
        if name not in inside:
            out.layers[name] = ("exit", 0.0, "fixup: classifier (its output is the model's) set to 0")
    out.notes.append("fixup: the scalar biases and multipliers of Zhang et al. 2019 are not added "
                     "(initscope adds no parameters); normalization layers are kept")
    out.summary = f"fixup: {n} branches"
    return out
