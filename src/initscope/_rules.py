"""The gain of each weight, from the activations that :mod:`initscope.graph` found.

- fan_in: the *producer* decides, g_f = 1/sqrt(E[phi(z)^2]) (Var[f'] = s2 * fan * E[h^2]
  with h = phi(f)); raw data, a normalization, a layer or an unknown op give 1.
- fan_out: the *consumer* decides, g_b = 1/sqrt(E[phi'(z)^2]); none (a layer, the output) gives 1.
- fan_avg / fan_geo_avg: both, combined by :func:`initscope.init.scaled_std`.
- ``convention="torch"``: torch's ``calculate_gain`` of the consumer in every mode, as
  PyTorch users write it (an activation torch has no gain for uses its forward gain).
- **Mixed** producers (or consumers, or the uses of a shared parameter): the average of
  the second moments, g = 1 / sqrt(mean_i 1/g_i^2), i.e. the input is taken to come from
  each producer equally often.
- Parameters inside a layer (attention's ``out_proj`` input, RNN recurrences and upper
  layers) have no producer or consumer outside it: gain 1 for that side.
- xavier and lecun keep their papers' gain 1 (use kaiming with mode="fan_avg" for
  activation-aware Glorot); embeddings always get std 1 (a lookup: fan_in 1, gain 1).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

from torch import nn

from initscope.errors import InitscopeError
from initscope.graph import LayerLinks, Node
from initscope.init import gains as init_gains
from initscope.moments import moments, torch_gain

__all__ = ["role", "Gains", "layer_gains", "EMBEDDINGS"]

EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
_ENTRY_RNN = re.compile(r"weight_ih_l0(_reverse)?")


def role(unit: nn.Module, local: str) -> str:
    """Which side of ``unit`` parameter ``local`` faces: both, entry, exit or internal."""
    if isinstance(unit, nn.MultiheadAttention):
        return "exit" if local.startswith("out_proj.") else "entry"
    if isinstance(unit, nn.RNNBase):
        return "entry" if _ENTRY_RNN.fullmatch(local) else "internal"
    if isinstance(unit, nn.RNNCellBase):
        return "entry" if local == "weight_ih" else "internal"
    return "both"


def _combine(values: list[float]) -> float:
    return 1.0 / math.sqrt(sum(1.0 / g**2 for g in values) / len(values))


class Gains:
    """Computes node gains once per plan (quadrature for callables is not free)."""

    def __init__(self, mode: str, convention: str):
        self.mode, self.convention, self._cache = mode, convention, {}
        self.notes: list[str] = []

    def node(self, node: Node, direction: str) -> float:
        """The gain of one producer (forward) or consumer (backward); 1 if not an activation."""
        if node.kind != "activation":
            return 1.0
        key = (node.id, direction)
        if key not in self._cache:
            self._cache[key] = self._compute(node, direction)
        return self._cache[key]

    def _compute(self, node: Node, direction: str) -> float:
        try:
            if direction == "torch":
                try:
                    return torch_gain(node.spec, param=node.param)
                except InitscopeError:
                    self.notes.append(f"torch defines no gain for {node.label}: its forward gain is used")
                    direction = "forward"
            m = moments(node.spec, param=node.param, derivative=direction == "backward")
        except InitscopeError as error:
            self.notes.append(f"gain of {node.describe()} unknown ({error}); gain 1 used")
            return 1.0
        return m.forward_gain if direction == "forward" else m.backward_gain

    def side(self, nodes: list[Node], direction: str) -> float:
        return _combine([self.node(n, direction) for n in nodes]) if nodes else 1.0


def _unique(nodes) -> list[Node]:
    return list({n.id: n for n in nodes}.values())


_PLAIN = {"input": "raw data", "norm": "a normalization", "layer": "a layer", "op": "an op of unknown moments",
          "constant": "an untracked tensor", "output": "the model output"}


def _why(nodes: list[Node], role_name: str, g: float, formula: str) -> str:
    """One side of a reason: 'gain 1/sqrt(E[phi^2]) = 1.414 of the producer ReLU', ..."""
    if not nodes:
        return f"no {role_name} found: gain 1"
    names = list(dict.fromkeys(n.label if n.kind == "activation" else _PLAIN[n.kind] for n in nodes))
    if all(n.kind != "activation" for n in nodes):
        return f"{role_name} is {' or '.join(names)}: gain 1"
    if len(nodes) > 1:
        return f"mixed {role_name}s ({', '.join(names)}): average of {formula}, gain {g:.4g}"
    value = "calculate_gain" if formula == "calculate_gain" else f"gain 1/sqrt({formula})"
    return f"{value} = {g:.4g} of the {role_name} {names[0]}"


def layer_gains(links: list[LayerLinks], side: str, scheme: str, mode: str, gains: Gains,
                given: object = None) -> tuple[float, float, str]:
    """(forward gain, backward gain, reason) for a weight with role ``side`` used in ``links``."""
    if scheme in ("xavier", "lecun"):
        return 1.0, 1.0, f"{scheme}: gain 1, its paper's linear regime (kaiming with mode='fan_avg' uses activations)"
    if given is not None:
        g_f, g_b = init_gains(given, mode, convention=gains.convention)
        return g_f, g_b, f"nonlinearity given: {getattr(given, '__name__', given)!s}"
    entry, exit_ = side in ("entry", "both"), side in ("exit", "both")
    producers = _unique(n for link in links for n in link.producers) if entry else []
    consumers = _unique(n for link in links for n in link.consumers) if exit_ else []
    inside = f"inside {links[0].layer_type if links else 'the layer'}"
    if gains.convention == "torch":
        g = gains.side(consumers, "torch")
        return g, g, "torch convention: " + (_why(consumers, "consumer", g, "calculate_gain") if exit_ else
                                             f"{inside}: gain 1")
    need_f, need_b = mode != "fan_out", mode != "fan_in"
    g_f = gains.side(producers, "forward") if need_f else math.nan
    g_b = gains.side(consumers, "backward") if need_b else math.nan
    parts = ([_why(producers, "producer", g_f, "E[phi^2]") if entry else f"{inside}, input gain 1"] if need_f else []) \
        + ([_why(consumers, "consumer", g_b, "E[phi'^2]") if exit_ else f"{inside}, output gain 1"] if need_b else [])
    reason = f"{mode}: " + "; ".join(parts) + _habit(producers, consumers, g_f, gains) * need_f
    if len(links) > 1:
        reason += f"; shared by {', '.join(link.name for link in links)}: gains combined by the same average"
    return g_f, g_b, reason


def _habit(producers: list[Node], consumers: list[Node], g_f: float, gains: Gains) -> str:
    """Where the producer is not an activation, what 'the gain of the activation after' would give."""
    if not producers or not consumers or any(n.kind == "activation" for n in producers):
        return ""
    habit = gains.side(consumers, "forward")
    if abs(habit - g_f) <= 1e-3:
        return ""
    return f" (the usual habit, the gain of the activation after, would give {habit:.4g})"


def given_for(nonlinearity: object, layer: str) -> object:
    """The user's nonlinearity for ``layer``: one for all layers, or a mapping by name."""
    if isinstance(nonlinearity, Mapping):
        return nonlinearity.get(layer)
    return nonlinearity
