"""Depth against init: plain ReLU nets of 22 and 30 layers, trained from three inits.

He et al. 2015 ("Delving deep into rectifiers", fig. 3) trained plain (no BatchNorm, no
shortcuts) ReLU nets on ImageNet: at 22 layers both their init and Xavier's converge, at 30
layers Xavier's stalls while theirs converges. Here the nets are
:func:`initscope.zoo.plain_cnn` (``depth - 1`` 3x3 convolutions, channels doubling and
resolution halving at 1/3 and 2/3 of the depth, then pooling and a linear classifier:
``depth`` weight layers) on scikit-learn's digits (1,797 8x8 images, 10 classes; 1,500 to
train, the rest held out), trained by SGD with momentum 0.9 for a fixed number of steps.

Inits, through :func:`initscope.initialize`: ``kaiming`` (std = gain / sqrt(fan_in), gain
from the activation that produced the layer's input), ``xavier`` (std = sqrt(2 / (fan_in +
fan_out))), and ``torch_default`` (PyTorch's own reset_parameters). Mean-field theory says
why: per layer the variance is multiplied by sigma_w2 / 2, which is 1 for Kaiming, about
1/2 for Xavier (less where channels double) and 1/6 for PyTorch's default (whose biases then
set a floor). On 8x8 images one thing theory leaves out matters: zero padding. A 3x3 conv
on the final 2x2 maps sees 4 of its 9 taps, so even Kaiming's signal shrinks, to a mean
square of about 1e-6 at the classifier of the 30-layer net (``signal`` in the result;
Xavier's is about 1e-15).

Speed (CPU): subnormal floats make arithmetic many times slower and appear in the
vanishing nets, so training runs with ``torch.set_flush_denormal(True)``; and these convs
are too small for intra-op threads to pay (2 threads: 0.65 s per 50 steps, 1 thread: 0.81
s) while OpenMP's barriers stall 5-20x whenever another process holds a core, so it runs on
``threads=1`` by default. Both settings are restored afterwards.
"""
from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from initscope import zoo
from initscope.errors import UnknownOptionError, choices_message
from initscope.experiments.base import ProgressLike, Result, check_count, check_nonempty, check_positive, figure, jsonable, progress_steps

__all__ = ["he2015", "He2015Result", "INITS", "digits", "add_arguments"]

INITS = ("xavier", "kaiming", "torch_default")
CHANCE = math.log(10)  # cross-entropy of a uniform guess over 10 classes
_STALL = 0.05  # a run has stalled when its final loss is within this of chance


