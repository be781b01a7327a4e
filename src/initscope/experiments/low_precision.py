"""The fp16 question: which init scales keep a deep net's values inside fp16 and bf16?

A ReLU MLP (the textbook's: ``depth`` layers of ``width``, one output, no biases) is
initialized with std = scale * sqrt(2 / fan_in), ``scale`` = 1 being Kaiming, for every
scale of a sweep; all scales share the same standard-normal draws. The net runs in float64,
so its values are exact, and :func:`initscope.probe` counts per layer, for the
pre-activations f_l and the gradients dL/df_l of the loss sum(y^2) over the batch, the
values each format could not hold: *underflow* (non-zero, below the smallest normal:
precision lost), *flush* (below the smallest subnormal: the value becomes 0) and
*overflow* (at or above the format's first power-of-two edge past its max: inf). These are
what a mixed-precision run would lose at its first cast, without loss scaling.

A scale is *safe* for a format when nothing overflows and at most ``tolerance`` of the
values flush to zero in any layer, forward and backward. Mean-field theory predicts the
forward side: f_l ~ N(0, q_l) with q_l = 2 scale^(2l) q_0 (:func:`initscope.theory.propagate`),
so the safe range narrows around 1 as the net deepens.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from initscope import zoo
from initscope._validate import real
from initscope.experiments.base import ProgressLike, Result, check_count, check_positive, figure, jsonable, progress_steps
from initscope.probe import probe
from initscope.theory import propagate

__all__ = ["low_precision", "LowPrecisionResult", "FORMATS_16", "KINDS", "SCALES", "theory_fractions",
           "thresholds", "add_arguments"]

FORMATS_16 = {"fp16": torch.float16, "bf16": torch.bfloat16}
KINDS = ("underflow", "flush", "overflow")
_DIRECTIONS = ("forward", "backward")
#: 49 scales from 0.5 to 2, 2^(1/24) apart: fine enough to resolve fp16's narrow safe range at depth 50.
SCALES = tuple(float(s) for s in np.round(np.geomspace(0.5, 2.0, 49), 4))


def thresholds(kind: torch.dtype) -> tuple[float, float, float]:
    """The probe's edges for a format: smallest normal, smallest subnormal, first power of 2 past max."""
    info = torch.finfo(kind)
    return info.tiny, info.tiny * info.eps, 2.0 ** (int(np.floor(np.log2(info.max))) + 1)


def theory_fractions(q: np.ndarray) -> np.ndarray:
    """(formats, kinds, ...) fractions of f ~ N(0, q) below/below/above the :func:`thresholds`."""
    sd = torch.from_numpy(np.sqrt(2 * np.asarray(q, dtype=np.float64)))
    out = []
    for kind in FORMATS_16.values():
        normal, subnormal, top = thresholds(kind)
        out.append(torch.stack([torch.special.erf(normal / sd), torch.special.erf(subnormal / sd),
                                torch.special.erfc(top / sd)]))
    return torch.stack(out).numpy()


def _sum_of_squares(output: torch.Tensor) -> torch.Tensor:
    return output.square().sum()


