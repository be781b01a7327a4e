"""LSUV's two working parts: one scaled weight (:class:`_Slot`) and the hooks of one forward
pass (:class:`_Pass`), which measure each layer's output, correct it in flight and, with
``verify="auto"``, measure the corrected output too (see :mod:`initscope.lsuv`).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from initscope import distributed
from initscope._lsuv_solve import _along, _alive, _moments, _scaled, _solve, _std_mean, _sums, _z_moments

__all__: list[str] = []

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_DEFAULT = (nn.Linear, nn.MultiheadAttention, *_CONVS)


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


def _host_rows(slots: list[_Slot], after: bool = False) -> list[list[float]]:
    """Per slot: std, mean, alive, applied, scale, shift, std before, mean before, in one transfer.
    The first three from the pass's sums, or with ``after`` from the corrected outputs' (in flight)."""
    if not slots:
        return []
    v = torch.stack([s.after if after else s.v for s in slots])
    v0 = torch.stack([s.before[0] for s in slots])
    n, n0 = v.new_tensor([s.n for s in slots]), v.new_tensor([s.before[1] for s in slots])
    mom, done = _moments(v, n), torch.stack([torch.stack([s.applied.double(), s.scale, s.shift]) for s in slots])
    cols = [*_std_mean(mom), _alive(v, n, _z_moments(mom)[0]).double(), *done.unbind(1),
            *_std_mean(_moments(v0, n0))]
    return torch.stack(cols, 1).tolist()


def _verified(ran: list[_Slot], opts: dict) -> bool:
    """True when pass 1 verified itself: every layer ran once (so what came after it saw its
    corrected output, and nothing changed its weight later) and its corrected output, measured in
    flight, is within tol. The rows then report those measurements; else pass 2 runs as before."""
    if not ran or any(slot.calls != 1 or slot.after is None for slot in ran):
        return False
    rows = _host_rows(ran, after=True)
    if not all(_within(slot, row, opts) for slot, row in zip(ran, rows)):
        return False
    for slot, row in zip(ran, rows):
        slot.row = row
    return True


def _within(slot: _Slot, row: list[float], opts: dict) -> bool:
    std, mean, centred = row[0], row[1], opts["center"] and slot.can_center
    return abs(std - opts["target_std"]) <= opts["tol"] and (not centred or abs(mean) <= opts["tol"])
