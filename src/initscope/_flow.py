"""How the graph tracker moves moments (:mod:`initscope._signal`) through one step.

The tracker (:mod:`initscope.graph`) keeps the data flow: producers, consumers, residual
branches. This module gives it the moments of each new value and the backward chain:
``pending`` entries (layer node id, factor, words) travel from a layer's output towards
its consumers, and each op with a rule multiplies the factor by what it does to
E[(dL/dx)^2] (:mod:`initscope.oprules`).
"""
from __future__ import annotations

import math

import torch

from initscope import _signal
from initscope._builtin_rules import Call, Outcome, total
from initscope._ops import Step
from initscope.errors import ArgumentError, InitscopeError
from initscope.oprules import is_user_rule, rule_for

_ARITHMETIC = {"mul", "div", "true_divide", "neg", "add", "sub", "rsub"}

__all__ = ["merged", "evaluate", "arithmetic", "pending", "through", "deriv", "after"]


def merged(sigs: list) -> object:
    """The moments of a value with several sources (a module's several inputs): one if they agree."""
    known = [s for s in sigs if s is not None]
    if not known:
        return None
    if all(s is known[0] for s in known):
        return known[0]
    return _signal.combine(known, text="mix of (" + ", ".join(s.text for s in known) + ")")


def _shape(value: object) -> tuple | None:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    meta = getattr(value, "meta", None)
    tm = meta.get("tensor_meta") if isinstance(meta, dict) else None
    return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None


def evaluate(step: Step, inputs: list, tags: list, outputs: int) -> Outcome | None:
    """The rule's outcome for this call, or None (no rule: moments pass unchanged, or an unknown op)."""
    if step.call is None:
        return None
    name, raw, args, kwargs = step.call
    sigs = {id(v): t.sig for v, t in zip(inputs, tags) if t is not None}
    call = Call(name, raw, args, kwargs, list(inputs), lambda v: sigs.get(id(v)), _shape, outputs)
    if step.kind in ("add", "merge"):
        return total(call, 1.0 if step.kind == "add" else -1.0)
    rule = rule_for(name)
    if rule is None:
        return None
    try:
        return rule(call)
    except Exception as exc:  # noqa: BLE001  a built-in rule meeting an unforeseen call: no rule
        if is_user_rule(name):
            raise ArgumentError(f"register_rule({name!r}): the rule raised {type(exc).__name__}: {exc}; "
                                "fix it or remove it with register_rule(op, None)") from exc
        return None


def arithmetic(step: Step) -> bool:
    """A scalar op (x * c, x + d, ...): when its rule cannot read the number, an op without a rule."""
    return step.kind == "pass" and step.call is not None and step.call[0] in _ARITHMETIC


def pending(tags: list, back: list, keep: bool) -> tuple[frozenset, frozenset, frozenset]:
    """(entries that go on, entries stopped here, holds superseded). An operand whose factor is
    None stops its entries (``keep``: a pass-through keeps them with factor 1, as before the rules).

    An entry that passed an activation holds that activation's record (the consumer-activation
    rule) while the ops after it leave the factor at 1; the first factor other than 1 turns it
    into a plain chain through the activation(s), times their E[phi'^2], and the hold is
    superseded for that path (``(layer node id, record)``).
    """
    go, stop, dirtied = set(), set(), set()
    for i, tag in enumerate(tags):
        if tag is None:
            continue
        factor = back[i] if i < len(back) else None
        for p, f, words, hold in tag.pending:
            if factor is None:
                (go if keep else stop).add((p, f, words, hold))
            elif hold is not None and factor[0] != 1.0:
                d = math.prod(deriv(n) for n in hold[1])
                go.add((p, f * d * factor[0], _signal.short(words + factor[1]), None))
                dirtied.add((p, hold[0]))
            else:
                go.add((p, f * factor[0], _signal.short(words + factor[1]), hold))
    return frozenset(go), frozenset(stop), frozenset(dirtied)


def through(entries: frozenset, node: object) -> tuple[frozenset, list]:
    """Entries going on past activation ``node``, and the records to make there (consumer rule)."""
    go, records = set(), []
    for p, f, words, hold in entries:
        if hold is None:
            records.append((p, f, words))
            hold = ((node.id, f, words), ())
        go.add((p, f, _signal.short(f"{words} -> {node.label}"), (hold[0], (*hold[1], node))))
    return frozenset(go), records


def deriv(node: object) -> float:
    """E[phi'^2] of activation ``node`` at its input's q (1 where unknown)."""
    try:
        return _signal.gaussian(node.spec, node.q, node.param, derivative=True).deriv_second
    except InitscopeError:
        return 1.0


def after(step: Step, sig: object, node: object) -> object:
    """The moments after an activation or an op without a rule."""
    if step.kind == "activation" and sig is not None:
        return _signal.activation(sig, step.spec, step.param, step.label)
    elems = sig.elems if sig is not None else frozenset()
    return _signal.source(f"{node.label} (no moment rule)", elems, note=node.label)
