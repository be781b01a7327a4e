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
from initscope._lsuv_solve import _along, _alive, _moments, _scaled, _solve, _std_mean, _sums, _z_moments
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
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_DEFAULT = (nn.Linear, nn.MultiheadAttention, *_CONVS)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
          nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)



# ---- one scaled weight, and the hooks of one pass -----------------------------------------------

class _Slot:
    """One scaled weight: the modules that use it (tied weights share a slot) and what was done."""

    def __init__(self, modules: list[tuple[str, nn.Module]]):
        self.modules, (self.name, first) = modules, modules[0]
        self.weight = _scaled(first).weight
        biases = [_scaled(m).bias for _, m in modules]
        self.biases = list({id(b): b for b in biases if b is not None}.values())
        self.can_center = all(b is not None for b in biases)
        self.scale = torch.ones((), dtype=torch.float64, device=self.weight.device)
        self.shift, self.applied = torch.zeros_like(self.scale), torch.zeros_like(self.scale, dtype=torch.bool)
        self.calls, self.multi, self.order, self.norm, self.row, self.n = 0, False, math.inf, "", [], 0.0
        self.v = self.before = self.last_log = self.after = None

    def add(self, v: torch.Tensor, n: float) -> None:
        self.v, self.n, self.calls = (v if not self.calls else self.v + v), self.n + n, self.calls + 1
        self.before = self.before or (v, n)

    def apply(self, s: torch.Tensor, d: torch.Tensor | None, gate: torch.Tensor) -> None:
        distributed.local(self.weight).mul_(s)  # a DTensor's shard: every rank applies the same s
        self.scale, self.applied = self.scale * s, self.applied | gate
        if d is not None:
            for b in self.biases:
                distributed.local(b).add_(d)
            self.shift = self.shift + d

    def damped(self, s: torch.Tensor) -> torch.Tensor:
        """s ** (1/k) for a layer run several times per forward whose std grows like scale ** k (k ~ 2
        when it feeds itself): a Newton step in log space, k found by secant after the first step."""
        log_c, log_std = self.scale.log(), _std_mean(_moments(self.v, self.n))[0].log()
        k = torch.full_like(s, (1 + self.calls) / 2) if self.last_log is None else \
            ((log_std - self.last_log[1]) / (log_c - self.last_log[0])).nan_to_num(1.0, self.calls, 1.0)
        self.last_log = (log_c, log_std)
        return s ** (1 / k.clamp(1, self.calls))


class _Pass:
    """The hooks of one forward pass. mode 'all' corrects every layer in flight, 'fix' only those
    outside tol, 'check' measures only. A layer that runs twice is corrected after the pass."""

    def __init__(self, mode: str, opts: dict, k: int = 1, reducer: distributed.Reducer | None = None):
        self.mode, self.opts, self.step, self.k, self.reducer = mode, opts, 0, k, reducer
        self.in_flight = mode == "all" and opts["verify"] == "auto"
        self.completed: list[str] = []
        self.last: tuple[_Slot, torch.Tensor] | None = None

    def correct(self, slot: _Slot, v: torch.Tensor, n: float) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(s, d, gate). In 'fix' mode s = 1, d = 0 where the layer is within tol already.
        In 'all' mode a dead layer's weight may become inf: the pass then raises and restores it."""
        t, tol, center = self.opts["target_std"], self.opts["tol"], self.opts["center"] and slot.can_center
        mom = _moments(v, n)
        s, d, gate = _solve(v, n, mom, t, center)
        if self.mode == "all":
            return s, d, gate
        std, mean = _std_mean(mom)
        off = (std - t).abs() > tol
        gate = gate & ((off | (mean.abs() > tol)) if center else off)
        return torch.where(gate, s, 1.0), None if d is None else torch.where(gate, d, 0.0), gate

    def layer_hook(self, slot: _Slot, name: str) -> Callable:
        def hook(module, args, output):
            y = output[0] if isinstance(output, tuple) else output
            ch = y.dim() - _scaled(module).weight.dim() + 1 if isinstance(module, _CONVS) else y.dim() - 1
            v, n = self.sums(name, module, y, ch, f"`{name}` (call {slot.calls + 1} in pass {self.k})")
            slot.order, self.step = min(slot.order, self.step), self.step + 1
            slot.add(v, n)
            self.completed.append(name)
            self.last = (slot, y)
            if slot.calls > 1 or slot.multi or self.mode == "check":
                return None
            s, d, gate = self.correct(slot, v, n)
            new = _corrected(module, args, y, ch, s, d)
            slot.apply(s, d, gate)
            self.last = (slot, new)
            if self.in_flight:  # measured now: an in-place op after the layer (ReLU) may overwrite it
                slot.after = self.sums(name, module, new, ch, f"`{name}` corrected, in pass {self.k}")[0]
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return hook

    def sums(self, name: str, module: nn.Module, y: torch.Tensor, ch: int, key: str) -> tuple[torch.Tensor, float]:
        """The output's float64 sums and element count, over every rank in a process group (the
        same sums, hence the same scale, on every rank)."""
        v, n = _sums(name, module, y, ch), float(y.numel())
        if self.reducer is None:
            return v, n
        both = self.reducer.keyed_sum(torch.cat([v, v.new_tensor([n])]), key)
        return both[:5], float(both[5])

    def norm_hook(self, name: str) -> Callable:
        def hook(module, args):
            if self.last is not None and args and args[0] is self.last[1]:
                self.last[0].norm = f"`{name}` ({type(module).__name__})"
        return hook


