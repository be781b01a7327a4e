"""The fastai lesson's question: does the mean of the activations matter as well as their std?

An MLP of ``depth`` layers, Kaiming-initialized (std = sqrt(2 / ((1 + a^2) fan_in)), zero
biases), fed an N(0, 1) batch, with four variants of its activation:

- ``relu``: plain ReLU; its outputs have mean sqrt(q / 2 pi), about 0.4 std, never 0.
- ``relu-0.5``: ReLU - 0.5, the lesson's first fix.
- ``general_relu``: leaky_relu(x, 0.1) - 0.4 (fastai's GeneralRelu).
- ``lsuv``: GeneralRelu again, then LSUV with centring (:func:`initscope.lsuv.lsuv`), which
  sets every Linear output (pre-activation) to mean 0, std 1 on this batch.

Per layer it measures (with :func:`initscope.probe`) the mean and std of the activation
outputs over batch and units and sets beside them the theory: q_l from :func:`initscope.theory.propagate` (for LSUV,
q_l = 1) and then mean = E[phi(sqrt(q_l) z)], std = sqrt(Var[phi(sqrt(q_l) z)]) from
:func:`initscope.moments`.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from initscope import init
from initscope.errors import UnknownOptionError, choices_message
from initscope.experiments.base import ProgressLike, Result, check_count, figure, jsonable, progress_steps
from initscope.moments import moments
from initscope.probe import probe
from initscope.theory import propagate

__all__ = ["mean_shift", "MeanShiftResult", "Shifted", "VARIANTS", "add_arguments"]


class Shifted(nn.Module):
    """leaky_relu(x, leak) - sub: ReLU at (0, 0), fastai's GeneralRelu at (0.1, 0.4)."""

    def __init__(self, leak: float = 0.0, sub: float = 0.0):
        super().__init__()
        self.leak, self.sub = float(leak), float(sub)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.leak) - self.sub

    def extra_repr(self) -> str:
        return f"leak={self.leak:g}, sub={self.sub:g}"


#: name -> (leak, sub, LSUV with centring?)
VARIANTS: dict[str, tuple[float, float, bool]] = {
    "relu": (0.0, 0.0, False),
    "relu-0.5": (0.0, 0.5, False),
    "general_relu": (0.1, 0.4, False),
    "lsuv": (0.1, 0.4, True),
}


