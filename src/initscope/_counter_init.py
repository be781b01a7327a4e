"""Write one parameter's planned blocks from the counter-based generator (:mod:`initscope._philox`).

Every value is a pure function of (seed, parameter name, element index), so a shard of a
DTensor is filled by generating only the indices it holds, and the whole tensor gathered
from any number of ranks equals the one written by a single process, bitwise.
Orthogonal (and delta-orthogonal) blocks need the whole matrix for their QR: each rank
generates the whole block itself (one parameter block at a time, no communication) and
keeps its slice.
"""
from __future__ import annotations

import math

import torch

from initscope import _philox, distributed
from initscope.init import TRUNCATED_STD

__all__ = ["write"]

_SCALE = {"normal": 1.0, "uniform": math.sqrt(3.0), "truncated_normal": 1.0 / TRUNCATED_STD}
WHOLE_BLOCK = ("orthogonal", "delta_orthogonal")


def write(p: torch.Tensor, name: str, rows: list, seed: int) -> None:
    """Fill the local part of ``p`` (a tensor or a DTensor) as ``rows`` (PlanRow) say."""
    local, offsets, shape = distributed.local_shard(p)
    if local.is_meta:
        return
    key = _philox.key_of(seed, name)
    with torch.no_grad():
        for r in rows:
            lo, hi = (r.rows if local.dim() else (0, 1))
            a, b = max(lo, offsets[0] if offsets else 0), min(hi, (offsets[0] + local.shape[0]) if offsets else 1)
            if a >= b or local.numel() == 0:
                continue
            start = offsets[0] if offsets else 0
            if r.distribution in ("zeros", "ones"):
                (local[a - start:b - start] if local.dim() else local).fill_(float(r.distribution == "ones"))
            elif r.distribution in WHOLE_BLOCK:
                block = _whole_block(key, r.distribution, r.std, shape, (lo, hi), local.dtype, local.device)
                piece = block[a - lo:b - lo]
                for d in range(1, local.dim()):
                    piece = piece.narrow(d, offsets[d], local.shape[d])
                local[a - start:b - start].copy_(piece)
            else:
                _philox.fill_(local, key, r.distribution, r.std * _SCALE[r.distribution],
                              offsets, shape, (a - start, b - start))


def _whole_block(key: tuple[int, int], distribution: str, std: float, shape: tuple[int, ...],
                 rows: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Rows [lo, hi) of the whole parameter, orthogonal (or delta-orthogonal) as one process writes them."""
    lo, hi = rows
    block_shape = (hi - lo, *shape[1:])
    if distribution == "delta_orthogonal":
        out = torch.zeros(block_shape, dtype=dtype, device=device)
        matrix = _orthogonal(key, (hi - lo, shape[1]), (lo, hi), shape[:2], dtype, device)
        centre = tuple(k // 2 for k in shape[2:])
        out[(slice(None), slice(None), *centre)] = matrix * (std * math.sqrt(max(hi - lo, shape[1])))
        return out
    q = _orthogonal(key, block_shape, (lo, hi), shape, dtype, device)
    return q.mul_(std * math.sqrt(max(hi - lo, q.numel() // max(1, hi - lo))))


def _orthogonal(key: tuple[int, int], block_shape: tuple[int, ...], rows: tuple[int, int],
                shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A (semi-)orthogonal block, from counter-based normals of its elements (as init.orthogonal_)."""
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    n_rows = block_shape[0]
    flat = torch.empty(block_shape, dtype=work, device=device)
    _philox.fill_(flat, key, "normal", 1.0, (rows[0], *([0] * (len(shape) - 1))), shape)
    flat = flat.reshape(n_rows, -1)
    if n_rows < flat.shape[1]:
        flat = flat.t()
    q, r = torch.linalg.qr(flat)
    q = q * torch.diag(r, 0).sign()
    if n_rows < q.numel() // n_rows:
        q = q.t()
    return q.reshape(block_shape).to(dtype)
