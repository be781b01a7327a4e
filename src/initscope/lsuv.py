"""Data-dependent init: layer-sequential unit variance (LSUV) in one forward pass.

Mishkin & Matas 2016 ("All you need is a good init") pre-initialize orthogonally, then
scale each layer's weight until its output has std 1 on a real batch, one layer at a
time: a forward pass per layer and per correction. Here each layer's forward hook
measures its output, rescales the weight in place and *returns the corrected output*,
so the layers after it see corrected activations in the same pass. When every layer
runs once per forward, one pass fixes all of them; the hook also measures the corrected
output it hands on, and those measurements verify the pass (``verify="auto"``), or a second
pass verifies from scratch (``verify="pass"``, and whenever a layer ran more than once).

The std (and mean) is over all elements of the output, unbiased like ``Tensor.std()``.
With z = W x and bias b, the corrected output is s z + b + d: s solves
Var(s z + b) = s^2 Var z + 2 s Cov(z, b) + Var b = target_std^2 exactly, and with
``center=True`` d = -mean(s z + b). Statistics stay on the device in float64 and reach
the host once per pass.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from initscope import distributed
from initscope import _validate as check
from initscope._lsuv_pass import _DEFAULT, _host_rows, _Pass, _Slot, _verified, _within
from initscope._lsuv_solve import _scaled
from initscope._select import match
from initscope._state import call, preserved, rollback
from initscope.errors import (
    ArgumentError, ForwardError, InitscopeError, LayerError, ModelError, UnknownOptionError,
    choices_message,
)
from initscope.fans import is_transposed_linear
from initscope.layer import init_layer_
from initscope.lsuv_report import LsuvLayer, LsuvReport

__all__ = ["lsuv", "LsuvReport", "LsuvLayer", "PRE_INITS", "VERIFY"]

PreInit = Literal["orthogonal", "kaiming"]
Layers = Sequence[str] | Callable[[str, nn.Module], bool] | None
PRE_INITS = ("orthogonal", "kaiming", None)
Verify = Literal["auto", "pass"]
VERIFY = ("auto", "pass")
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
          nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)



# ---- setup, checks and resources ------------------------------------------------------------------

def _select(model: nn.Module, layers: Layers) -> list[_Slot]:
    """The modules to scale, grouped by the weight they scale."""
    named = {n or "<root>": m for n, m in model.named_modules()}
    if layers is None:
        inside = tuple(n + "." for n, m in named.items() if isinstance(m, nn.MultiheadAttention))
        pick = [n for n, m in named.items()
                if (isinstance(m, _DEFAULT) or is_transposed_linear(m)) and not n.startswith(inside)]
    else:
        pick = match(named, layers, lambda n: UnknownOptionError(choices_message(
            "layer", n, list(named)[:12], "pass names from model.named_modules(), or a predicate (name, module)")),
            arg="layers")
    if not pick:
        raise ModelError(f"{type(model).__name__} has no layer LSUV can scale (Linear, ConvNd, ConvTransposeNd, "
                         "MultiheadAttention); pass layers= as qualified names or a predicate (name, module)")
    groups: dict[int, list[tuple[str, nn.Module]]] = {}
    for n in pick:
        w = getattr(_scaled(named[n]), "weight", None)
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise LayerError(f"`{n}` ({type(named[n]).__name__}) has no floating-point weight to scale; "
                             "LSUV scales Linear, ConvNd, ConvTransposeNd and MultiheadAttention layers")
        groups.setdefault(id(w), []).append((n, named[n]))
    return [_Slot(mods) for mods in groups.values()]


def _check_args(target_std: float, tol: float, pre_init: str | None, max_passes: int, verify: str) -> None:
    if pre_init not in PRE_INITS:
        raise UnknownOptionError(choices_message("pre_init", pre_init, PRE_INITS, "None keeps the current weights"))
    if verify not in VERIFY:
        raise UnknownOptionError(choices_message("verify", verify, VERIFY, '"pass" always runs a verification forward'))
    for arg, value in (("target_std", target_std), ("tol", tol)):
        check.real(value, arg, low=0.0, strict=True)
    if isinstance(max_passes, bool) or not isinstance(max_passes, int) or max_passes < 2:
        raise ArgumentError(f"max_passes must be a whole number >= 2 (a correcting pass and a verification "
                            f"pass); got {max_passes!r}")


def _check_batch(batch: Any) -> None:
    """Reject a batch of the wrong type or with NaN/inf values, naming the offending tensor."""
    if not isinstance(batch, (torch.Tensor, list, tuple, Mapping)):
        raise ArgumentError(f"batch must be a tensor or a list (model(batch)), a tuple (model(*batch)) or a dict "
                            f"(model(**batch)); "
                            f"got {type(batch).__name__}")
    items = batch.items() if isinstance(batch, Mapping) else enumerate(batch) if isinstance(batch, (list, tuple)) \
        else [(None, batch)]
    for key, t in items:
        bad = int((~torch.isfinite(t)).sum()) if isinstance(t, torch.Tensor) and t.is_floating_point() else 0
        if bad:
            raise ArgumentError(f"batch{'' if key is None else f'[{key!r}]'} holds {bad} NaN/inf value(s) of "
                                f"{t.numel()}; LSUV needs a finite batch: clean it (torch.nan_to_num) or use another")


@contextmanager
def _hooks(model: nn.Module, slots: list[_Slot], run: _Pass):
    """Register the pass's hooks; remove them all on exit, also when the forward raises."""
    handles = []
    try:
        for slot in slots:
            handles += [m.register_forward_hook(run.layer_hook(slot, n)) for n, m in slot.modules]
        if run.mode == "all":
            handles += [m.register_forward_pre_hook(run.norm_hook(n)) for n, m in model.named_modules()
                        if isinstance(m, _NORMS)]
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _quiet(model: nn.Module):
    """Eval mode, no autograd, no fused attention fast path (it skips submodule hooks); the
    global RNG, buffers and every module's train flag are restored on exit."""
    mha = getattr(torch.backends, "mha", None)
    fast = mha.get_fastpath_enabled() if mha else None
    try:
        with preserved(model), torch.no_grad():
            model.eval()
            if mha:
                mha.set_fastpath_enabled(False)
            yield
    finally:
        if mha:
            mha.set_fastpath_enabled(fast)


