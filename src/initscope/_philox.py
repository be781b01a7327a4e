"""Counter-based random values: every value a pure function of (key, element index).

Philox4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2,
3", SC 2011) written with torch integer ops, so the same code runs on any device and a
shard of a tensor can be filled by generating only the indices it holds. Unsigned 32-bit
words live in int64 tensors; a 32 x 32-bit product (up to 2^64) wraps in int64 and its high
and low words are read back with a shift and a mask, which is exact in two's complement.
Tested against Random123's published known-answer vectors.

Element ``i`` of a tensor uses the counter (i mod 2^32, i div 2^32, 0, 0) and the four
output words give two 53-bit uniforms; from them:

- normal: Box-Muller, sqrt(-2 ln u1) cos(2 pi u2), in float64;
- uniform on [-b, b): b (2 u1 - 1);
- truncated normal on [-2 sigma, 2 sigma]: the inverse CDF of u1 mapped into
  [Phi(-2), Phi(2)] (the method of ``torch.nn.init.trunc_normal_``), in float64.

Values are computed in float64 and rounded once to the tensor's dtype. The float64 log,
cos and erfinv come from each device's math library, so CPU and CUDA agree to the last
float64 bit in nearly all cases and, after rounding to float32, almost always bitwise.
"""
from __future__ import annotations

import hashlib
import math
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from initscope import _native

__all__ = ["philox4x32", "key_of", "values", "fill_"]

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK = 0xFFFFFFFF
_CHUNK = 1 << 16  # elements generated at once: ~10 int64 temporaries of 512 KB, cache-sized
_SOURCE = Path(__file__).with_name("_philox.cpp")
_LOCK = threading.Lock()
_LO_TRUNC = 0.5 * (1 + math.erf(-2 / math.sqrt(2)))  # Phi(-2)


def philox4x32(counter: Sequence[torch.Tensor], key: tuple[int, int], rounds: int = 10) -> list[torch.Tensor]:
    """Philox4x32 of int64 tensors holding unsigned 32-bit words.

    Args:
        counter: four int64 tensors (broadcastable) with values in [0, 2^32).
        key: two unsigned 32-bit ints.
        rounds: 10 for Philox4x32-10.

    Returns:
        The four output words, int64 tensors with values in [0, 2^32).

    Examples:
        >>> z = torch.zeros(1, dtype=torch.int64)
        >>> [hex(int(w)) for w in philox4x32([z, z, z, z], (0, 0))]
        ['0x6627e8d5', '0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
    """
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK
        p0, p1 = c0 * _M0, c2 * _M1  # wraps past 2^63: the low 64 bits stay exact
        n0 = (p1 >> 32).bitwise_and_(_MASK).bitwise_xor_(c1).bitwise_xor_(k0)
        n2 = (p0 >> 32).bitwise_and_(_MASK).bitwise_xor_(c3).bitwise_xor_(k1)
        c0, c1, c2, c3 = n0, p1.bitwise_and_(_MASK), n2, p0.bitwise_and_(_MASK)
    return [c0, c1, c2, c3]


