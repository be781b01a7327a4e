"""The textbook figure: variances forward and backward through 50 ReLU layers.

Prince, *Understanding Deep Learning*, fig. 7.7 (7.4 in the slides): 50 hidden ReLU layers
of width 100, a 100-dim N(0, 1) input batch, one output, target 0, least squares (summed
over the batch, so each input's gradient is its own), zero biases, weights N(0, s2). Each
layer multiplies the variance by D_h s2 / 2, so after 50 layers the values span 1e-65 to
1e85: float64 holds them, float32 does not (``dtype="float32"`` shows where it breaks).

All nets (variances x seeds) run as one stack: a leading net dimension and ``torch.bmm``,
so one forward and one backward cover them all. "Variance" is the mean square over the
batch and the units, about the theoretical mean 0, accumulated in float64 whatever the
dtype. The backward theory is anchored at the measured last layer (its single read-out
unit gives the top gradient a chi-square spread of about a decade that no per-layer theory
removes); where that value is not finite it is anchored at the mean-field estimate
4 E[phi'^2] s2^2 n_L E[h_L^2].
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from initscope.activations import resolve
from initscope.errors import UnknownOptionError, choices_message
from initscope.experiments.base import ProgressLike, Result, check_count, check_nonempty, check_positive, figure, jsonable, progress_steps
from initscope.moments import ActivationLike
from initscope.theory import Band, finite_width_band, propagate

__all__ = ["udl", "UdlResult", "run_stack", "first_bad", "add_arguments", "DTYPES"]

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def run_stack(x: torch.Tensor, weights: Sequence[torch.Tensor], readout: torch.Tensor,
              act: Callable[[torch.Tensor], torch.Tensor],
              measure: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and backward pass through N stacked MLPs with zero biases.

    Args:
        x: (N, B, n_0) inputs. weights: per layer (N, n_l, n_{l-1}). readout: (N, n_L, 1).
        act: the activation. measure: maps a (N, B, n) tensor to per-net statistics (N, ...).

    Returns:
        (forward, backward): ``measure`` of f_l and of dL/df_l stacked over layers, (L, N, ...),
        for the loss sum(y^2) (least squares, target 0, summed over the batch).
    """
    fs = []
    with torch.enable_grad():
        h = x.detach().requires_grad_(True)  # so every f_l is in the graph; weights need no grad
        for w in weights:
            f = torch.bmm(h, w.transpose(1, 2))
            f.retain_grad()
            fs.append(f)
            h = act(f)
        torch.bmm(h, readout).square().sum().backward()
    return (torch.stack([measure(f.detach()) for f in fs]),
            torch.stack([measure(torch.zeros_like(f) if f.grad is None else f.grad) for f in fs]))


def mean_square(t: torch.Tensor) -> torch.Tensor:
    """Per-net mean square over batch and units, in float64: (N, B, n) -> (N,)."""
    return t.to(torch.float64).square().mean(dim=(1, 2))


def first_bad(values: np.ndarray, reverse: bool = False) -> tuple[int, str]:
    """(layer, kind) of the first layer (1-based; from the top when ``reverse``) whose value is
    not finite ("overflow") or exactly 0 ("underflow"); (0, "") when every layer is fine."""
    order = range(len(values) - 1, -1, -1) if reverse else range(len(values))
    for i in order:
        if not math.isfinite(values[i]):
            return i + 1, "overflow"
        if values[i] == 0:
            return i + 1, "underflow"
    return 0, ""


