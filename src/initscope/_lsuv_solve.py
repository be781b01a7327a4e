"""LSUV's statistics and its exact correction: pure functions of on-device tensors.

From the float64 sums (Σy, Σb, Σyb, Σb², Σy²) of a layer's output y = z + b the moments
follow, and s solves Var(s z + b) = s^2 Var z + 2 s Cov(z, b) + Var b = target^2 exactly
(see :mod:`initscope.lsuv`).
"""
from __future__ import annotations

import torch
from torch import nn

from initscope import distributed
from initscope.errors import ShapeError

__all__: list[str] = []


def _scaled(module: nn.Module) -> nn.Module:
    """The module whose weight LSUV scales: attention's output projection, else the layer itself."""
    return module.out_proj if isinstance(module, nn.MultiheadAttention) else module


def _sums(name: str, module: nn.Module, y: torch.Tensor, ch: int) -> torch.Tensor:
    """Float64 (Σy, Σb, Σyb, Σb², Σy²) over all elements of the output y = z + b (units along ``ch``).

    Sums run in y's precision (float32 at least) with torch's cascade summation, about 1e-7
    relative, and are combined in float64: Var z = Var y - 2 Cov(y, b) + Var b then holds to
    about 1e-7 (1 + mean(b^2) / Var z), without a pass to form z."""
    units, bias = y.shape[ch], distributed.full(_scaled(module).bias)
    if y.numel() < 2 * units:
        raise ShapeError(f"`{name}` ({type(module).__name__}): output shape {tuple(y.shape)} gives "
                         f"{y.numel() // units} sample(s) per unit; std needs at least 2; pass a larger batch "
                         "(LSUV wants one real batch, e.g. 32-256 samples)")
    y = y if y.dtype in (torch.float32, torch.float64) else y.float()
    b = y.new_zeros(units) if bias is None else bias.to(y.dtype)
    rows = torch.stack([y.sum([d for d in range(y.dim()) if d != ch]), b * (y.numel() / units)])
    return torch.cat([rows.sum(1), rows @ b, (y * y).sum().view(1)]).double()


def _along(v: torch.Tensor, y: torch.Tensor, dim: int) -> torch.Tensor:
    """v (one value per unit) shaped to broadcast against y along ``dim``."""
    return v.view([-1 if d == dim else 1 for d in range(y.dim())])


def _moments(v: torch.Tensor, n: float | torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(mean y, mean b, Var y, Cov(y, b), Var b) from the sums v over n elements; row-wise on a stack."""
    sy, sb, syb, sbb, syy = v.unbind(-1)
    my, mb, k = sy / n, sb / n, 1 / (n - 1)
    return my, mb, (syy - sy * my) * k, (syb - sy * mb) * k, (sbb - sb * mb) * k


def _std_mean(mom: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    return mom[2].clamp(min=0).sqrt(), mom[0]


def _z_moments(mom: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(Var z, Cov(z, b)) for z = y - b: Var y - 2 Cov(y, b) + Var b and Cov(y, b) - Var b."""
    _, _, vy, cyb, vb = mom
    return vy - 2 * cyb + vb, cyb - vb


def _alive(v: torch.Tensor, n: float | torch.Tensor, var_z: torch.Tensor) -> torch.Tensor:
    """False where z = y - b is constant (a dead input: std(z) below 1e-3 rms(y), the rounding
    floor of float32 sums) and where it is NaN."""
    return var_z > v[..., 4] * (1e-6 / n)


def _solve(v: torch.Tensor, n: float, mom: tuple[torch.Tensor, ...], target: float,
           center: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(s, d, ok): std(s z + b + d) = target, and mean 0 if ``center`` (else d is None).

    s is the positive root of s^2 Var z + 2 s Cov(z, b) + Var b = target^2. Without one (the
    bias alone is spread wider than the target) it is the minimizer -Cov/Var z if positive,
    else target / std(z). Never divides by zero; ok is False for a dead layer."""
    (my, mb, _, _, vb), (vz, c) = mom, _z_moments(mom)
    ok, vz = _alive(v, n, vz), vz.clamp(min=1e-300)
    root = ((c * c - vz * (vb - target ** 2)).clamp(min=0).sqrt() - c) / vz
    s = torch.where(root > 0, root, target * vz.rsqrt())
    return s, -(s * (my - mb) + mb) if center else None, ok