def key_of(seed: int, name: str) -> tuple[int, int]:
    """The Philox key of one parameter: 64 bits of blake2b over (seed, name)."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")


def _uniform53(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """A float64 in (0, 1) from 53 bits of two words, centred in its interval (never 0)."""
    bits = ((hi >> 5) << 26) | (lo >> 6)
    return (bits.to(torch.float64) + 0.5) * 2.0 ** -53


_KERNEL: list = []  # [module or None] once tried


def _kernel() -> object | None:
    """The compiled ``_philox.cpp`` (torch's extension cache; compiled once per machine), or None:
    ``INITSCOPE_NO_NATIVE=1``, no compiler or ninja, or a failed build (then torch ops do it all)."""
    if _native.disabled():
        return None
    if not _KERNEL:
        with _LOCK:
            if not _KERNEL:
                try:
                    from torch.utils import cpp_extension
                    if not cpp_extension.is_ninja_available():
                        raise RuntimeError("no ninja")
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        _KERNEL.append(cpp_extension.load("initscope_philox", [str(_SOURCE)],
                                                          extra_cflags=["-O3"], verbose=False))
                except Exception:  # noqa: BLE001 - any build failure: the torch-ops path
                    _KERNEL.append(None)
    return _KERNEL[0]


def _uniforms(index: torch.Tensor, key: tuple[int, int], two: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(u1, u2) from the words (w0, w1) and (w2, w3); by the C++ kernel on the CPU where it
    is compiled (:mod:`initscope._native`: the same integer arithmetic, the same doubles)."""
    ext = _kernel() if index.device.type == "cpu" else None
    if ext is not None:
        index = index.contiguous()
        u1 = torch.empty(index.shape, dtype=torch.float64)
        u2 = torch.empty(index.shape if two else (0,), dtype=torch.float64)
        ext.philox_uniforms(index, key[0], key[1], u1, u2)
        return u1, (u2 if two else None)
    w = philox4x32([index & _MASK, index >> 32, torch.zeros_like(index), torch.zeros_like(index)], key)
    return _uniform53(w[0], w[1]), (_uniform53(w[2], w[3]) if two else None)


def values(index: torch.Tensor, key: tuple[int, int], distribution: str) -> torch.Tensor:
    """Unit-scale float64 values for the given element indices (int64, >= 0).

    ``normal``: N(0, 1); ``uniform``: U(-1, 1); ``truncated_normal``: N(0, 1) cut at +-2.
    """
    u1, u2 = _uniforms(index, key, distribution == "normal")
    if distribution == "uniform":
        return u1 * 2.0 - 1.0
    if distribution == "truncated_normal":
        p = _LO_TRUNC + u1 * (1.0 - 2.0 * _LO_TRUNC)
        return torch.special.erfinv(p * 2.0 - 1.0).mul_(math.sqrt(2.0)).clamp_(-2.0, 2.0)
    if distribution == "normal":
        return torch.log(u1).mul_(-2.0).sqrt_().mul_(torch.cos(u2 * (2.0 * math.pi)))
    raise ValueError(f"no counter-based sampler for {distribution!r}")


def _index(local_shape: Sequence[int], offsets: Sequence[int], global_shape: Sequence[int],
           rows: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Flat global indices of local rows [rows[0], rows[1]) of a shard (broadcast over dims)."""
    strides = [1] * len(global_shape)
    for d in range(len(global_shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * global_shape[d + 1]
    index = torch.zeros((), dtype=torch.int64, device=device)
    for d, (size, off, stride) in enumerate(zip(local_shape, offsets, strides)):
        lo, hi = (rows if d == 0 else (0, size))
        axis = (torch.arange(lo, hi, dtype=torch.int64, device=device) + off) * stride
        index = index.unsqueeze(-1) + axis if d else axis
    return index


def fill_(local: torch.Tensor, key: tuple[int, int], distribution: str, scale: float,
          offsets: Sequence[int] | None = None, global_shape: Sequence[int] | None = None,
          rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Fill ``local`` (a shard at ``offsets`` of a tensor of ``global_shape``) with ``scale`` times
    :func:`values` of its elements' global indices, in chunks of rows; returns ``local``.

    Args:
        local: the tensor (or local shard) to write, in place.
        key: from :func:`key_of`.
        distribution: normal, uniform or truncated_normal.
        scale: std (normal), bound (uniform) or sigma (truncated normal).
        offsets: global offset of the shard per dimension (zeros: the whole tensor).
        global_shape: shape of the whole tensor (default: ``local.shape``).
        rows: local dim-0 range to write (default: all).
    """
    shape = tuple(local.shape)
    if local.dim() == 0:
        local, shape = local.view(1), (1,)
    offsets = tuple(offsets) if offsets is not None else (0,) * len(shape)
    global_shape = tuple(global_shape) if global_shape is not None else shape
    start, stop = rows if rows is not None else (0, shape[0])
    per_row = max(1, math.prod(shape[1:]))
    step = max(1, _CHUNK // per_row)
    with torch.no_grad():
        for a in range(start, stop, step):
            b = min(stop, a + step)
            idx = _index(shape, offsets, global_shape, (a, b), local.device)
            local[a:b].copy_(values(idx, key, distribution).mul_(scale))
    return local