@dataclass(repr=False)
class MeanShiftResult(Result):
    """Per variant (rows, in ``settings["variants"]`` order) and layer: measured and theoretical
    mean and std of the activation outputs, arrays (variants, L)."""

    settings: dict
    mean: np.ndarray
    std: np.ndarray
    theory_mean: np.ndarray
    theory_std: np.ndarray
    name: str = "mean_shift"

    def plot(self) -> Any:
        fig, axes = figure(1, 2)
        layers = np.arange(1, self.mean.shape[1] + 1)
        for i, variant in enumerate(self.settings["variants"]):
            panels = ((axes[0, 0], self.mean, self.theory_mean), (axes[0, 1], self.std, self.theory_std))
            for ax, measured, theory in panels:
                ax.plot(layers, measured[i], color=f"C{i}", marker="o", ms=3, label=variant)
                ax.plot(layers, theory[i], color=f"C{i}", ls="--", lw=1)
        axes[0, 0].axhline(0.0, color="k", lw=0.5)
        axes[0, 1].axhline(1.0, color="k", lw=0.5)
        axes[0, 0].set_title("mean of activation outputs (dashed: theory)")
        axes[0, 1].set_title("std of activation outputs (dashed: theory)")
        for ax in axes[0]:
            ax.set_xlabel("layer")
        axes[0, 0].legend(fontsize=8)
        return fig

    def to_dict(self) -> dict:
        return jsonable({"name": self.name, "settings": self.settings, "mean": self.mean, "std": self.std,
                "theory_mean": self.theory_mean, "theory_std": self.theory_std, "summary": dict(self.summary())})

    def rows(self) -> list[dict]:
        return [{"variant": v, "layer": l + 1, "mean": self.mean[i, l], "theory_mean": self.theory_mean[i, l],
                 "std": self.std[i, l], "theory_std": self.theory_std[i, l]}
                for i, v in enumerate(self.settings["variants"]) for l in range(self.mean.shape[1])]

    def summary(self) -> list[tuple[str, str]]:
        depth = self.mean.shape[1]
        picks = sorted({0, depth // 2, depth - 1})
        lines = [("columns", "mean measured / theory at layers " + ", ".join(str(p + 1) for p in picks)
                  + "; std at the last layer")]
        for i, variant in enumerate(self.settings["variants"]):
            means = ", ".join(f"{self.mean[i, p]:+.3f} / {self.theory_mean[i, p]:+.3f}" for p in picks)
            lines.append((variant, f"{means}; std {self.std[i, -1]:.3f} / {self.theory_std[i, -1]:.3f}"))
        return lines


def _model(depth: int, width: int, leak: float, sub: float, gen: torch.Generator) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        with torch.random.fork_rng(devices=[]):  # nn.Linear's default init draws from the global RNG
            linear = nn.Linear(width, width)
        init.kaiming_normal_(linear.weight, a=leak, nonlinearity="leaky_relu", generator=gen, convention="torch")
        nn.init.zeros_(linear.bias)
        layers += [linear, Shifted(leak, sub)]
    return nn.Sequential(*layers)


def _measure(model: nn.Sequential, x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Mean and (population) std of every activation's output, from one forward probe."""
    trace = probe(model, x, backward=False, modules=Shifted)
    return [r.forward.mean for r in trace.layers], [r.forward.std for r in trace.layers]


def _theory(model: nn.Sequential, depth: int, width: int, centred: bool) -> tuple[np.ndarray, np.ndarray]:
    act = model[1]
    if centred:
        q = np.ones(depth)
    else:
        q = propagate([width] * (depth + 1), act, 2 / (1 + act.leak**2)).q
    m = [moments(act, float(v)) for v in q]
    return np.array([x.mean for x in m]), np.sqrt([x.variance for x in m])


def mean_shift(*, depth: int = 20, width: int = 256, batch: int = 256,
               variants: Sequence[str] = tuple(VARIANTS), seed: int = 0,
               progress: ProgressLike = None) -> MeanShiftResult:
    """Measure mean and std of activation outputs per layer, beside theory, for each variant.

    Args:
        depth: Linear + activation pairs. width: units per layer (and input size).
        batch: N(0, 1) inputs. variants: names from :data:`VARIANTS`. seed: input and weights.
        progress: see :func:`initscope.experiments.base.progress_steps`.

    Returns:
        A :class:`MeanShiftResult`.

    Examples:
        >>> r = mean_shift(depth=3, width=64, batch=64, variants=["relu"])
        >>> round(float(r.theory_mean[0, 0]), 4)  # sqrt(q_1 / 2 pi), q_1 = 2
        0.5642
    """
    depth, width, batch = check_count(depth, "depth"), check_count(width, "width"), check_count(batch, "batch")
    for v in variants:
        if v not in VARIANTS:
            raise UnknownOptionError(choices_message("variant", v, VARIANTS))
    x = torch.randn(batch, width, generator=torch.Generator().manual_seed(seed))
    rows = []
    with progress_steps(progress, len(variants), "mean_shift") as advance:
        for v in variants:
            leak, sub, centred = VARIANTS[v]
            model = _model(depth, width, leak, sub, torch.Generator().manual_seed(seed + 1))
            if centred:
                from initscope.lsuv import lsuv
                lsuv(model, x, center=True, generator=torch.Generator().manual_seed(seed + 1))
            rows.append((*_measure(model, x), *_theory(model, depth, width, centred)))
            advance(f"mean_shift: {v}")
    arrays = [np.array([r[k] for r in rows], dtype=np.float64) for k in range(4)]
    settings = {"depth": depth, "width": width, "batch": batch, "variants": list(variants), "seed": seed,
                "init": "kaiming_normal_ (fan_in, leaky_relu gain with a = leak), zero biases"}
    return MeanShiftResult(settings, *arrays)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The CLI options of ``initscope experiment mean_shift``."""
    parser.add_argument("--depth", type=int, default=20, help="layers (default 20)")
    parser.add_argument("--width", type=int, default=256, help="units per layer (default 256)")
    parser.add_argument("--batch", type=int, default=256, help="inputs (default 256)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="activation variants (default: all four)")
    parser.add_argument("--seed", type=int, default=0, help="seed for input and weights (default 0)")

