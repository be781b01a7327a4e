"""A coordinate check in mup's sense: is the activation scale stable as the width grows?

For each width n, an MLP (``in_features`` -> ``depth`` hidden ReLU layers of n ->
``out_features``, no biases) is initialized by the chosen scheme and trained by plain SGD on
one fixed batch (N(0, 1) inputs and targets; squared error summed over the outputs and
averaged over the batch) for ``steps`` steps. Per layer it records the coordinate size
mean|f_l| of the pre-activations at init and after the steps (Yang et al. 2021, "Tensor
Programs V", the coordinate check). Flat curves against width mean the scale is
width-stable; a slope of 1/2 on log-log axes means it grows like sqrt(n).

Schemes: ``kaiming`` (N(0, 2/fan_in) everywhere: the standard parametrization, SP),
``xavier`` (N(0, 2/(fan_in+fan_out))), ``default`` (PyTorch's kaiming_uniform_(a=sqrt(5))),
and ``mup`` (muP for SGD, Tensor Programs V table 3: Kaiming fan_in for the input and
hidden layers, output variance 1/fan_in^2, and learning rates lr * n/base_width for the
input layer, lr for the hidden ones and lr * base_width/n for the output layer).

Theory at init: under a fan_in scheme f_l is Gaussian with q_l from
:func:`initscope.theory.propagate`, so mean|f_l| = sqrt(2 q_l / pi), independent of n.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from initscope import init
from initscope.errors import UnknownOptionError, choices_message
from initscope.experiments.base import ProgressLike, Result, check_count, check_nonempty, check_positive, figure, jsonable, progress_steps
from initscope.theory import propagate

__all__ = ["width", "WidthResult", "SCHEMES", "add_arguments"]

SCHEMES = ("kaiming", "xavier", "default", "mup")


def _weights(widths: list[int], scheme: str, gen: torch.Generator) -> list[torch.Tensor]:
    out = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        w = torch.empty(n_out, n_in)
        if scheme == "xavier":
            init.xavier_normal_(w, generator=gen)
        elif scheme == "default":
            init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen, convention="torch")
        elif scheme == "mup" and i == len(widths) - 2:
            w.normal_(0.0, 1.0 / n_in, generator=gen)
        else:
            init.kaiming_normal_(w, nonlinearity="relu", generator=gen)
        out.append(w.requires_grad_(True))
    return out


def _forward(weights: list[torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    fs, h = [], x
    for i, w in enumerate(weights):
        fs.append(h @ w.T)
        h = torch.relu(fs[-1]) if i < len(weights) - 1 else fs[-1]
    return fs


def _sizes(fs: list[torch.Tensor]) -> list[float]:
    return [float(f.detach().abs().to(torch.float64).mean()) for f in fs]


def _train(weights: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, rates: list[float], steps: int) -> None:
    for _ in range(steps):
        loss = 0.5 * (_forward(weights, x)[-1] - y).square().sum(dim=1).mean()
        grads = torch.autograd.grad(loss, weights)
        with torch.no_grad():
            for w, g, lr in zip(weights, grads, rates):
                w -= lr * g


def _run(shape: list[int], scheme: str, seed: int, batch: int, rates: list[float], steps: int,
         advance: Any) -> tuple[list[float], list[float]]:
    """Coordinate sizes per layer at init and after ``steps`` SGD steps, for one net and seed."""
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(batch, shape[0], generator=gen), torch.randn(batch, shape[-1], generator=gen)
    weights = _weights(shape, scheme, gen)
    with torch.no_grad():
        before = _sizes(_forward(weights, x))
    _train(weights, x, y, rates, steps)
    with torch.no_grad():
        after = _sizes(_forward(weights, x))
    advance(f"width: {scheme}, n = {shape[1]}, seed {seed}")
    return before, after


def _rates(widths: list[int], scheme: str, lr: float, base: int) -> list[float]:
    if scheme != "mup":
        return [lr] * (len(widths) - 1)
    n = widths[1]
    return [lr * n / base] + [lr] * (len(widths) - 3) + [lr * base / n]


def _theory(widths: list[int], scheme: str) -> np.ndarray:
    """mean|f_l| = sqrt(2 q_l / pi) at init, per layer, for Gaussian weights (NaN for 'default')."""
    if scheme == "default":
        sw = [1 / 3] * (len(widths) - 1)  # kaiming_uniform_(a=sqrt(5)): variance 1 / (3 fan_in)
    elif scheme == "xavier":
        sw = [2 * a / (a + b) for a, b in zip(widths[:-1], widths[1:])]
    else:
        sw = [2.0] * (len(widths) - 2) + [1 / widths[-2] if scheme == "mup" else 2.0]
    return np.sqrt(2 * propagate(widths, "relu", sw).q / math.pi)


@dataclass(repr=False)
class WidthResult(Result):
    """``at_init``/``trained``: (widths, seeds, layers) coordinate sizes mean|f_l| at init and after
    the steps (the last layer is the output); ``theory``: (widths, layers) at init."""

    settings: dict
    widths: np.ndarray
    at_init: np.ndarray
    trained: np.ndarray
    theory: np.ndarray
    name: str = "width"

    def slopes(self, which: str = "trained") -> np.ndarray:
        """Per layer, the fitted exponent a in size ~ width^a (0: width-stable), over the widths
        where the seed-mean is finite; NaN with fewer than two such widths."""
        with np.errstate(invalid="ignore", over="ignore"):
            data = np.log(getattr(self, which).mean(axis=1))
        x = np.log(self.widths)
        return np.array([np.polyfit(x[ok], col[ok], 1)[0] if (ok := np.isfinite(col)).sum() >= 2 else np.nan
                         for col in data.T])

    def diverged(self, which: str = "trained") -> int | None:
        """The smallest width with a non-finite coordinate size, or None."""
        bad = ~np.isfinite(getattr(self, which)).all(axis=(1, 2))
        return int(self.widths[bad][0]) if bad.any() else None

    def plot(self) -> Any:
        fig, axes = figure(1, 2)
        labels = [f"layer {i + 1}" for i in range(self.at_init.shape[-1] - 1)] + ["output"]
        for ax, which in zip(axes[0], ("at_init", "trained")):
            data = getattr(self, which).mean(axis=1)
            for l, label in enumerate(labels):
                ax.plot(self.widths, data[:, l], marker="o", color=f"C{l}", label=label)
                if which == "at_init":
                    ax.plot(self.widths, self.theory[:, l], color=f"C{l}", ls="--", lw=1)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("width")
            steps = self.settings["steps"]
            ax.set_title(f"{self.settings['scheme']}: mean|f_l| " + ("at init (dashed: theory)" if which == "at_init"
                                                                     else f"after {steps} SGD steps"))
        axes[0, 0].set_ylabel("coordinate size")
        axes[0, 0].legend(fontsize=8)
        return fig

    def to_dict(self) -> dict:
        return jsonable({"name": self.name, "settings": self.settings, "widths": self.widths, "at_init": self.at_init,
                "trained": self.trained, "theory": self.theory, "slopes_init": self.slopes("at_init"),
                "slopes_trained": self.slopes("trained"), "summary": dict(self.summary())})

    def rows(self) -> list[dict]:
        return [{"width": int(n), "seed": seed, "layer": l + 1, "init": self.at_init[i, s, l],
                 "trained": self.trained[i, s, l], "theory_init": self.theory[i, l]}
                for i, n in enumerate(self.widths) for s, seed in enumerate(self.settings["seeds"])
                for l in range(self.at_init.shape[-1])]

    def summary(self) -> list[tuple[str, str]]:
        fmt = lambda a: ", ".join("n/a" if np.isnan(x) else f"{x:+.2f}" for x in a)  # noqa: E731
        trained, diverged = self.slopes("trained"), self.diverged()
        worst = float(np.nanmax(np.abs(trained))) if np.isfinite(trained).any() else math.inf
        verdict = "yes" if worst < 0.1 and diverged is None else f"no (largest |exponent| {worst:.2f})"
        lines = [("width exponent at init (per layer, output last)", fmt(self.slopes("at_init"))),
                 (f"width exponent after {self.settings['steps']} steps", fmt(trained)),
                 ("width-stable after training (|exponent| < 0.1)", verdict)]
        if diverged is not None:
            lines.append(("diverged (non-finite) from width", f"{diverged} on; exponents fit the finite widths"))
        return lines


def width(*, widths: Sequence[int] = (64, 128, 256, 512, 1024, 2048, 4096), scheme: str = "kaiming",
          depth: int = 3, steps: int = 5, lr: float = 0.01, batch: int = 64, in_features: int = 16,
          out_features: int = 10, base_width: int = 64, seeds: Sequence[int] = (0, 1, 2),
          progress: ProgressLike = None) -> WidthResult:
    """Coordinate sizes against width at init and after ``steps`` SGD steps.

    Args:
        widths: hidden widths to compare. scheme: one of :data:`SCHEMES`. depth: hidden layers.
        steps: SGD steps on one fixed batch. lr: learning rate (for ``mup`` the base rate at
            ``base_width``). batch, in_features, out_features: the data and the read-out.
            base_width: where muP's rates equal lr. seeds: data and weights per seed.
        progress: see :func:`initscope.experiments.base.progress_steps`.

    Returns:
        A :class:`WidthResult`.

    Examples:
        >>> r = width(widths=[32, 64], depth=2, steps=1, seeds=[0])
        >>> r.at_init.shape
        (2, 1, 3)
    """
    if scheme not in SCHEMES:
        raise UnknownOptionError(choices_message("scheme", scheme, SCHEMES))
    sizes = [check_count(n, "widths") for n in check_nonempty(widths, "widths")]
    seeds = [int(s) for s in check_nonempty(seeds, "seeds")]
    depth, steps, batch = check_count(depth, "depth"), check_count(steps, "steps", 0), check_count(batch, "batch")
    in_features, base_width = check_count(in_features, "in_features"), check_count(base_width, "base_width")
    out_features = check_count(out_features, "out_features")
    (lr,) = check_positive([lr], "lr")
    at_init, trained = [], []
    with progress_steps(progress, len(sizes) * len(seeds), f"width: {scheme}") as advance:
        for n in sizes:
            shape = [in_features] + [n] * depth + [out_features]
            runs = [_run(shape, scheme, seed, batch, _rates(shape, scheme, lr, base_width), steps, advance)
                    for seed in seeds]
            at_init.append([r[0] for r in runs])
            trained.append([r[1] for r in runs])
    theory = [_theory([in_features] + [n] * depth + [out_features], scheme) for n in sizes]
    settings = {"widths": sizes, "scheme": scheme, "depth": depth, "steps": steps, "lr": lr, "batch": batch,
                "in_features": in_features, "out_features": out_features, "base_width": base_width,
                "seeds": [int(s) for s in seeds]}
    return WidthResult(settings, np.array(sizes), np.array(at_init), np.array(trained), np.array(theory))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The CLI options of ``initscope experiment width``."""
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048, 4096],
                        help="hidden widths (default 64 .. 4096)")
    parser.add_argument("--scheme", choices=SCHEMES, default="kaiming", help="init scheme (default kaiming)")
    parser.add_argument("--depth", type=int, default=3, help="hidden layers (default 3)")
    parser.add_argument("--steps", type=int, default=5, help="SGD steps (default 5)")
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate (default 0.01)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
