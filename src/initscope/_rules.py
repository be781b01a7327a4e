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
- **Ops between layers** (products, gates, GLU, sums, concat, dropout, scaling; see
  :mod:`initscope.oprules`): where the input's moments are not those of a layer,
  normalization or raw input, or of one activation of them, the gain comes from the
  propagated second moment, g_f = 1/sqrt(E[x^2]), and the reason spells out the chain
  ("silu(gate) * up: E[.^2] = 0.3557 x 1 -> gain 1.677"). Backwards, the factors the ops met
  on the way multiply E[phi'^2] of the consumer, g_b = 1/sqrt(factor x E[phi'^2]); a chain
  that an op does not follow (softmax scores, an op without a rule) gives 1 there.
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

    def backward_d(self, node: Node) -> float:
        """E[phi'^2] of a consumer at its input's q (1 for anything but an activation)."""
        return self.node(node, "backward") ** -2 if node.kind == "activation" else 1.0

    def _compute(self, node: Node, direction: str) -> float:
        try:
            if direction == "torch":
                try:
                    return torch_gain(node.spec, param=node.param)
                except InitscopeError:
                    self.notes.append(f"torch defines no gain for {node.label}: its forward gain is used")
                    direction = "forward"
            m = moments(node.spec, node.q, param=node.param, derivative=direction == "backward")
        except InitscopeError as error:
            self.notes.append(f"gain of {node.describe()} unknown ({error}); gain 1 used")
            return 1.0
        return m.forward_gain if direction == "forward" else m.backward_gain

    def side(self, nodes: list[Node], direction: str) -> float:
        return _combine([self.node(n, direction) for n in nodes]) if nodes else 1.0


def _unique(nodes) -> list[Node]:
    return list({n.id: n for n in nodes}.values())


_PLAIN = {"input": "raw data", "norm": "a normalization", "layer": "a layer", "op": "an op with no moment rule",
          "rule": "an op whose backward is not followed", "constant": "an untracked tensor",
          "output": "the model output"}


def _name(n: Node) -> str:
    if n.kind == "activation":
        return n.label
    if n.kind in ("op", "rule"):
        return f"{n.label} ({_PLAIN[n.kind]}; initscope.register_rule adds one)" if n.kind == "op" else \
            f"{n.label} ({_PLAIN[n.kind]})"
    return _PLAIN[n.kind]


def _why(nodes: list[Node], role_name: str, g: float, formula: str) -> str:
    """One side of a reason: 'gain 1/sqrt(E[phi^2]) = 1.414 of the producer ReLU', ..."""
    if not nodes:
        return f"no {role_name} found: gain 1"
    names = list(dict.fromkeys(map(_name, nodes)))
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
    why_f = _why(producers, "producer", g_f, "E[phi^2]") if entry else f"{inside}, input gain 1"
    why_b = _why(consumers, "consumer", g_b, "E[phi'^2]") if exit_ else f"{inside}, output gain 1"
    sigs = [s for link in links for s in link.signals] if entry else []
    if need_f and any(s is not None and not s.plain for s in sigs):
        g_f, why_f = _forward(sigs, _prefix(links))
    via = [v for link in links for v in link.via] if exit_ else []
    if need_b and (any(f != 1.0 for _, f, _ in via) or any(n.q != 1.0 or n.kind == "rule" for n in consumers)):
        g_b, why_b = _backward(via, {n.id: n for n in consumers}, gains, _prefix(links), links[0].name)
    parts = ([why_f] if need_f else []) + ([why_b] if need_b else [])
    plain = not any(s is not None and not s.plain for s in sigs)
    reason = f"{mode}: " + "; ".join(parts) + _habit(producers, consumers, g_f, gains) * (need_f and plain)
    if len(links) > 1:
        reason += f"; shared by {', '.join(link.name for link in links)}: gains combined by the same average"
    return g_f, g_b, reason


def _prefix(links: list[LayerLinks]) -> str:
    """The module holding the layer: names in a chain are shown relative to it."""
    parent = links[0].name.rpartition(".")[0] if links else ""
    return parent + "." if parent else ""


def _forward(sigs: list, prefix: str) -> tuple[float, str]:
    """g_f = 1/sqrt(E[x^2]) from the propagated moments (unknown: 1), and the chain in words."""
    seconds = [s.second if s is not None and s.known else 1.0 for s in sigs]
    g = 1.0 / math.sqrt(sum(seconds) / len(seconds))
    texts = list(dict.fromkeys((s.text.replace(prefix, "") if s is not None else "an untracked tensor") for s in sigs))
    unknown = [s.note for s in sigs if s is not None and s.note]
    tail = f" ({', '.join(dict.fromkeys(unknown))}: no moment rule, E[x^2] = 1 assumed)" if unknown else ""
    if len(texts) == 1:
        s = sigs[0]
        return g, f"producer {texts[0]}: E[.^2] = {s.formula or f'{s.second:.4g}'} -> gain {g:.4g}{tail}"
    values = ", ".join(f"{v:.4g}" for v in seconds)
    return g, f"mixed producers ({'; '.join(texts)}): average of E[.^2] ({values}) -> gain {g:.4g}{tail}"


def _backward(via: list, nodes: dict, gains: Gains, prefix: str, layer: str) -> tuple[float, str]:
    """g_b = 1/sqrt(mean of factor x E[phi'^2] over the consumer chains), and the chains in words."""
    ds, words = [], []
    for node_id, factor, chain in via:
        n = nodes[node_id]
        stopped = n.kind in ("rule", "op")
        d = factor * (1.0 if stopped else gains.backward_d(n))
        ds.append(d)
        end = f"{n.label} (backward not followed there: 1)" if stopped else (
            n.label if n.kind == "activation" else n.where if n.kind == "layer" else _PLAIN[n.kind])
        words.append(f"{layer}{chain} -> {end}".replace(prefix, "") + f": E[d^2] x {d:.4g}")
    g = 1.0 / math.sqrt(sum(ds) / len(ds)) if ds and sum(ds) > 0 else 1.0
    return g, "consumer chains " * (len(set(words)) > 1) + "consumer chain " * (len(set(words)) == 1) + "; ".join(dict.fromkeys(words)) + f" -> gain {g:.4g}"


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
