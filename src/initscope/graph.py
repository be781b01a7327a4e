"""Graph discovery: for each weight layer, what produced its input and what consumes its
output, and which additions are residual branches ``x + f(x)``.

:func:`discover` runs the model once on ``example_input`` under module hooks and a
torch function mode, so it sees module calls and also the functional calls of a custom
forward (``F.relu``, ``torch.tanh``, ``x.relu()``, in-place variants, ``+``). Every
value carries a *tag*: what made it, which weight layers still look for their consumer,
and every step upstream of it. The rules:

- **producer** of a layer: the activation, normalization, raw input, weight layer or
  unknown op that made its input. Shape-only ops, dropout, pooling, ``mean`` and scaling
  by a number pass the tag through; additions and ``cat`` merge tags, so an input can
  have several producers.
- **consumer** of a layer: the activation its output flows into, passing through
  shape ops, normalizations and additions; else the next weight layer, an unknown op
  or the model output (all linear for the gain: 1).
- **residual branch**: an addition ``a + b`` where every step upstream of ``a`` is also
  upstream of ``b`` and ``b`` has weight layers of its own (``b`` is the branch ``f``), or
  a projection shortcut: ``a`` has one weight layer of its own and ``b`` at least two.
  Parallel branches of equal depth are not residual. The branch's last weight layer and
  the normalization after it (if any) are recorded.

- **moments**: every value also carries its mean and second moment (:mod:`initscope._signal`),
  moved through the ops between layers by the rules of :mod:`initscope.oprules` (products,
  gates, GLU, sums, concat, dropout, ...); a layer records the moments of its input and, per
  consumer, the backward factors of the ops on the way (``LayerLinks.signals``/``via``).
  Ops with a rule do not stop the search for a consumer unless their rule says so.

Without ``example_input`` it reads a ``torch.fx`` symbolic trace, else the module
registration order (no residual detection there); both are marked "assumed" and give
one :class:`DiscoveryWarning`. Nothing about the model changes: see :func:`discover`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from initscope import _discover, _flow, _signal
from initscope._ops import Step
from initscope.errors import DiscoveryWarning

__all__ = ["Node", "LayerLinks", "Branch", "Graph", "DiscoveryWarning", "discover"]


@dataclass(frozen=True)
class Node:
    """One step of the forward pass. ``kind``: input, layer, activation, norm, op, output, constant.

    ``where`` is the module's qualified name, or for a function call the module whose forward
    made it; ``how`` is observed (module hook), traced (function mode) or assumed (fx/order).
    """

    id: int
    kind: str
    label: str
    where: str
    how: str
    functional: bool = False
    spec: object = field(default=None, compare=False, repr=False)
    param: float | None = None
    q: float = field(default=1.0, compare=False)

    def describe(self) -> str:
        """A short text for the plan, e.g. ``gelu [traced in blocks.0]``."""
        if self.kind in ("input", "output", "constant"):
            return {"input": "raw input", "output": "model output", "constant": "untracked tensor"}[self.kind]
        place = f"in {self.where or 'forward'}" if self.functional else self.where
        return f"{self.label} [{self.how} {place}]"


@dataclass(frozen=True)
class LayerLinks:
    """A weight layer, how often it ran, its producers and its consumers (in call order).

    ``signals``: the moments of its input, one per call (:mod:`initscope._signal`);
    ``via``: per consumer reached, (node id, backward factor, words) of the ops met on the way.
    """

    name: str
    layer_type: str
    calls: int
    producers: tuple[Node, ...]
    consumers: tuple[Node, ...]
    signals: tuple = field(default=(), compare=False, repr=False)
    via: tuple = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Branch:
    """A residual branch ``f`` of ``x + f(x)``: its weight layers and where it ends."""

    where: str
    last_layer: str
    last_norm: str | None
    layers: tuple[str, ...]


@dataclass(frozen=True)
class Graph:
    """What :func:`discover` found. ``method``: run, fx or order."""

    method: str
    layers: dict[str, LayerLinks]
    norms: tuple[str, ...]
    branches: tuple[Branch, ...]
    final: tuple[str, ...]


@dataclass(frozen=True)
class _Tag:
    producers: frozenset = frozenset()
    pending: frozenset = frozenset()     # (layer node id, factor, words, hold) looking for a consumer (_flow)
    anc: frozenset = frozenset()         # every node upstream
    last: frozenset = frozenset()        # last weight layer(s) on the way here
    norms: frozenset = frozenset()       # module norms after `last`
    sig: object = None                   # the value's moments (a Signal)


_SETS = ("producers", "pending", "anc", "last", "norms")


def _merge(tags: list[_Tag]) -> _Tag | None:
    if len(tags) <= 1:
        return tags[0] if tags else None
    return _Tag(*(frozenset().union(*(getattr(t, f) for t in tags)) for f in _SETS),
                _flow.merged([t.sig for t in tags]))


class Tracker:
    """Propagates tags through a forward pass, one call at a time (see the module doc).

    ``store`` maps values to tags (``get``/``set``); ``how`` is (for modules, for functions).
    """

    def __init__(self, store, how: tuple[str, str]):
        self.store, self.how = store, how
        self.nodes: list[Node] = []
        self._links: dict[str, list] = {}          # name -> [type, calls, producer ids, consumer ids]
        self._layer_of: dict[int, str] = {}
        self._norm_of: dict[int, str] = {}
        self._branches: dict[str, Branch] = {}
        self._final: list[str] = []
        self._constant: Node | None = None
        self._kept: set = set()                    # (layer node id, activation record) held to the end
        self._dirtied: set = set()                 # ... superseded by a chain through the activation

    def _node(self, kind: str, label: str, where: str, functional: bool = False, step: Step | None = None,
              q: float = 1.0) -> Node:
        how = self.how[1] if functional else self.how[0]
        node = Node(len(self.nodes), kind, label, where, how, functional,
                    step.spec if step else None, step.param if step else None, q)
        self.nodes.append(node)
        return node

    def _tag(self, values) -> _Tag | None:
        return _merge([t for t in map(self.store.get, values) if t is not None])

    def _set(self, values, tag: _Tag | None) -> None:
        if tag is not None:
            for v in values:
                self.store.set(v, tag)

    def _consume(self, tag: _Tag | None, node: Node, pending: frozenset | None = None) -> None:
        for p, factor, words, hold in (tag.pending if tag else frozenset()) if pending is None else pending:
            if hold is not None:  # the activation passed on the way is the consumer (its record stands)
                self._kept.add((p, hold[0]))
                continue
            self._record(p, node.id, factor, words)

    def _record(self, p: int, node_id: int, factor: float, words: str) -> None:
        entry = self._links[self._layer_of[p]]
        entry[3].add(node_id)
        entry[5].append((node_id, factor, words))

    def input(self, values) -> None:
        """Mark the model's inputs as raw data."""
        for v in values:
            n = self._node("input", "input", "").id
            self.store.set(v, _Tag(frozenset({n}), anc=frozenset({n}), sig=_signal.source("input", frozenset({n}))))

    def module(self, name: str, step: Step, inputs, outputs) -> None:
        """An atomic module ran: a layer, a normalization, an activation or a pass-through leaf."""
        tag = self._tag(inputs)
        if step.kind == "layer":
            return self._layer(name, step.label, tag, outputs)
        self.function(step, name, inputs, outputs, functional=False)

    def _layer(self, name: str, layer_type: str, tag: _Tag | None, outputs) -> None:
        node = self._node("layer", layer_type, name)
        entry = self._links.setdefault(name, [layer_type, 0, set(), set(), [], []])
        entry[1] += 1
        if tag is None or not tag.producers:
            self._constant = self._constant or self._node("constant", "constant", "")
        entry[2].update(tag.producers if tag and tag.producers else {self._constant.id})
        entry[4].append(tag.sig if tag else None)
        self._consume(tag, node)
        self._layer_of[node.id] = name
        me = frozenset({node.id})
        self._set(outputs, _Tag(me, frozenset({(node.id, 1.0, "", None)}), (tag.anc if tag else frozenset()) | me, me,
                                sig=_signal.source(name, frozenset({("L", node.id)}))))

    def function(self, step: Step, where: str, inputs, outputs, functional: bool = True) -> None:
        """A classified step (see :func:`initscope._ops.classify_function`) ran in ``where``."""
        tags = [self.store.get(v) for v in inputs]
        tag = _merge([t for t in tags if t is not None])
        if tag is None:  # made from constants only (torch.arange, a parameter): stays untracked
            return None
        if step.kind == "add" and self._residual([t for t in tags if t is not None], where):
            stream = _signal.source(f"residual stream in {where or 'forward'}", tag.sig.elems if tag.sig else frozenset())
            return self._set(outputs, replace(tag, sig=stream))
        if step.kind in ("pass", "merge", "add", "rule"):
            outcome = _flow.evaluate(step, inputs, tags, len(outputs))
            if outcome is not None or step.kind != "rule" and not _flow.arithmetic(step):
                return self._flowed(step, where, functional, tags, tag, outputs, outcome)
            step = Step("op", f"torch.{step.call[0]}" if step.kind == "pass" else step.label)  # the rule does not apply
        sig = tag.sig
        q = sig.second if sig is not None and sig.level != 0 and step.kind == "activation" else 1.0
        node = self._node(step.kind, step.label, where, functional, step, q)
        anc = tag.anc | {node.id}
        if step.kind == "norm":
            if not functional:
                self._norm_of[node.id] = where
            norms = frozenset({node.id}) if not functional else tag.norms
            out = _signal.source(step.label if functional else where, sig.elems if sig else frozenset())
            return self._set(outputs, _Tag(frozenset({node.id}), tag.pending, anc, tag.last, norms, out))
        pending = frozenset()
        if step.kind == "activation":  # the chain goes on through it, the activation's rule first
            pending, records = _flow.through(tag.pending, node)
            for p, factor, words in records:
                self._record(p, node.id, factor, words)
        else:
            self._consume(tag, node)
        self._set(outputs, _Tag(frozenset({node.id}), pending, anc, tag.last, tag.norms,
                                _flow.after(step, sig, node)))

    def _flowed(self, step: Step, where: str, functional: bool, tags: list, tag: _Tag, outputs,
                outcome) -> None:
        """A pass-through, a sum or an op with a moment rule: new moments, the backward chain goes on."""
        if outcome is None:
            return self._set(outputs, tag)
        node = self._node("rule", step.label, where, functional, step) if step.kind == "rule" else None
        pending, stopped, dirtied = _flow.pending(tags, outcome.back, keep=node is None)
        self._dirtied |= dirtied
        if node is not None:
            self._consume(None, node, stopped)
        producers = frozenset({node.id}) if node else tag.producers
        anc = tag.anc | {node.id} if node else tag.anc
        sigs = outcome.signals if len(outcome.signals) == len(outputs) else [outcome.signals[0]] * len(outputs)
        for value, sig in zip(outputs, sigs):
            self.store.set(value, _Tag(producers, pending, anc, tag.last, tag.norms, sig))

    def output(self, values) -> None:
        """The model returned ``values``: pending layers feed the output."""
        tag = self._tag(values)
        self._consume(tag, self._node("output", "output", ""))
        self._final = [self._layer_of[i] for i in sorted(tag.last)] if tag else []

    def _own_layers(self, ids: frozenset) -> list[str]:
        return list(dict.fromkeys(self._layer_of[i] for i in sorted(ids) if i in self._layer_of))

    def _residual(self, tags: list[_Tag], where: str) -> bool:
        """Record a residual branch if ``a + b`` is one; True if it is."""
        if len(tags) != 2:
            return False
        a, b = tags
        own_a, own_b = self._own_layers(a.anc - b.anc), self._own_layers(b.anc - a.anc)
        if a.anc <= b.anc and own_b or b.anc <= a.anc and own_a:
            branch = b if own_b else a
        elif a.anc & b.anc and sorted((len(own_a), len(own_b))) == [1, max(2, len(own_a), len(own_b))]:
            branch = a if len(own_a) > len(own_b) else b
        else:
            return False
        own = own_a if branch is a else own_b
        last = self._layer_of[max(branch.last)] if branch.last else own[-1]
        norm = self._norm_of.get(max(branch.norms)) if branch.norms else None
        self._branches.setdefault(last, Branch(where, last, norm, tuple(own)))
        return True

    def graph(self, method: str) -> Graph:
        """The :class:`Graph` found so far."""
        gone = {(self._layer_of[p], r) for p, r in self._dirtied - self._kept}
        links = {}
        for name, (t, calls, prod, cons, sigs, via) in self._links.items():
            if gone:  # an activation's record whose every path out met a factor: its chains replace it
                via = [v for v in via if (name, v) not in gone]
                cons = {i for i in cons if any(v[0] == i for v in via)} if via else cons
            links[name] = LayerLinks(name, t, calls, tuple(self.nodes[i] for i in sorted(prod)),
                                     tuple(self.nodes[i] for i in sorted(cons)), tuple(sigs), tuple(via))
        norms = tuple(dict.fromkeys(self._norm_of.values()))
        return Graph(method, links, norms, tuple(self._branches.values()), tuple(self._final))


