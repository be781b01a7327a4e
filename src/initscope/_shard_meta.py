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
- torch.distributed's forward hooks are held back for the run: FSDP2's (unshard, reshard,
  the root's lazy init) and tensor parallelism's (local tensors to DTensors and back), which
  move between shards and global tensors, the step the stand-in makes unnecessary. They are
  taken out of the modules' hook dictionaries and put back, in their places, on exit (also
  when the run raises). The user's own hooks stay.

A forward this cannot run (``.item()``, an input sharded along a dimension the weights
meet, an FSDP2 version whose hooks are not recognised) gives None and the caller runs the
model for real. Every rank takes the same path: the ranks agree first (one all_reduce), so
that no rank waits alone in FSDP2's all-gather. This module imports nothing from
``torch.distributed``; FSDP2 is looked up in ``sys.modules``, as
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


def _distributed_hook(hook: object) -> bool:
    """Whether ``hook`` is torch.distributed's own (FSDP2's state methods, the lambdas of
    ``distribute_module`` and ``parallelize_module``'s styles), also behind a wrapper."""
    return any(str(getattr(h, "__module__", "")).startswith("torch.distributed.")
               for h in (hook, getattr(hook, "__wrapped__", None), getattr(hook, "func", None)) if h is not None)


@contextlib.contextmanager
def _hooks_held(model: nn.Module) -> Iterator[bool]:
    """Inside, the modules run without torch.distributed's forward hooks. Yields False (holding
    nothing back) when an FSDP2 module has none recognised: its hooks would gather on the stand-in."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    dicts = [d for m in model.modules() for d in (m._forward_pre_hooks, m._forward_hooks)]
    saved = [(d, list(d.items())) for d in dicts]
    try:
        ours = {id(d): [k for k, h in d.items() if _distributed_hook(h)] for d in dicts}
        fsdp_modules = [m for m in model.modules() if fsdp is not None and isinstance(m, fsdp.FSDPModule)]
        held = all(ours[id(m._forward_pre_hooks)] and ours[id(m._forward_hooks)] for m in fsdp_modules)
        for d in dicts if held else ():
            for k in ours[id(d)]:
                del d[k]
        yield held
    finally:
        for d, items in saved:
            d.clear()
            d.update(items)


def run(model: nn.Module, example_input: object, runner: Callable[[dict, object], object]) -> object | None:
    """``runner(meta state, meta input)`` on global shapes, torch.distributed's hooks held back;
    None (on every rank) when any rank could not run it."""
    result = None
    try:
        with _hooks_held(model) as held:
            if held:
                result = runner(_state(model), map_tensors(example_input, _meta))
    except Exception:  # noqa: BLE001  any failure on meta: the real run decides, and reports
        result = None
    if not distributed.everywhere(result is not None, "initialize: discovery on global shapes"):
        return None
    return result
