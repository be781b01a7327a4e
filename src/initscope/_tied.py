"""Tied weights: one tensor used both as an embedding (a lookup) and as a layer.

Language models tie the output projection to the input embedding (GPT-2's ``lm_head``
and ``transformer.wte``, BERT's MLM decoder, T5's ``lm_head`` and ``shared``). The two
uses want different scales for the same tensor:

- as a lookup, ``fan_in = 1``: std ``gain`` (1; torch's ``N(0, 1)``) gives embedding
  vectors of second moment 1;
- as a projection over ``d`` features, ``fan_in = d``: std ``gain / sqrt(d)`` gives
  logits of second moment 1. Std 1 there gives logits of std ``sqrt(d)`` (8 at d = 64,
  28 at d = 768): a softmax that starts saturated, with a loss far above ``log(vocab)``.

**Rule: the layer use sets the scale**, from its own fans and producer, as for any
other layer; the lookup then yields vectors of std ``gain / sqrt(d)``. This is the
trade-off the models themselves make (GPT-2 and BERT use std 0.02 for both uses, of the
order of ``1/sqrt(768) = 0.036``; T5 keeps std 1 and multiplies the decoder output by ``d**-0.5`` before
the tied projection, which is the same scale moved into the forward). The other order
costs more: logits ``sqrt(d)`` times too large cannot be repaired by anything before
them, while small embedding vectors are rescaled by the normalization that follows
them in every tied model we know of (GPT-2's ``ln_1``, BERT's embedding LayerNorm, T5's
and Llama's RMSNorm). Where nothing normalizes the lookup's output, its second moment
starts ``d`` times below 1; the plan row says so, so a user can untie or rescale.

**Embeddings added to a tied lookup** (GPT-2's position embedding ``wpe``, BERT's position and
token-type embeddings) take the tied lookup's std: the sum feeds one stream, and at std 1
against the lookup's ``1/sqrt(d)`` they would drown the token identity ``sqrt(d)`` to one.
"Added to" is read off the graph: the embedding's output reaches exactly the same layers
as the tied lookup's.

The plan has one row for the tensor (under its first name, whose ``layer`` is the use
that sets the scale), a reason naming every use, and each further name among the
untouched parameters ("same tensor as ...").
"""
from __future__ import annotations

from torch import nn

from initscope._rules import EMBEDDINGS
from initscope.graph import Graph

__all__ = ["split_uses", "alias_reason", "Streams"]

Unit = tuple  # (unit name, module, step, local parameter name)


def _label(unit: Unit) -> str:
    return f"`{unit[0]}` ({type(unit[1]).__name__})"


def split_uses(units: list[Unit]) -> tuple[list[Unit], list[Unit], str]:
    """(units that set the scale, lookups that follow it, reason) for the uses of one tensor.

    Without both a lookup and a layer among ``units``, every unit sets the scale (the
    existing rule for a shared weight: the gains of all its uses are combined) and the
    reason is empty.
    """
    lookups = [u for u in units if isinstance(u[1], EMBEDDINGS)]
    layers = [u for u in units if not isinstance(u[1], EMBEDDINGS)]
    if not lookups or not layers:
        return units, [], ""
    d = _features(layers[0][1], lookups[0][1])
    reason = (f"tied: one tensor used by {', '.join(map(_label, units))}; the layer use "
              f"{_label(layers[0])} sets its scale (gain/sqrt(fan_in), so its outputs start near unit scale), "
              f"and the lookup{'s' * (len(lookups) > 1)} {', '.join(map(_label, lookups))} "
              f"give{'s' * (len(lookups) == 1)} vectors of std gain/sqrt({d}) instead of gain: "
              "harmless when a normalization follows the embedding; untie the weights otherwise")
    return layers, lookups, reason


def _features(layer: nn.Module, lookup: nn.Module) -> int | str:
    return getattr(layer, "in_features", None) or getattr(lookup, "embedding_dim", None) or "fan_in"


def alias_reason(first: str, units: list[Unit], setters: list[Unit]) -> str:
    """Why a second name of a shared tensor has no row of its own."""
    if len(setters) == len(units) or not setters:
        return f"same tensor as `{first}`: initialized there"
    return f"same tensor as `{first}` (tied): initialized there, at the scale {_label(setters[0])} sets"


class Streams:
    """The std of each tied lookup, by the layers that read its output, so that embeddings
    added to it (the same readers) can take the same std."""

    def __init__(self, graph: Graph | None):
        self.graph, self.scales = graph, {}

    def _key(self, unit_name: str) -> frozenset[int] | None:
        link = self.graph.layers.get(unit_name) if self.graph else None
        return frozenset(n.id for n in link.consumers) if link and link.consumers else None

    def record(self, lookups: list[Unit], std: float) -> None:
        """Remember the std a tied tensor got, under the readers of each of its lookups."""
        for unit in lookups:
            key = self._key(unit[0])
            if key is not None:
                self.scales.setdefault(key, (std, unit[0]))

    def embedding_std(self, unit_name: str) -> tuple[float, str]:
        """(std, reason) of an untied embedding: a tied lookup's std when it is added to one, else 1."""
        found = self.scales.get(self._key(unit_name))
        if found is None:
            return 1.0, ""
        std, lookup = found
        return std, (f"added to the tied lookup `{lookup}` (its output reaches the same layers): its std {std:.4g}, "
                     "so neither part of the sum drowns the other")