def discover(model: nn.Module, example_input: object = None) -> Graph:
    """Find each weight layer's producers and consumers, and the residual branches.

    With ``example_input`` the model runs once (``model(*x)`` for a tuple,
    ``model(**x)`` for a dict, else ``model(x)``, a list too) in its current train/eval mode, under
    ``no_grad``, with a forked RNG; buffers (BatchNorm statistics) and every module's
    ``training`` flag are restored afterwards and no hook or mode is left behind, also when
    the forward raises. The run tracks data flow, not values: a large input runs on the
    ``meta`` device, and plain ``nn.Linear`` layers skip their arithmetic (their output is
    zeros of the right shape), so values seen by custom code in the forward are not the
    model's; a model holding DTensor parameters (FSDP2, tensor parallel) runs on ``meta`` with
    their global shapes, gathering none (:mod:`initscope._shard_meta`). Without it: ``torch.fx``
    or registration order, and a :class:`DiscoveryWarning`. Works on ``meta`` models (with a ``meta`` input, or none).

    Raises:
        ForwardError: the model raised on ``example_input``; names the layer that was
            running and the layers that completed.

    Examples:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> g = discover(model, torch.randn(2, 4))
        >>> [n.describe() for n in g.layers["2"].producers], g.layers["0"].consumers[0].label
        (['Tanh [observed 1]'], 'Tanh')
    """
    if example_input is not None:
        return _discover.run(model, example_input, Tracker).graph("run")
    tracker, method = _discover.fallback(model, Tracker)
    how = "a torch.fx symbolic trace" if method == "fx" else "module registration order (fx could not trace it)"
    warnings.warn(DiscoveryWarning(
        f"{type(model).__name__}: no example_input, so the activation around each layer is assumed from "
        f"{how}; pass example_input= to observe a real forward pass"), stacklevel=2)
    return tracker.graph(method)