# ---- the passes, and the public entry point -------------------------------------------------------

def _run_pass(model: nn.Module, batch: Any, slots: list[_Slot], mode: str, opts: dict, k: int,
              reducer: distributed.Reducer | None = None) -> tuple[bool, bool]:
    """One forward pass: (changed a weight, verified in flight). Statistics reach the host here.
    In a process group every layer call, and the end of the pass, is checked to be the same on
    every rank (a rank that skipped a layer would otherwise pair its sums with another layer's)."""
    run = _Pass(mode, opts, k, reducer)
    for slot in slots:
        slot.calls, slot.n, slot.applied, slot.after = 0, 0.0, torch.zeros_like(slot.applied), None
    with _hooks(model, slots, run):
        try:
            call(model, batch)
        except InitscopeError:
            raise
        except Exception as e:
            raise ForwardError(f"the model raised {type(e).__name__} during LSUV pass {k}: {e}; layers that "
                               f"finished: {', '.join(run.completed) or 'none'}; weights restored",
                               completed=run.completed) from e
    if reducer is not None:
        reducer.keyed_sum(torch.zeros(6, dtype=torch.float64), f"the end of pass {k}")
    ran = sorted((slot for slot in slots if slot.calls), key=lambda slot: slot.order)
    for slot in ran if mode == "fix" else ():
        if slot.multi:
            s, d, gate = run.correct(slot, slot.v, slot.n)
            slot.apply(slot.damped(s), d, gate)
    rows = _host_rows(ran)
    for slot, row in zip(ran, rows):
        slot.row, slot.multi = row, slot.multi or slot.calls > 1
        if not row[2]:
            _dead(slot, row[0])
    return any(row[3] for row in rows), run.in_flight and _verified(ran, opts)


def _dead(slot: _Slot, std: float) -> None:
    name, module = slot.modules[0]
    what = "has NaN/inf values" if math.isnan(std) else "is constant on this batch (std 0): its input is dead"
    raise LayerError(f"`{name}` ({type(module).__name__}): output {what}; LSUV cannot scale it; check the layers "
                     "before it (all ReLUs off? a zero or NaN weight?) and the batch; weights restored as found")


def _pre_init(slots: list[_Slot], scheme: str, generator: torch.Generator | None) -> None:
    sharded = [slot.name for slot in slots if distributed.is_dtensor(slot.weight)]
    if sharded:
        raise ArgumentError(f"`{sharded[0]}` holds a DTensor weight: pre_init={scheme!r} would draw per-rank values; "
                            f"run initscope.initialize(model, {scheme!r}) first (shard-aware) and pass pre_init=None")
    gen = generator or torch.Generator(slots[0].weight.device).manual_seed(0)
    for m in {id(m): m for slot in slots for _, m in slot.modules}.values():
        for part in dict.fromkeys([m, _scaled(m)]):
            init_layer_(part, scheme, generator=gen)


def _layer(slot: _Slot, opts: dict) -> LsuvLayer:
    name, kind = slot.name, type(slot.modules[0][1]).__name__
    if not slot.calls:
        return LsuvLayer(name, kind, 0, *[math.nan] * 2, 1.0, 0.0, *[math.nan] * 2, False, "",
                         "never ran in the forward: left as pre-initialized")
    std, mean, _, _, scale, shift, std0, mean0 = slot.row
    within = _within(slot, slot.row, opts)
    notes = [f"shares its weight with {', '.join(n for n, _ in slot.modules[1:])}"] * (len(slot.modules) > 1)
    notes += [f"runs {slot.calls} times per forward: std pooled, corrected between passes"] * (slot.calls > 1)
    notes += ["no bias: mean not centred"] * (opts["center"] and not slot.can_center)
    notes += [f"feeds {slot.norm}, which normalizes it: LSUV has no effect here"] * bool(slot.norm)
    notes += ["outside tol: raise max_passes"] * (not within)
    return LsuvLayer(name, kind, slot.calls, std0, mean0, scale, shift, std, mean, within, slot.norm, "; ".join(notes))


