"""Model state as a resource, and how an input is handed to a model.

- :func:`preserved`: everything a call into the model could change comes back on exit,
  also when the block raises: train/eval flags, ``requires_grad``, buffers (and, with
  ``params=True``, parameters) bitwise and re-attached if the forward replaced them,
  ``.grad`` of parameters and of given leaf tensors, and the global CPU and CUDA RNG
  states. Only values that changed are written back, so version counters stay put.
- :func:`rollback`: tensors put back only when the block raises (nothing half-applied).
- :func:`call` and :func:`split_inputs`: a tuple (and a list) as positional arguments,
  a dict as keyword arguments, anything else as the one argument.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> bn = nn.BatchNorm1d(3)
    >>> with preserved(bn):
    ...     _ = call(bn, (torch.randn(8, 3) + 5,))
    >>> bn.running_mean.tolist()  # the forward's update is undone
    [0.0, 0.0, 0.0]
"""
from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

__all__ = ["preserved", "rollback", "call", "split_inputs", "map_tensors", "gc_paused", "main_output"]

_MAIN_KEYS = ("logits", "last_hidden_state")

_AS_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def map_tensors(obj: Any, fn) -> Any:
    """The same nested tuples, lists and mappings (as dicts) with ``fn`` applied to every tensor.

    Examples:
        >>> map_tensors((torch.ones(2), [3, {"a": torch.zeros(1)}]), lambda t: t.shape)
        (torch.Size([2]), [3, {'a': torch.Size([1])}])
    """
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(map_tensors(v, fn) for v in obj)
    if isinstance(obj, list):
        return [map_tensors(v, fn) for v in obj]
    if isinstance(obj, Mapping):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


def split_inputs(inputs: Any) -> tuple[tuple, dict]:
    """(args, kwargs) for ``model(*args, **kwargs)``: the one rule of probe, lsuv and discovery.

    A tuple is unpacked as positional arguments and a mapping as keyword arguments; anything
    else, a tensor or a list of tensors, is the one positional argument (a model that takes a
    list gets it; several arguments go in a tuple).
    """
    if isinstance(inputs, tuple):
        return inputs, {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    return (inputs,), {}


def call(model: nn.Module, inputs: Any) -> Any:
    """``model(*inputs)``, ``model(**inputs)`` or ``model(inputs)``, as :func:`split_inputs` says."""
    args, kwargs = split_inputs(inputs)
    return model(*args, **kwargs)


def main_output(output: Any) -> tuple[Any, str]:
    """(the part of a model's output a default loss is taken on, its key), for mappings.

    A mapping (an HF ``ModelOutput`` is one) gives its scalar ``loss`` when the model computed
    one (labels were in the batch), else its ``logits``, else its ``last_hidden_state``: the
    model's prediction, not the auxiliary tensors beside it (hidden states, attentions, an
    encoder's output, cached keys and values). Anything else comes back whole, key "".

    Examples:
        >>> main_output({"logits": torch.ones(2), "hidden_states": (torch.ones(3),)})
        (tensor([1., 1.]), 'logits')
        >>> main_output(torch.ones(1))
        (tensor([1.]), '')
    """
    if not isinstance(output, Mapping):
        return output, ""
    loss = output.get("loss")
    if isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.is_floating_point():
        return loss, "loss"
    for key in _MAIN_KEYS:
        value = output.get(key)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value, key
    return output, ""


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        as_int = _AS_INT.get(a.element_size())
        if as_int is not None and not a.is_complex():
            return torch.equal(a.detach().view(as_int), b.view(as_int))
    return torch.equal(a.detach(), b)


def _owned(module: nn.Module, params: bool) -> list[tuple[str, torch.Tensor]]:
    own = [*module.named_parameters(recurse=False)] if params else []
    return [(n, t) for n, t in [*own, *module.named_buffers(recurse=False)] if not is_lazy(t)]


class _Snapshot:
    """What :func:`preserved` restores (see the module notes)."""

    def __init__(self, model: nn.Module, params: bool, leaves: Sequence[torch.Tensor]) -> None:
        self.slots = [(m, n, t) for m in model.modules() for n, t in _owned(m, params)]
        self.values = {id(t): (t, t.detach().clone()) for _, _, t in self.slots}  # one copy of a shared tensor
        self.grads = [(t, t.grad) for t in [*model.parameters(), *leaves]]
        self.flags = [(m, m.training) for m in model.modules()]
        self.requires = [(p, p.requires_grad) for p in model.parameters()]
        self.cpu_rng = torch.get_rng_state()
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        self.cuda_rng = torch.cuda.get_rng_state_all() if cuda else None

    def restore(self) -> None:
        for m, flag in self.flags:
            m.training = flag
        for p, flag in self.requires:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        self._restore_values()
        for t, g in self.grads:
            if t.grad is not g:
                t.grad = g
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)

    def _restore_values(self) -> None:
        for m, n, t in self.slots:
            if getattr(m, n) is not t:  # the forward replaced the tensor: put the original back
                setattr(m, n, t)
        with torch.no_grad():
            for t, saved in self.values.values():  # copy only what changed, so version counters stay put
                if not _same_bits(t, saved):
                    t.copy_(saved)


@contextmanager
def preserved(model: nn.Module, *, params: bool = False, leaves: Sequence[torch.Tensor] = ()) -> Iterator[None]:
    """Restore the model's state on exit (see the module notes), also when the block raises.

    Args:
        model: the network.
        params: also restore parameter values (bitwise); buffers are always restored.
        leaves: more tensors whose ``.grad`` to restore (inputs that require grad).
    """
    snap = _Snapshot(model, params, leaves)
    try:
        yield
    finally:
        snap.restore()


@contextmanager
def rollback(tensors: Iterable[torch.Tensor]) -> Iterator[None]:
    """Put the tensors' values back when the block raises; keep the changes when it succeeds."""
    saved = [(t, t.detach().clone()) for t in tensors]
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for t, value in saved:
                t.copy_(value)
        raise



@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the block; it is re-enabled after, also on error.

    A call that makes many short-lived objects (discovery, planning) can set off a full
    collection, which walks every object of the process: 117 ms with torch 2.13 alone
    imported, against ~10 ms for the rest of a 99M-parameter plan. Those temporaries hold
    no cycles and are freed by reference counting when the call returns, so pausing skips
    that work instead of postponing it. A collector that the caller disabled stays disabled.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