@dataclass(repr=False)
class UdlResult(Result):
    """Measured and predicted per-layer variances for each weight variance s2.

    Arrays: ``forward``/``backward`` (V, S, L) measured mean squares of f_l and dL/df_l per
    variance and seed; ``theory_forward``/``theory_backward`` (V, L); ``band_forward`` and
    ``band_backward`` one :class:`~initscope.theory.Band` per variance (ReLU only; backward
    bands are ratios to the last layer); ``bad_forward``/``bad_backward`` (V, S) the first
    non-finite or zero layer (0: none) with ``bad_kinds``.
    """

    settings: dict
    forward: np.ndarray
    backward: np.ndarray
    theory_forward: np.ndarray
    theory_backward: np.ndarray
    band_forward: tuple[Band, ...]
    band_backward: tuple[Band, ...]
    bad_forward: np.ndarray
    bad_backward: np.ndarray
    bad_kinds: dict = field(default_factory=dict)
    name: str = "udl"

    @property
    def variances(self) -> list[float]:
        return list(self.settings["variances"])

    def deviation(self, direction: str = "forward") -> np.ndarray:
        """(V, L): seed-mean of log10(measured) minus log10 of the band median (or of the
        mean-field line without a band). The backward one compares shapes: both sides are
        taken relative to their last layer."""
        measured = np.log10(self.forward if direction == "forward" else self.backward)
        bands = self.band_forward if direction == "forward" else self.band_backward
        ref = np.log10(np.stack([b.median for b in bands]) if bands else
                       (self.theory_forward if direction == "forward" else self.theory_backward))
        if direction == "backward":
            measured = measured - measured[..., -1:]
            ref = ref - ref[..., -1:]
        return measured.mean(axis=1) - ref

    def plot(self) -> Any:
        fig, axes = figure(1, 2)
        for ax, direction in zip(axes[0], ("forward", "backward")):
            self._panel(ax, direction)
        axes[0, 0].plot([], [], "k--", lw=1, label="theory (band: 90%, finite width)")
        if self.bad_forward.any() or self.bad_backward.any():
            axes[0, 0].plot([], [], "X", color="grey", mec="k", label="first non-finite or zero layer")
        axes[0, 0].legend(fontsize=7)
        return fig

    def _panel(self, ax: Any, direction: str) -> None:
        measured, theory = getattr(self, direction), getattr(self, f"theory_{direction}")
        bands, bad = getattr(self, f"band_{direction}"), getattr(self, f"bad_{direction}")
        layers = np.arange(1, measured.shape[-1] + 1)
        for v, s2 in enumerate(self.variances):
            color = f"C{v}"
            with np.errstate(divide="ignore", invalid="ignore"):
                ax.plot(layers, np.exp(np.log(measured[v]).mean(axis=0)), color=color, lw=1.8, label=f"s2 = {s2:g}")
            ax.plot(layers, theory[v], color=color, ls="--", lw=1)
            if bands:
                scale = theory[v, -1] if direction == "backward" else 1.0
                ax.fill_between(layers, bands[v].lower * scale, bands[v].upper * scale, color=color, alpha=0.15, lw=0)
            for layer in sorted({int(b) for b in bad[v] if b}):  # where the run broke, on the theory line
                ax.plot([layer], [theory[v, layer - 1]], marker="X", ms=9, color=color, mec="k")
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        name = "(a) forward: Var[f_l]" if direction == "forward" else "(b) backward: Var[dL/df_l]"
        ax.set_title(f"{name}  [{self.settings['dtype']}]")

    def to_dict(self) -> dict:
        bands = {d: [{"lower": b.lower, "median": b.median, "upper": b.upper, "log_std": b.log_std}
                     for b in getattr(self, f"band_{d}")] for d in ("forward", "backward")}
        return jsonable({"name": self.name, "settings": self.settings, "forward": self.forward, "backward": self.backward,
                "theory_forward": self.theory_forward, "theory_backward": self.theory_backward,
                "bands": bands, "bad_forward": self.bad_forward, "bad_backward": self.bad_backward,
                "bad_kinds": self.bad_kinds, "summary": dict(self.summary())})

    def rows(self) -> list[dict]:
        out = []
        for v, s2 in enumerate(self.variances):
            for s, seed in enumerate(self.settings["seeds"]):
                for l in range(self.forward.shape[-1]):
                    for d in ("forward", "backward"):
                        out.append({"s2": s2, "seed": seed, "layer": l + 1, "direction": d,
                                    "measured": getattr(self, d)[v, s, l],
                                    "theory": getattr(self, f"theory_{d}")[v, l]})
        return out

    def summary(self) -> list[tuple[str, str]]:
        width = self.settings["width"]
        lines = [("per-layer factor D_h s2 / 2", ", ".join(f"{width * s2 / 2:g}" for s2 in self.variances)),
                 ("theory Var[f_L]", ", ".join(f"{t:.3g}" for t in self.theory_forward[:, -1]))]
        with np.errstate(divide="ignore", invalid="ignore"):
            lines.append(("measured Var[f_L] (geo. mean)", ", ".join(
                f"{np.exp(np.log(m).mean()):.3g}" for m in self.forward[:, :, -1])))
            for d in ("forward", "backward"):
                worst = [f"{np.abs(row).max():.2f}" if np.isfinite(row).all() else "-" for row in self.deviation(d)]
                lines.append((f"max |log10 dev| {d} (decades)", ", ".join(worst)))
        if self.band_forward:
            lines.append(("90% band width at layer L (decades)", f"{self.band_forward[0].decades[-1]:.2f} forward, "
                          f"{self.band_backward[0].decades[0]:.2f} backward (layer 1 vs L)"))
        for d in ("forward", "backward"):
            bad = getattr(self, f"bad_{d}")
            pick = max if d == "backward" else min  # the backward pass starts at the top
            marks = [f"s2={s2:g}: layer {pick(int(b) for b in bad[v] if b)} {self.bad_kinds[d][v]}"
                     for v, s2 in enumerate(self.variances) if bad[v].any()]
            lines.append((f"first non-finite/zero layer, {d}", "; ".join(marks) or "none"))
        return lines


def _theory(widths: list[int], act: Any, s2: float, measured_top: np.ndarray, relu: bool):
    sw = [s2 * n for n in widths[:-1]]
    p = propagate(widths, act, sw, 0.0, 1.0)
    ok = np.isfinite(measured_top) & (measured_top > 0)
    anchor = (float(np.exp(np.log(measured_top).mean())) if ok.all() else
              4 * p.deriv_second[-1] * s2**2 * widths[-1] * p.second[-1])
    bands = (finite_width_band(widths, sw, 1.0), finite_width_band(widths, sw, direction="backward")) if relu else ()
    return p.q, p.grad / p.grad[-1] * anchor, bands


