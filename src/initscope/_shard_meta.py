"""Discovery's forward on a sharded model, with no parameter gathered.

Under FSDP2 a forward all-gathers every block's parameters (and prefetches the next
block's), so a real discovery run needs several unsharded blocks per rank: 3.7-4.4x the
local shard on the 50M-parameter benchmark (``benchmarks/sharded_init_memory.py``).
Discovery tracks the data flow, not values (see :mod:`initscope._discover`), so a model
that holds DTensor parameters runs instead on the ``meta`` device:

- every DTensor (parameter, buffer or input) becomes a plain meta tensor of its *global*
  shape, so the forward is the unsharded model's and no rank's shard is read;
- other tensors become meta tensors too, except 0-d ones (a scale held in a buffer), which
  stay as they are: rules read their values, as in a single-process run;
- FSDP2's forward hooks (unshard, reshard, the root's lazy init) are held back for the
  run: taken out of the modules' hook dictionaries and put back, in their places, on exit
  (also when the run raises). Other hooks stay.

A forward this cannot run (tensor-parallel input hooks that make DTensors, ``.item()``, an
FSDP2 version whose hooks are not recognised) gives None and the caller runs the model for
real. Every rank takes the same path: the ranks agree first (one all_reduce). This module
imports nothing from ``torch.distributed``; FSDP2 is looked up in ``sys.modules``, as
:func:`initscope.distributed.reshard` does.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import torch
from torch import nn

from initscope import distributed
from initscope._state import map_tensors

__all__ = ["sharded", "run"]


def sharded(model: nn.Module) -> bool:
    """Whether ``model`` holds a DTensor parameter."""
    return "torch.distributed.tensor" in sys.modules and any(map(distributed.is_dtensor, model.parameters()))


def _meta(t: torch.Tensor) -> torch.Tensor:
    if distributed.is_dtensor(t):
        return torch.empty(t.shape, dtype=t.dtype, device="meta")
    return t if t.dim() == 0 else torch.empty_like(t, device="meta")


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Meta stand-ins by name; a tensor under several names (tied weights) gets one stand-in,
    as ``functional_call(tie_weights=True)`` requires."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    made: dict[int, torch.Tensor] = {}
    return {n: made.setdefault(id(t), _meta(t)) for n, t in named if t.dim() > 0 or distributed.is_dtensor(t)}


def _fsdp_hook(hook: object, state: object) -> bool:
    """Whether ``hook`` is a bound method of the module's FSDP2 state (or wraps one)."""
    return any(getattr(h, "__self__", None) is state for h in (hook, getattr(hook, "__wrapped__", None)))


@contextlib.contextmanager
def _fsdp_hooks_held(model: nn.Module) -> Iterator[bool]:
    """Inside, FSDP2 modules run without their forward hooks. Yields False (holding nothing)
    when an FSDP2 module has no hook recognised as its own."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    modules = [m for m in model.modules() if fsdp is not None and isinstance(m, fsdp.FSDPModule)]
    saved = [(d, list(d.items())) for m in modules for d in (m._forward_pre_hooks, m._forward_hooks)]
    try:
        held = True
        for m in modules:
            state = fsdp.fully_shard.state(m)
            ours = [(d, k) for d in (m._forward_pre_hooks, m._forward_hooks) for k, h in d.items()
                    if _fsdp_hook(h, state)]
            held = held and bool(ours)
            for d, k in ours:
                del d[k]
        yield held
    finally:
        for d, items in saved:
            d.clear()
            d.update(items)


def run(model: nn.Module, example_input: object, runner: Callable[[dict, object], object]) -> object | None:
    """``runner(meta state, meta input)`` on global shapes, FSDP2's hooks held back; None (on
    every rank) when any rank could not run it."""
    result = None
    try:
        with _fsdp_hooks_held(model) as held:
            if held:
                result = runner(_state(model), map_tensors(example_input, _meta))
    except Exception:  # noqa: BLE001  any failure on meta: the real run decides, and reports
        result = None
    if not distributed.everywhere(result is not None, "initialize: discovery on global shapes"):
        return None
    return result
