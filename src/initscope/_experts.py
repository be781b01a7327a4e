"""transformers' stacked experts (Mixtral and other mixture-of-experts layers) in a plan.

One module holds every expert's matrices as 3-D parameters, one ``(out, in)`` matrix per
expert (:func:`initscope.fans.fan` reads their fans), and runs ``act_fn(gate) * up`` (or
``act_fn(h)``) between them inside its forward. The graph sees the module as one layer, so
the plan needs two facts from its structure:

- which side each matrix faces: the one that reads ``hidden_dim`` features is the entry,
  the one that writes them the exit (a residual factor goes to the exit alone);
- the forward gain of the exit matrix. Its input is ``act_fn(g) * u`` with g and u two
  blocks of the entry's output, independent with second moment 1 when the entry is
  initialized for unit output (their producer is a normalization in these models):
  E[(act(g) u)^2] = E[act(g)^2] E[u^2] = E[act(g)^2], so gain 1/sqrt(E[act(g)^2]), the
  activation's own forward gain (1.677 for SiLU). Without a gate, E[act(h)^2]: the same.
"""
from __future__ import annotations

from torch import nn

from initscope.errors import InitscopeError
from initscope.fans import fan, is_stacked_experts
from initscope.moments import moments

__all__ = ["experts_role", "exit_gain"]


def experts_role(unit: nn.Module, local: str) -> str | None:
    """``entry`` or ``exit`` for a stacked-experts matrix (``both`` if it cannot tell); None for
    any other layer."""
    hidden = getattr(unit, "hidden_dim", None)
    if not is_stacked_experts(unit) or hidden is None:
        return None
    f = fan(unit, local).blocks[0]
    entry, exit_ = f.fan_in == hidden, f.fan_out == hidden
    return "both" if entry == exit_ else "entry" if entry else "exit"


def exit_gain(unit: nn.Module) -> tuple[float, str] | None:
    """(forward gain, reason) of the exit matrix from the experts' activation; None when the
    module has no ``act_fn`` whose moments are known."""
    act = getattr(unit, "act_fn", None)
    if act is None:
        return None
    try:
        g = moments(act, derivative=False).forward_gain
    except InitscopeError:
        return None
    name = type(act).__name__
    what = f"{name}(gate) * up" if getattr(unit, "has_gate", False) else f"{name}(h)"
    return g, f"producer is {what} inside the experts: E[.^2] = {1 / g**2:.4g} -> gain {g:.4g}"