def lsuv(model: nn.Module, batch: Any, *, target_std: float = 1.0, center: bool = False, tol: float = 0.1,
         pre_init: PreInit | None = "orthogonal", layers: Layers = None, max_passes: int = 3,
         verify: Verify = "auto", generator: torch.Generator | None = None) -> LsuvReport:
    """Layer-sequential unit-variance init (Mishkin & Matas 2016), corrected in one forward pass.

    Each layer's weight is scaled (and with ``center`` its bias shifted) so that its output on
    ``batch`` has std ``target_std`` (and mean 0). Pass 1 corrects every layer in flight and
    measures each corrected output right there; when every layer ran once and landed within
    ``tol``, that is the verification and LSUV costs one forward. Otherwise (or with
    ``verify="pass"``) pass 2 verifies from scratch. A layer that runs more than once per
    forward, or shares its weight, is corrected between passes, up to ``max_passes``. Runs in eval mode without autograd; train flags,
    buffers, ``.grad`` and the global RNG are left as found, and no hook stays behind. Unlike
    the paper (and the ``lsuv`` package), the scale is solved exactly, bias included, instead
    of iterated layer by layer. A layer that feeds a normalization layer directly (BatchNorm
    after a conv) gets corrected too, but the report says the scale has no effect there. On
    CUDA, convolutions run in TF32 by default: the verification pass then agrees with the
    correction to about 1e-3 rather than 1e-7.

    Args:
        model: the network; changed in place.
        batch: a real batch on the model's device: a tensor or a list (``model(batch)``), a tuple
            (``model(*batch)``) or a dict (``model(**batch)``).
        target_std: the std each layer's output should have.
        center: also shift biases so each output has mean 0 (a layer without bias keeps its
            mean, and its report row says so).
        tol: how far |std - target_std| (and |mean| with ``center``) may be before another pass.
        pre_init: "orthogonal" (the paper), "kaiming", or None to keep the weights. Both zero biases.
        layers: qualified names, or a predicate ``(name, module) -> bool``. Default: every Linear,
            ConvNd, ConvTransposeNd, MultiheadAttention (scaled through its ``out_proj``) and
            transformers' ``Conv1D`` (GPT-2's Linear with its weight stored (in, out)).
        max_passes: forward passes at most, verification included (>= 2).
        verify: "auto" (the default) accepts pass 1's in-flight measurements of the corrected
            outputs when every layer ran once and is within ``tol``: those are the very tensors
            the rest of the forward consumed, and a fresh pass recomputes them from the scaled
            weights, equal to float32 rounding (about 1e-7). "pass" always runs a separate
            verification forward (the two passes of earlier versions).
        generator: for ``pre_init``; None uses a new one seeded with 0 (never the global RNG).

    Returns:
        An :class:`LsuvReport`: per layer the std and mean before, the scale and bias shift
        applied, and the std and mean measured afterwards (in flight or in the verification
        pass: ``report.verified`` says which).

    Raises:
        ModelError: no eligible layer. LayerError: a chosen layer has no weight, or its output is
        constant or NaN (a dead input). ShapeError: fewer than 2 samples per output unit.
        ArgumentError: a NaN/inf batch or a bad number. UnknownOptionError: a bad ``pre_init`` or
        layer name. ForwardError: the model raised. DistributedError: in a process group, the
        ranks ran different layers, or a rank raised (every rank raises it). Weights are restored before any raise.

    Examples:
        >>> from initscope import zoo
        >>> model, x = zoo.build("mlp", depth=5, width=32, batch=64)
        >>> report = lsuv(model, x, center=True)
        >>> report.passes, report.verified, report.converged
        (1, 'in flight', True)
        >>> round(model[:3](x).std().item(), 4)  # the second Linear's output
        1.0
    """
    check.module(model, "lsuv")
    _check_args(target_std, tol, pre_init, max_passes, verify)
    _check_batch(batch)
    slots = _select(model, layers)
    params = {id(p): p for slot in slots for _, m in slot.modules for p in m.parameters()}.values()
    opts = {"target_std": float(target_std), "center": bool(center), "tol": float(tol), "verify": verify}
    in_flight = False
    reducer = distributed.Reducer("lsuv") if distributed.active() else None
    with rollback(params), _quiet(model), distributed.section(reducer):
        if pre_init is not None:
            _pre_init(slots, pre_init, generator)
        for k in range(1, max_passes + 1):
            mode = "all" if k == 1 else "check" if k == max_passes else "fix"
            changed, in_flight = _run_pass(model, batch, slots, mode, opts, k, reducer)
            if in_flight or (not changed and k > 1):
                break
    slots.sort(key=lambda slot: slot.order)
    return LsuvReport(tuple(_layer(slot, opts) for slot in slots), opts["target_std"], opts["center"], opts["tol"], k,
                      "in flight" if in_flight else f"pass {k}")