def digits(seed: int = 0, train: int = 1500) -> tuple[torch.Tensor, ...]:
    """scikit-learn's digits as (x_train, y_train, x_test, y_test), standardised by the
    training pixels' mean and std, split by a permutation from ``seed``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError("the he2015 experiment needs scikit-learn's digits: "
                                  "pip install 'initscope[experiments]'") from exc
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    mean, std = x[:train].mean(), x[:train].std()
    x = (x - mean) / std
    return x[:train], y[:train], x[train:], y[train:]


@contextmanager
def _cpu_settings(threads: int | None) -> Iterator[None]:
    """Flush subnormals to zero and use ``threads`` intra-op threads inside; restore both after
    (torch has no getter for flushing: a subnormal times 1 is 0 exactly when it is on)."""
    flushing, count = float(torch.tensor([1e-39]) * 1.0) == 0.0, torch.get_num_threads()
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_flush_denormal(flushing)
        torch.set_num_threads(count)


def _model(depth: int, channels: int, scheme: str, seed: int, example: torch.Tensor) -> torch.nn.Module:
    from initscope.initialize import initialize
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = zoo.plain_cnn(depth - 1, channels, in_channels=1, num_classes=10)
    initialize(model, scheme, example_input=example, seed=seed)
    return model


def _train(model: torch.nn.Module, data: tuple[torch.Tensor, ...], steps: int, lr: float, batch: int,
           seed: int, advance: Any) -> tuple[np.ndarray, float, float]:
    """SGD with momentum; returns per-step training losses, held-out loss and accuracy."""
    x, y, x_test, y_test = data
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed + 1)
    losses = np.empty(steps)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[step] = loss.item()
        advance()
    with torch.no_grad():
        logits = model(x_test)
    return losses, float(F.cross_entropy(logits, y_test)), float((logits.argmax(1) == y_test).float().mean())


@dataclass(repr=False)
class He2015Result(Result):
    """``losses`` (depths, inits, steps) training loss per step; ``test_loss``, ``test_accuracy``,
    ``seconds`` and ``signal`` (the mean square of the classifier's input at init, for inputs of
    mean square 1), all (depths, inits); axes named by ``settings["depths"]`` and ``["inits"]``."""

    settings: dict
    losses: np.ndarray
    test_loss: np.ndarray
    test_accuracy: np.ndarray
    seconds: np.ndarray
    signal: np.ndarray
    name: str = "he2015"

    @property
    def final(self) -> np.ndarray:
        """(depths, inits): mean training loss over the last tenth of the steps (at least 10)."""
        tail = max(10, self.losses.shape[-1] // 10)
        return self.losses[..., -tail:].mean(axis=-1)

    def stalled(self) -> np.ndarray:
        """(depths, inits): the final loss is within 0.05 of chance, ln 10."""
        return self.final >= CHANCE - _STALL

    def verdict(self) -> str:
        """Whether He et al.'s claim holds at the deepest depth run here."""
        inits, depths = self.settings["inits"], self.settings["depths"]
        if not {"xavier", "kaiming"} <= set(inits):
            return "needs both xavier and kaiming"
        d, x, k = len(depths) - 1, inits.index("xavier"), inits.index("kaiming")
        stalls, learns = self.stalled()[d, x], self.final[d, k] < CHANCE - 0.5
        word = "holds" if stalls and learns else "does not hold"
        return (f"{word} at {depths[d]} layers: xavier final loss {self.final[d, x]:.3f}"
                f" ({'stalled' if stalls else 'learning'}), kaiming {self.final[d, k]:.3f}")

    def plot(self) -> Any:
        depths, inits = self.settings["depths"], self.settings["inits"]
        fig, axes = figure(1, len(depths))
        window = max(1, self.losses.shape[-1] // 40)
        kernel = np.ones(window) / window
        for ax, d, depth in zip(axes[0], range(len(depths)), depths):
            for i, scheme in enumerate(inits):
                ax.plot(self.losses[d, i], color=f"C{i}", alpha=0.2, lw=0.6)
                smooth = np.convolve(self.losses[d, i], kernel, mode="valid")
                ax.plot(np.arange(window - 1, self.losses.shape[-1]), smooth, color=f"C{i}", label=scheme,
                        ls=("-", "--", "-.")[i % 3])  # stalled runs overlap at ln 10: tell them apart
            ax.axhline(CHANCE, color="k", ls=":", lw=1, label="chance (ln 10)")
            ax.set_title(f"{depth}-layer plain ReLU net, digits")
            ax.set_xlabel("SGD step")
            ax.set_ylabel("training loss")
            ax.legend(fontsize=8)
        return fig

    def to_dict(self) -> dict:
        return jsonable({"name": self.name, "settings": self.settings, "losses": self.losses, "final": self.final,
                "test_loss": self.test_loss, "test_accuracy": self.test_accuracy, "seconds": self.seconds,
                "signal_at_init": self.signal,
                "verdict": self.verdict(), "summary": dict(self.summary())})

    def rows(self) -> list[dict]:
        return [{"depth": depth, "init": scheme, "step": s + 1, "loss": self.losses[d, i, s]}
                for d, depth in enumerate(self.settings["depths"]) for i, scheme in enumerate(self.settings["inits"])
                for s in range(self.losses.shape[-1])]

    def summary(self) -> list[tuple[str, str]]:
        lines = []
        for d, depth in enumerate(self.settings["depths"]):
            for i, scheme in enumerate(self.settings["inits"]):
                state = "stalled" if self.stalled()[d, i] else "learning"
                lines.append((f"{depth} layers, {scheme}",
                              f"final loss {self.final[d, i]:.3f} ({state}), held-out accuracy "
                              f"{self.test_accuracy[d, i]:.1%}, signal at init {self.signal[d, i]:.1e}, "
                              f"{self.seconds[d, i]:.1f} s"))
        lines.append(("He et al. 2015: xavier stalls, kaiming converges", self.verdict()))
        return lines


def he2015(*, depths: Sequence[int] = (22, 30), inits: Sequence[str] = INITS, steps: int = 1000,
           lr: float = 0.01, batch: int = 64, channels: int = 16, seed: int = 0, threads: int | None = 1,
           progress: ProgressLike = None) -> He2015Result:
    """Train plain ReLU nets of each depth from each init on digits for ``steps`` SGD steps.

    Args:
        depths: weight layers per net (He et al.: 22 and 30). inits: names from :data:`INITS`.
        steps: SGD steps of ``batch`` images. lr: learning rate (momentum 0.9).
        channels: width of the first convolutions. seed: data split, model, init and batches.
        threads: torch intra-op threads while training (restored after); None keeps the current.
        progress: see :func:`initscope.experiments.base.progress_steps` (one step per SGD step).

    Returns:
        A :class:`He2015Result`.
    """
    for scheme in inits:
        if scheme not in INITS:
            raise UnknownOptionError(choices_message("init", scheme, INITS))
    depths = [check_count(d, "depths", 2) for d in check_nonempty(depths, "depths")]
    steps, batch, channels = check_count(steps, "steps"), check_count(batch, "batch"), check_count(channels, "channels")
    (lr,) = check_positive([lr], "lr")
    threads = None if threads is None else check_count(threads, "threads")
    data = digits(seed)
    shape = (len(depths), len(inits))
    losses, test_loss, test_acc = np.empty((*shape, steps)), np.empty(shape), np.empty(shape)
    seconds, signal = np.empty(shape), np.empty(shape)
    with _cpu_settings(threads), progress_steps(progress, len(depths) * len(inits) * steps, "he2015") as advance:
        for d, depth in enumerate(depths):
            for i, scheme in enumerate(inits):
                start = time.perf_counter()
                model = _model(depth, channels, scheme, seed, data[0][:batch])
                with torch.no_grad():  # what reaches the classifier: Kaiming keeps it, the others shrink it
                    signal[d, i] = float(model[:-1](data[0][:256]).double().square().mean())
                losses[d, i], test_loss[d, i], test_acc[d, i] = _train(
                    model, data, steps, lr, batch, seed, lambda: advance(f"he2015: {depth} layers, {scheme}"))
                seconds[d, i] = time.perf_counter() - start
    settings = {"depths": depths, "inits": list(inits), "steps": steps, "lr": lr, "momentum": 0.9, "batch": batch,
                "channels": channels, "seed": seed, "data": "sklearn digits, 1500 train / 297 held out"}
    return He2015Result(settings, losses, test_loss, test_acc, seconds, signal)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The CLI options of ``initscope experiment he2015``."""
    parser.add_argument("--depths", type=int, nargs="+", default=[22, 30], help="weight layers (default 22 30)")
    parser.add_argument("--inits", nargs="+", choices=INITS, default=list(INITS), help="inits (default: all three)")
    parser.add_argument("--steps", type=int, default=1000, help="SGD steps per run (default 1000)")
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate, momentum 0.9 (default 0.01)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--channels", type=int, default=16, help="channels of the first convolutions (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while training (default 1)")