def _corrected(module: nn.Module, args: tuple, y: torch.Tensor, ch: int, s: torch.Tensor,
               d: torch.Tensor | None) -> torch.Tensor:
    """s z + b + d = s y + (1 - s) b + d, with the bias as it was before apply(). Written into y
    when y is a fresh output that nothing else holds (a Linear/conv/attention output, dense and
    not a view of an input): a new tensor per layer costs more in page faults than the arithmetic."""
    bias = distributed.full(_scaled(module).bias)
    shift = None if bias is None else _along((1 - s) * bias if d is None else (1 - s) * bias + d, y, ch)
    own = isinstance(module, _DEFAULT) and y.is_contiguous() and not any(
        isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()
        for a in args)
    out = y.mul_(s) if own else y * s
    return out if shift is None else out.add_(shift)  # mul then add: 5x faster than addcmul's broadcast loop


def _host_rows(slots: list[_Slot]) -> list[list[float]]:
    """Per slot: std, mean, alive, applied, scale, shift, std before, mean before, in one transfer."""
    if not slots:
        return []
    v, v0 = torch.stack([s.v for s in slots]), torch.stack([s.before[0] for s in slots])
    n, n0 = v.new_tensor([s.n for s in slots]), v.new_tensor([s.before[1] for s in slots])
    mom, done = _moments(v, n), torch.stack([torch.stack([s.applied.double(), s.scale, s.shift]) for s in slots])
    cols = [*_std_mean(mom), _alive(v, n, _z_moments(mom)[0]).double(), *done.unbind(1),
            *_std_mean(_moments(v0, n0))]
    return torch.stack(cols, 1).tolist()


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


def _verified(ran: list[_Slot], opts: dict) -> bool:
    """True when pass 1 verified itself: every layer ran once (so what came after it saw its
    corrected output, and nothing changed its weight later) and its corrected output, measured in
    flight, is within tol. The rows then report those measurements; else pass 2 runs as before."""
    if not ran or any(slot.calls != 1 or slot.after is None for slot in ran):
        return False
    measured = [slot.v for slot in ran]
    for slot in ran:
        slot.v = slot.after
    rows = _host_rows(ran)
    if all(_within(slot, row, opts) for slot, row in zip(ran, rows)):
        for slot, row in zip(ran, rows):
            slot.row = row
        return True
    for slot, v in zip(ran, measured):
        slot.v = v
    return False


def _within(slot: _Slot, row: list[float], opts: dict) -> bool:
    std, mean, centred = row[0], row[1], opts["center"] and slot.can_center
    return abs(std - opts["target_std"]) <= opts["tol"] and (not centred or abs(mean) <= opts["tol"])


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
