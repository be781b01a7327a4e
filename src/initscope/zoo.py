"""Reference models for the demo, the tests and the benchmarks.

All are small enough for CPU tests at their defaults. Each factory builds the
model with PyTorch's default initialization; initscope's own init is applied
separately. :func:`build` returns a model together with an example input.

Examples:
    >>> model, x = build("mlp", depth=3, width=8)
    >>> tuple(model(x).shape)
    (4, 1)
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from initscope.activations import activation_module
from initscope.errors import ArgumentError, UnknownOptionError, choices_message

__all__ = ["mlp", "plain_cnn", "resnet", "transformer", "lstm", "efficientnet", "build", "MODELS"]


def _act(activation: str | Callable[[], nn.Module]) -> nn.Module:
    return activation_module(activation) if isinstance(activation, str) else activation()


def _positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ArgumentError(f"{name} must be a whole number >= 1; got {value!r}")


def mlp(depth: int = 50, width: int = 100, activation: str | Callable[[], nn.Module] = "relu",
        in_features: int | None = None, out_features: int = 1, bias: bool = True) -> nn.Sequential:
    """The textbook's net: ``depth`` hidden layers of ``width`` units, each followed by the
    activation, then a linear read-out (Prince, *Understanding Deep Learning*, fig. 7.4/7.7)."""
    _positive(depth=depth, width=width, out_features=out_features)
    layers: list[nn.Module] = []
    fan = in_features or width
    for _ in range(depth):
        layers += [nn.Linear(fan, width, bias=bias), _act(activation)]
        fan = width
    layers.append(nn.Linear(width, out_features, bias=bias))
    return nn.Sequential(*layers)


def plain_cnn(depth: int = 20, channels: int = 32, in_channels: int = 3, num_classes: int = 10,
              activation: str | Callable[[], nn.Module] = "relu") -> nn.Sequential:
    """A VGG-style plain net of ``depth`` 3x3 convolutions (He et al. 2015's 22/30-layer nets,
    scaled down): the channels double and the resolution halves at 1/3 and 2/3 of the depth."""
    _positive(depth=depth, channels=channels, in_channels=in_channels, num_classes=num_classes)
    layers: list[nn.Module] = []
    c_in, c = in_channels, channels
    for i in range(depth):
        stride = 2 if i in (depth // 3, 2 * depth // 3) and i > 0 else 1
        c_out = c * 2 if stride == 2 else c
        layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), _act(activation)]
        c_in = c = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU (He et al. 2016)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


def resnet(depth: int = 4, channels: int = 16, in_channels: int = 3, num_classes: int = 10) -> nn.Sequential:
    """A small ResNet: a conv-BN-ReLU stem, ``depth`` basic blocks, pooling and a classifier."""
    _positive(depth=depth, channels=channels, in_channels=in_channels, num_classes=num_classes)
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
        *[BasicBlock(channels) for _ in range(depth)],
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


class TransformerBlock(nn.Module):
    """Pre-LN block: x + attn(ln1(x)), then x + mlp(ln2(x)) with a 4x GELU MLP."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class Transformer(nn.Module):
    """A stack of pre-LN blocks over (batch, seq, d_model) inputs, a final LayerNorm and a head."""

    def __init__(self, depth: int, d_model: int, heads: int, out_features: int):
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(d_model, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def transformer(depth: int = 4, d_model: int = 64, heads: int = 4, out_features: int = 1) -> Transformer:
    """A pre-LN transformer encoder with GELU, LayerNorm and ``nn.MultiheadAttention``."""
    _positive(depth=depth, d_model=d_model, heads=heads, out_features=out_features)
    if d_model % heads:
        raise ArgumentError(f"d_model ({d_model}) must be divisible by heads ({heads})")
    return Transformer(depth, d_model, heads, out_features)


class LSTMRegressor(nn.Module):
    """An LSTM over (batch, seq, input_size) whose last hidden state feeds a linear head."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, out_features: int):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def lstm(input_size: int = 16, hidden_size: int = 32, num_layers: int = 2, out_features: int = 1) -> LSTMRegressor:
    """A stacked LSTM with a linear head on the last time step."""
    _positive(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
    return LSTMRegressor(input_size, hidden_size, num_layers, out_features)


class SqueezeExcite(nn.Module):
    """x * gate(expand(silu(reduce(mean over space of x)))), the gate sigmoid or hardsigmoid."""

    def __init__(self, channels: int, reduced: int, gate: str):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, reduced, 1), nn.Conv2d(reduced, channels, 1)
        self.gate = torch.sigmoid if gate == "sigmoid" else F.hardsigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.expand(F.silu(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * self.gate(s)


class MBConv(nn.Module):
    """Inverted bottleneck (Tan & Le 2019): 1x1 expand-BN-SiLU, depthwise 3x3-BN-SiLU, squeeze-
    excitation, 1x1 project-BN, plus the input where the shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int, gate: str):
        super().__init__()
        hidden = c_in * expand
        self.expand = nn.Conv2d(c_in, hidden, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.se = SqueezeExcite(hidden, max(1, c_in // 4), gate)
        self.project = nn.Conv2d(hidden, c_out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.bn1(self.depthwise(F.silu(self.bn0(self.expand(x))))))
        h = self.bn2(self.project(self.se(h)))
        return x + h if self.residual else h


def efficientnet(depth: int = 12, width: int = 16, in_channels: int = 3, num_classes: int = 10, expand: int = 4,
                 gate: str = "sigmoid") -> nn.Sequential:
    """An EfficientNet-like stack: a conv-BN-SiLU stem, ``depth`` MBConv blocks with
    squeeze-excitation gates in stages of two (the first of a stage widens by ``width // 2``
    channels, every other stage halves the resolution; the second is residual), a 1x1 head,
    pooling and a classifier. ``gate``: sigmoid or hardsigmoid."""
    _positive(depth=depth, width=width, in_channels=in_channels, num_classes=num_classes, expand=expand)
    if gate not in ("sigmoid", "hardsigmoid"):
        raise UnknownOptionError(choices_message("gate", gate, ("sigmoid", "hardsigmoid")))
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.SiLU()]
    c = width
    for i in range(depth):
        first = i % 2 == 0
        c_out = c + width // 2 if first else c
        layers.append(MBConv(c, c_out, 2 if first and i % 4 == 2 else 1, expand, gate))
        c = c_out
    head = 4 * c
    layers += [nn.Conv2d(c, head, 1, bias=False), nn.BatchNorm2d(head), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
               nn.Flatten(), nn.Linear(head, num_classes)]
    return nn.Sequential(*layers)


def _mlp_input(kw: dict, batch: int, size: int | None) -> torch.Size:
    return torch.Size([batch, kw.get("in_features") or kw.get("width", 100)])


def _image(kw: dict, batch: int, size: int | None) -> torch.Size:
    return torch.Size([batch, kw.get("in_channels", 3), size or 32, size or 32])


MODELS: dict[str, tuple[Callable[..., nn.Module], Callable[[dict, int, int | None], torch.Size]]] = {
    "mlp": (mlp, _mlp_input),
    "plain_cnn": (plain_cnn, _image),
    "resnet": (resnet, _image),
    "transformer": (transformer, lambda kw, b, size: torch.Size([b, size or 16, kw.get("d_model", 64)])),
    "lstm": (lstm, lambda kw, b, size: torch.Size([b, size or 12, kw.get("input_size", 16)])),
    "efficientnet": (efficientnet, _image),
}


def build(name: str, *, batch: int = 4, seed: int = 0, size: int | None = None,
          **kwargs) -> tuple[nn.Module, torch.Tensor]:
    """A zoo model and an N(0, 1) example input for it, both from ``seed`` (independent streams).

    Args:
        name: mlp, plain_cnn, resnet, transformer, lstm or efficientnet.
        batch: the input's batch size.
        seed: seeds the model's default init and the input.
        size: image side (32) for the CNNs (plain_cnn, resnet, efficientnet), sequence length (16, 12) for the transformer
            and the LSTM; the mlp ignores it.
        **kwargs: the factory's arguments.

    Raises:
        UnknownOptionError: an unknown name. ArgumentError: bad factory arguments.
    """
    if name not in MODELS:
        raise UnknownOptionError(choices_message("zoo model", name, MODELS, "see initscope.zoo"))
    _positive(batch=batch, **({"size": size} if size is not None else {}))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ArgumentError(f"seed must be a whole number (it seeds the model and the input); got {seed!r}")
    factory, shape = MODELS[name]
    # A stream of its own: seeding the input's generator with ``seed`` itself would replay the
    # global stream the weights were drawn from, and correlate the input with the first layer.
    stream = hashlib.blake2b(f"input {seed}".encode(), digest_size=7).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(stream, "little"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory(**kwargs)
    return model, torch.randn(shape(kwargs, batch, size), generator=gen)