def udl(*, depth: int = 50, width: int = 100, variances: Sequence[float] = (0.001, 0.01, 0.02, 0.1, 1.0),
        activation: ActivationLike = "relu", batch: int = 100, seeds: Sequence[int] = (0,),
        dtype: str = "float64", in_features: int | None = None, progress: ProgressLike = None) -> UdlResult:
    """Run the textbook's variance experiment and set it beside mean-field theory.

    Args:
        depth: hidden layers. width: units per hidden layer (D_h). variances: weight variances s2.
        activation: any activation :func:`initscope.moments` accepts; bands need ReLU.
        batch: inputs per net. seeds: one stack of nets per seed; each seed draws its own input
            and weights. dtype: "float64" (holds every value) or "float32" (shows where it fails).
        in_features: input size (default ``width``). progress: see :func:`progress_steps`.

    Returns:
        A :class:`UdlResult`.

    Examples:
        >>> r = udl(depth=5, width=16, batch=8)
        >>> [f"{x:g}" for x in r.theory_forward[2, :3]]  # s2 = 0.02: D_h s2 / 2 = 0.16
        ['0.32', '0.0512', '0.008192']
    """
    if dtype not in DTYPES:
        raise UnknownOptionError(choices_message("dtype", dtype, DTYPES, "float64 holds the textbook's range"))
    depth, width, batch = check_count(depth, "depth"), check_count(width, "width"), check_count(batch, "batch")
    n0 = check_count(in_features or width, "in_features")
    variances, seeds = check_positive(variances, "variances"), [int(s) for s in check_nonempty(seeds, "seeds")]
    act, kind = resolve(activation), DTYPES[dtype]
    widths = [n0] + [width] * depth
    fwd, bwd = [], []
    with progress_steps(progress, len(seeds), "udl: forward and backward") as advance:
        for seed in seeds:
            x, weights, readout = _draw(widths, variances, batch, seed)
            f, b = run_stack(x.to(kind), [w.to(kind) for w in weights], readout.to(kind), act.fn, mean_square)
            fwd.append(f.T.numpy())
            bwd.append(b.T.numpy())
            advance(f"udl: seed {seed}")
    forward, backward = np.stack(fwd, axis=1), np.stack(bwd, axis=1)  # (V, S, L)
    theory = [_theory(widths, act, s2, backward[v, :, -1], act.name == "relu" and act.param is None)
              for v, s2 in enumerate(variances)]
    bad = {d: [[first_bad(m[v, s], d == "backward") for s in range(len(seeds))] for v in range(len(variances))]
           for d, m in (("forward", forward), ("backward", backward))}
    settings = {"depth": depth, "width": width, "in_features": n0, "variances": list(variances),
                "activation": act.name, "batch": batch, "seeds": seeds, "dtype": dtype}
    return UdlResult(
        settings, forward, backward, np.stack([t[0] for t in theory]), np.stack([t[1] for t in theory]),
        tuple(t[2][0] for t in theory if t[2]), tuple(t[2][1] for t in theory if t[2]),
        np.array([[b[0] for b in row] for row in bad["forward"]]),
        np.array([[b[0] for b in row] for row in bad["backward"]]),
        {d: [next((b[1] for b in row if b[0]), "") for row in bad[d]] for d in bad})


def _draw(widths: list[int], variances: Sequence[float], batch: int, seed: int):
    """Input (V, B, n_0) shared by the V nets of one seed, and their float64 weights."""
    gen = torch.Generator().manual_seed(seed)
    v = len(variances)
    std = torch.tensor(variances, dtype=torch.float64).sqrt().view(v, 1, 1)
    x = torch.randn(batch, widths[0], generator=gen, dtype=torch.float64).expand(v, batch, widths[0])
    weights = [torch.randn(v, n_out, n_in, generator=gen, dtype=torch.float64) * std
               for n_in, n_out in zip(widths[:-1], widths[1:])]
    return x, weights, torch.randn(v, widths[-1], 1, generator=gen, dtype=torch.float64) * std


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The CLI options of ``initscope experiment udl``."""
    parser.add_argument("--depth", type=int, default=50, help="hidden layers (default 50)")
    parser.add_argument("--width", type=int, default=100, help="units per hidden layer, D_h (default 100)")
    parser.add_argument("--variances", type=float, nargs="+", default=[0.001, 0.01, 0.02, 0.1, 1.0],
                        help="weight variances s2 (default 0.001 0.01 0.02 0.1 1.0)")
    parser.add_argument("--activation", default="relu", help="activation name (default relu; bands need relu)")
    parser.add_argument("--batch", type=int, default=100, help="inputs per net (default 100)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds, one stack of nets each (default 0)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float64",
                        help="float64 (default) holds 1e-65..1e85; float32 shows where it overflows or underflows")
