"""Findings about a whole recorded run, in plain words, each with the layer and the step.

Pure rules over a :class:`~initscope.runs.run.Run` (no model, no tensor):

- dead: a layer's activations went dead (``dead_frac`` or ``zero_frac`` at or above
  ``dead``) at some step and stayed dead at every later recorded step;
- growth and collapse: a statistic's largest change between a step and a later one within
  ``window`` recorded steps, reported when it reaches ``factor``: growth of each parameter's
  gradient norm, sqrt(count * (std^2 + mean^2)) (a falling one is what training does), and
  growth or collapse of each layer's forward std;
- fp16/bf16 underflow: from some step on, at least ``underflow`` of a layer's values
  (activations or gradients) are below the format's smallest normal;
- non-finite: the first step and layer where NaN or inf appears.

Each rule reports the step where the problem began, so the earliest finding is where to look.
The same finding for many layers (a whole network underflowing fp16 from step 0, every layer
dying at once) is said once, naming the first layers in execution order and how many more,
instead of once per layer: :data:`GROUP` or more findings of one rule that began at the same
step (in the same phase and format) become one, the first layer's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from initscope.diagnose import Finding
from initscope.runs.run import STAT_COLUMNS, Run

__all__ = ["RunThresholds", "run_findings", "GROUP"]

#: Findings of one rule from the same step (phase, format) said once from this many layers on.
GROUP = 3

_WHAT = {"forward": "activations", "backward": "output gradients", "grad": "gradients", "param": "values"}
_INIT = "use initscope.initialize(model, 'kaiming') (or initscope.lsuv(model, batch))"


@dataclass(frozen=True)
class RunThresholds:
    """When the run rules fire.

    Attributes:
        dead: fraction of units (or values) zero that counts as dead.
        factor: change of a gradient norm or activation std within ``window`` recorded steps.
        window: recorded steps over which a change is measured.
        underflow: fraction of values below the format's smallest normal.
        persist: recorded steps a dead or underflowing state must last (to the end of the run).
    """

    dead: float = 0.9
    factor: float = 10.0
    window: int = 20
    underflow: float = 0.1
    persist: int = 3


def run_findings(run: Run, th: RunThresholds | None = None) -> list[Finding]:
    """Every rule over ``run``, ordered by severity, then by the step where it began, then by
    depth (the first layer in execution order first); alike findings of many layers grouped."""
    th = th or RunThresholds()
    found = _nonfinite(run) + _dead(run, th) + _changes(run, th) + _underflow(run, th)
    order = {"error": 0, "warning": 1, "info": 2}
    depth = {name: i for i, name in enumerate(run.layers("forward"))}

    def where(name: str | None) -> int:  # a parameter sits at its module's depth
        return depth.get(name, depth.get((name or "").rpartition(".")[0], len(depth)))

    found.sort(key=lambda hit: (order[hit[1].severity], hit[0], where(hit[1].layer)))
    return _grouped(found)


def _grouped(found: list[tuple]) -> list[Finding]:
    """``(start, finding, key)`` hits, in order; where :data:`GROUP` or more share a key, the
    first says it for all of them ("..., and likewise for `b`, `c`, `d` and 9 more")."""
    alike: dict[tuple, list[Finding]] = {}
    for _, f, key in found:
        alike.setdefault(key, []).append(f)
    out = []
    for _, f, key in found:
        same = alike[key]
        if len(same) < GROUP:
            out.append(f)
        elif same[0] is f:
            others = ", ".join(f"`{g.layer}`" for g in same[1:4]) + (f" and {len(same) - 4} more" if len(same) > 4 else "")
            out.append(Finding(f.severity, f.layer, f.kind, f"{f.message}, and likewise for {others}", f.suggestion))
    return out


def _first_of_tail(steps: np.ndarray, bad: np.ndarray, persist: int) -> int | None:
    """The first step from which ``bad`` holds at every later recorded step, if that lasts at
    least ``persist`` recorded steps (or the whole run, when it is shorter)."""
    if not len(bad) or not bad[-1]:
        return None
    good = np.flatnonzero(~bad)
    first = good[-1] + 1 if len(good) else 0
    return int(steps[first]) if len(bad) - first >= min(persist, len(bad)) else None


def _nonfinite(run: Run) -> list[tuple[int, Finding, tuple]]:
    bad = np.flatnonzero(run.values[:, STAT_COLUMNS.index("nonfinite")] > 0)
    if not len(bad):
        return []
    i = bad[np.argmin(run.step[bad])]
    step, layer, phase = int(run.step[i]), str(run.layer[i]), str(run.phase[i])
    return [(step, Finding("error", layer, "nonfinite", f"non-finite values first appear at step {step}, in the "
                           f"{_WHAT[phase]} of `{layer}`", "lower the learning rate, clip gradients, or check "
                           "the loss for log(0)"), ("nonfinite",))]


def _dead(run: Run, th: RunThresholds) -> list[tuple[int, Finding, tuple]]:
    out = []
    for layer in run.layers("forward"):
        steps, units = run.series(layer, "forward", "dead_frac")
        _, zeros = run.series(layer, "forward", "zero_frac")
        dead = np.fmax(units, zeros)  # units zero for the whole batch, or values exactly zero
        start = _first_of_tail(steps, np.nan_to_num(dead) >= th.dead, th.persist)
        if start is None:
            continue
        when = f"at step {start} and stayed dead" if start > steps[0] else f"from the first recorded step ({start})"
        out.append((start, Finding("error", layer, "dead_trend", f"layer `{layer}`'s activations went dead {when}: "
                                   f"{dead[-1]:.0%} of its units or values zero at step {steps[-1]}",
                                   "lower the learning rate, or use LeakyReLU/GELU; " + _INIT), ("dead", start)))
    return out


def _largest_change(steps: np.ndarray, v: np.ndarray, window: int) -> tuple[float, int, int]:
    """(ratio, i, j), i < j <= i + window, with the largest |log(v[j] / v[i])|."""
    ok = np.isfinite(v) & (v > 0)
    steps, logv = steps[ok], np.log(v[ok])
    best = (1.0, 0, 0)
    for lag in range(1, min(window, len(logv) - 1) + 1):
        d = logv[lag:] - logv[:-lag]
        k = int(np.argmax(np.abs(d)))
        if abs(d[k]) > abs(np.log(best[0])):
            best = (float(np.exp(d[k])), int(steps[k]), int(steps[k + lag]))
    return best


def _changes(run: Run, th: RunThresholds) -> list[tuple[int, Finding, tuple]]:
    out = []
    for name in run.layers("grad"):
        out += _change(name, "gradient norm of", *run.norm(name, "grad"), th, grow_only=True)
    for layer in run.layers("forward"):
        steps, std = run.series(layer, "forward", "std")
        out += _change(layer, "activation std of layer", steps, std, th)
    return out


def _change(name: str, what: str, steps: np.ndarray, v: np.ndarray, th: RunThresholds, grow_only: bool = False) -> list:
    """A gradient norm that falls is what training does as the loss drops: only growth is reported."""
    ratio, s0, s1 = _largest_change(steps, v, th.window)
    if max(ratio, 1 / ratio) < th.factor or (grow_only and ratio < 1):
        return []
    verb, x = ("grew", ratio) if ratio > 1 else ("fell", 1 / ratio)
    return [(s0, Finding("warning", name, "signal_trend", f"{what} `{name}` {verb} {x:.3g}x in {s1 - s0} steps "
                         f"(step {s0} to step {s1})", "lower the learning rate or clip gradients; " + _INIT),
             (what, verb, s0))]


def _underflow(run: Run, th: RunThresholds) -> list[tuple[int, Finding, tuple]]:
    out = []
    for fmt in ("fp16", "bf16"):
        for phase in ("forward", "backward", "grad"):
            for layer in run.layers(phase):
                steps, frac = run.series(layer, phase, f"{fmt}_underflow")
                start = _first_of_tail(steps, np.nan_to_num(frac) >= th.underflow, th.persist)
                if start is not None:
                    share = float(np.nanmin(frac[steps >= start]))
                    out.append((start, Finding("warning", layer, f"{fmt}_underflow",
                                               f"{fmt} would underflow {share:.0%} or more of `{layer}`'s "
                                               f"{_WHAT[phase]} from step {start}",
                                               "use loss scaling (torch.amp.GradScaler) or bf16; " + _INIT),
                                (fmt, phase, start)))
    return out