def _measure(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """(directions, formats, kinds, L) from one probe of the hidden Linear layers."""
    trace = probe(model, x, loss_fn=_sum_of_squares, modules=torch.nn.Linear)
    hidden = [r for r in trace.layers if r.type == "Linear"][:-1]  # the last one is the read-out
    out = np.empty((len(_DIRECTIONS), len(FORMATS_16), len(KINDS), len(hidden)))
    for d, direction in enumerate(_DIRECTIONS):
        for l, record in enumerate(hidden):
            stats = getattr(record, direction)
            for f, fmt in enumerate(FORMATS_16):
                out[d, f, :, l] = stats.underflow_frac[fmt], stats.flush_frac[fmt], stats.overflow_frac[fmt]
    return out


def _longest_run(scales: np.ndarray, ok: np.ndarray) -> tuple[float, float] | None:
    best, start = None, None
    for i, good in enumerate([*ok, False]):
        if good and start is None:
            start = i
        elif not good and start is not None:
            if best is None or i - start > best[1] - best[0] + 1:
                best = (start, i - 1)
            start = None
    return None if best is None else (float(scales[best[0]]), float(scales[best[1]]))


def _span(run: tuple[float, float] | None) -> str:
    return f"{run[0]:.3g} .. {run[1]:.3g} x Kaiming std" if run else "none in the sweep"


@dataclass(repr=False)
class LowPrecisionResult(Result):
    """``fractions``: (directions, formats, kinds, scales, L) lost fractions, axes named by
    ``settings["directions"]``, ``["formats"]``, ``["kinds"]`` and ``scales``; ``theory``:
    (formats, kinds, scales, L) the forward fractions mean-field theory predicts for Gaussian
    f_l ~ N(0, q_l); ``safe``: per scale, whether fp16 keeps it (see the module doc)."""

    settings: dict
    scales: np.ndarray
    fractions: np.ndarray
    theory: np.ndarray
    name: str = "low_precision"

    def lost(self, fmt: str = "fp16", direction: str = "forward") -> np.ndarray:
        """(scales, L): the fraction flushed to zero plus the fraction overflowed."""
        d, f = _DIRECTIONS.index(direction), list(FORMATS_16).index(fmt)
        return self.fractions[d, f, 1] + self.fractions[d, f, 2]

    def safe_for(self, fmt: str = "fp16", directions: Sequence[str] = _DIRECTIONS) -> np.ndarray:
        """Per scale: no overflow and at most ``tolerance`` flushed to 0 in every layer, for ``fmt``."""
        f = list(FORMATS_16).index(fmt)
        d = [_DIRECTIONS.index(x) for x in directions]
        frac = self.fractions[d, f]  # (dirs, kinds, scales, L)
        return (frac[:, 2].max(axis=(0, 2)) == 0) & (frac[:, 1].max(axis=(0, 2)) <= self.settings["tolerance"])

    @property
    def safe(self) -> np.ndarray:
        """Per scale: whether fp16 keeps it, forward and backward."""
        return self.safe_for("fp16")

    @property
    def safe_range(self) -> tuple[float, float] | None:
        """(lowest, highest) scale of the longest run of fp16-safe scales, or None."""
        return _longest_run(self.scales, self.safe)

    def plot(self) -> Any:
        from matplotlib.colors import LogNorm
        fig, axes = figure(2, 2, size=(6.0, 3.6))
        floor = 1e-6
        for i, fmt in enumerate(FORMATS_16):
            for j, direction in enumerate(_DIRECTIONS):
                ax = axes[i, j]
                data = np.maximum(self.lost(fmt, direction), floor)
                mesh = ax.pcolormesh(np.arange(1, data.shape[1] + 1), self.scales, data, shading="nearest",
                                     norm=LogNorm(floor, 1.0), cmap="magma_r")
                ax.set_yscale("log")
                ax.set_title(f"{fmt} {direction}: fraction lost (flushed to 0 or inf)", fontsize=9)
                ax.set_xlabel("layer")
                ax.set_ylabel("scale x Kaiming std")
                if self.safe_range and fmt == "fp16":
                    for y in self.safe_range:
                        ax.axhline(y, color="C2", ls="--", lw=1.5)
        fig.colorbar(mesh, ax=axes, shrink=0.6, label="fraction of values")
        return fig

    def to_dict(self) -> dict:
        return jsonable({"name": self.name, "settings": self.settings, "scales": self.scales,
                "fractions": self.fractions, "theory_forward": self.theory, "safe": self.safe,
                "safe_range": self.safe_range,                "summary": dict(self.summary())})

    def rows(self) -> list[dict]:
        out = []
        for d, direction in enumerate(_DIRECTIONS):
            for f, fmt in enumerate(FORMATS_16):
                for s, scale in enumerate(self.scales):
                    for l in range(self.fractions.shape[-1]):
                        theory = self.theory[f, :, s, l] if direction == "forward" else [np.nan] * len(KINDS)
                        row = {"direction": direction, "format": fmt, "scale": scale, "layer": l + 1}
                        row.update({k: self.fractions[d, f, i, s, l] for i, k in enumerate(KINDS)})
                        row.update({f"theory_{k}": theory[i] for i, k in enumerate(KINDS)})
                        out.append(row)
        return out

    def summary(self) -> list[tuple[str, str]]:
        tol = self.settings["tolerance"]
        predicted = (self.theory[0, 2].max(axis=1) * self.settings["batch"] * self.settings["width"] < 0.5) & (
            self.theory[0, 1].max(axis=1) <= tol)
        lines = [("fp16-safe scale range", _span(self.safe_range)),
                 ("  forward only, measured", _span(_longest_run(self.scales, self.safe_for("fp16", ["forward"])))),
                 ("  forward only, theory", _span(_longest_run(self.scales, predicted))),
                 ("bf16-safe scale range", _span(_longest_run(self.scales, self.safe_for("bf16")))),
                 ("criterion", f"no overflow, at most {tol:g} flushed to 0 in every layer, forward and backward")]
        n = len(self.scales)
        picks = sorted({0, n // 4, n // 2, 3 * n // 4, n - 1})
        worst = [f"{self.scales[i]:.3g}: {max(self.lost('fp16', d)[i].max() for d in _DIRECTIONS):.2g}" for i in picks]
        lines.append(("fp16 worst-layer lost fraction", ", ".join(worst)))
        return lines


def low_precision(*, depth: int = 50, width: int = 100, batch: int = 64,
                  scales: Sequence[float] = SCALES,
                  tolerance: float = 1e-3, seed: int = 0, progress: ProgressLike = None) -> LowPrecisionResult:
    """Sweep the init scale of a deep ReLU MLP; count per layer what fp16 and bf16 could not hold.

    Args:
        depth, width: hidden layers and their width. batch: N(0, 1) inputs.
        scales: multipliers of the Kaiming std sqrt(2 / fan_in). tolerance: the largest
            fraction flushed to zero per layer still called safe. seed: input and weights.
        progress: see :func:`initscope.experiments.base.progress_steps`.

    Returns:
        A :class:`LowPrecisionResult`.

    Examples:
        >>> r = low_precision(depth=20, width=32, batch=16, scales=[0.25, 1.0, 4.0])
        >>> r.safe.tolist()
        [False, True, False]
    """
    depth, width, batch = check_count(depth, "depth"), check_count(width, "width"), check_count(batch, "batch")
    scales = np.array(check_positive(scales, "scales"))
    tolerance = real(tolerance, "tolerance", low=0.0, high=1.0, fix="it is a fraction of values flushed to 0")
    gen = torch.Generator().manual_seed(seed)
    widths = [width] * (depth + 1)
    x = torch.randn(batch, width, generator=gen, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):  # the default init draws from the global RNG: keep it as found
        model = zoo.mlp(depth, width, "relu", bias=False).double()
    draws = [torch.randn(m.weight.shape, generator=gen, dtype=torch.float64) * (2 / m.weight.shape[1]) ** 0.5
             for m in model if isinstance(m, torch.nn.Linear)]
    parts = []
    with progress_steps(progress, len(scales), "low_precision: scale sweep") as advance:
        for scale in scales:
            with torch.no_grad():
                for m, z in zip((m for m in model if isinstance(m, torch.nn.Linear)), draws):
                    m.weight.copy_(z * scale)
            parts.append(_measure(model, x))
            advance(f"low_precision: scale {scale:g}")
    fractions = np.stack(parts, axis=3)  # (dir, fmt, kind, scale, L)
    theory = theory_fractions(np.stack([propagate(widths, "relu", 2 * s * s).q for s in scales]))
    settings = {"depth": depth, "width": width, "batch": batch, "tolerance": tolerance, "seed": seed,
                "directions": list(_DIRECTIONS), "formats": list(FORMATS_16), "kinds": list(KINDS),
                "init": "N(0, (scale * sqrt(2 / fan_in))^2), zero biases; values computed in float64"}
    return LowPrecisionResult(settings, scales, fractions, theory)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The CLI options of ``initscope experiment low_precision``."""
    parser.add_argument("--depth", type=int, default=50, help="hidden layers (default 50)")
    parser.add_argument("--width", type=int, default=100, help="units per layer (default 100)")
    parser.add_argument("--batch", type=int, default=64, help="inputs (default 64)")
    parser.add_argument("--scales", type=float, nargs="+", default=list(SCALES),
                        help="multipliers of the Kaiming std (default 49 from 0.5 to 2)")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="fraction flushed to 0 still safe (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
