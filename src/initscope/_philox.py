"""Counter-based random values: every value a pure function of (key, element index).

Philox4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2,
3", SC 2011) written with torch integer ops, so the same code runs on any device and a
shard of a tensor can be filled by generating only the indices it holds. Unsigned 32-bit
words live in int64 tensors; a 32 x 32-bit product (up to 2^64) wraps in int64 and its high
and low words are read back with a shift and a mask, which is exact in two's complement.
Tested against Random123's published known-answer vectors.

Element ``i`` of a tensor takes word ``i mod 4`` of Philox at the counter
(c mod 2^32, c div 2^32, 0, 0), c = i div 4, as the 32-bit uniform u = (w + 0.5) 2^-32; so one
Philox call serves four elements:

- normal: Box-Muller on the pairs (w0, w1) and (w2, w3): elements 4c .. 4c+3 are
  r0 cos t0, r0 sin t0, r1 cos t1, r1 sin t1, r = sqrt(-2 ln u), t = 2 pi u, in float64
  (|values| < 6.7: u >= 2^-33);
- uniform on [-b, b): b (2 u - 1);
- truncated normal on [-2 sigma, 2 sigma]: the inverse CDF of u mapped into
  [Phi(-2), Phi(2)] (the method of ``torch.nn.init.trunc_normal_``), torch's float64 erfinv.

Values are computed in float64 and rounded once to the tensor's dtype. log, sin, cos and sqrt
are not the math library's: they are series and Newton steps of +, -, *, / only (accurate to
~1e-16; see ``_philox.cpp``), each op IEEE-rounded, so the optional C++ kernel (one pass from
indices to the output, vectorised, on the CPU) and the torch-ops path (any device; the fallback
without a compiler) give the same bits, and so does any device whose float64 +, *, / are IEEE
(CUDA's are; not yet run on a GPU). Only erfinv (truncated normal) is the device's own.
"""
from __future__ import annotations

import hashlib
import math
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from initscope import _native
from initscope._boxmuller import radius as _radius
from initscope._boxmuller import turn as _turn

__all__ = ["philox4x32", "key_of", "values", "fill_"]

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK = 0xFFFFFFFF
_CHUNK = 1 << 16  # elements generated at once: ~10 int64 temporaries of 512 KB, cache-sized
_SOURCE = Path(__file__).with_name("_philox.cpp")
_NAME = "initscope_philox_fused"  # not the name of the earlier integer-only kernel: no stale cache
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


_KERNEL: list = []  # [module or None] once tried
_NOTICE = ("initscope: compiling the Philox kernel for rng='philox', once per machine (about 30 s; "
           "INITSCOPE_NO_NATIVE=1 skips it)")


def _kernel() -> object | None:
    """The compiled ``_philox.cpp`` (torch's extension cache; compiled once per machine), or None:
    ``INITSCOPE_NO_NATIVE=1``, no compiler or ninja, or a failed build (then torch ops do it all).
    A load that takes longer than :data:`initscope._native.NOTICE_AFTER_S` is a compile: stderr says so."""
    if _native.disabled():
        return None
    if not _KERNEL:
        with _LOCK:
            if not _KERNEL:
                _KERNEL.append(_build())
    return _KERNEL[0]


def _build() -> object | None:
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        return None
    notice = threading.Timer(_native.NOTICE_AFTER_S, lambda: print(_NOTICE, file=sys.stderr, flush=True))
    notice.daemon = True
    notice.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # -ffp-contract=off: no fused multiply-add, so the bits equal the torch-ops path's
            return cpp_extension.load(_NAME, [str(_SOURCE)], extra_ldflags=["-fopenmp"], verbose=False,
                                      extra_cflags=["-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"])
    except Exception:  # noqa: BLE001 - any build failure: the torch-ops path
        return None
    finally:
        notice.cancel()


_MODE = {"normal": 0, "uniform": 1, "truncated_normal": 2}


def _truncated(u: torch.Tensor) -> torch.Tensor:
    """The inverse normal CDF of u mapped into [Phi(-2), Phi(2)] (float64 erfinv of torch), cut at +-2."""
    p = _LO_TRUNC + u * (1.0 - 2.0 * _LO_TRUNC)
    return torch.special.erfinv(p * 2.0 - 1.0).mul_(math.sqrt(2.0)).clamp_(-2.0, 2.0)


def _quads(counter: torch.Tensor, key: tuple[int, int], distribution: str) -> torch.Tensor:
    """Unit-scale float64 values of elements 4c .. 4c+3 for counters c (int64, >= 0): shape (*c, 4)."""
    zero = torch.zeros_like(counter)
    w = philox4x32([counter & _MASK, counter >> 32, zero, zero], key)
    if distribution == "normal":
        (c0, s0), (c1, s1) = _turn(w[1]), _turn(w[3])
        r0, r1 = _radius(w[0]), _radius(w[2])
        return torch.stack([r0 * c0, r0 * s0, r1 * c1, r1 * s1], dim=-1)
    u = torch.stack(w, dim=-1).to(torch.float64) + 0.5
    if distribution == "uniform":
        return u * 2.0 ** -31 - 1.0
    return _truncated(u * 2.0 ** -32)


def values(index: torch.Tensor, key: tuple[int, int], distribution: str) -> torch.Tensor:
    """Unit-scale float64 values for the given element indices (int64, >= 0), by torch ops.

    ``normal``: N(0, 1); ``uniform``: U(-1, 1); ``truncated_normal``: N(0, 1) cut at +-2.
    Element i takes word i mod 4 of Philox at the counter i div 4 (see the module's docstring).
    """
    if distribution not in _MODE:
        raise ValueError(f"no counter-based sampler for {distribution!r}")
    quads = _quads(index >> 2, key, distribution)
    return quads.gather(-1, (index & 3).unsqueeze(-1)).squeeze(-1)


def _run_values(starts: torch.Tensor, run: int, key: tuple[int, int], distribution: str) -> torch.Tensor:
    """Values of the runs [s, s + run) for s in starts, shape (len(starts), run): whole quads of
    counters (one Philox call and one Box-Muller pair per two values), then each run's slice."""
    count = (run + 3) // 4 + 1  # counters a run spans, whatever its start's lane
    counters = (starts >> 2).unsqueeze(-1) + torch.arange(count, dtype=torch.int64, device=starts.device)
    quads = _quads(counters, key, distribution).reshape(len(starts), 4 * count)
    at = (starts & 3).unsqueeze(-1) + torch.arange(run, dtype=torch.int64, device=starts.device)
    return quads.gather(1, at)


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


def _runs(shape: Sequence[int], offsets: Sequence[int], global_shape: Sequence[int],
          rows: tuple[int, int], device: torch.device = torch.device("cpu")) -> tuple[torch.Tensor, int]:
    """Rows [rows[0], rows[1]) of a shard as runs of consecutive global indices: (starts, run length).

    Trailing dimensions the shard holds whole merge into one run with the last partial one."""
    k = len(shape) - 1
    while k > 0 and shape[k] == global_shape[k] and offsets[k] == 0:
        k -= 1
    inner = math.prod(global_shape[k + 1:])
    if k == 0:
        start = torch.tensor([(rows[0] + offsets[0]) * inner], dtype=torch.int64, device=device)
        return start, (rows[1] - rows[0]) * inner
    starts = _index(shape[:k], offsets[:k], tuple(global_shape[:k]) + (global_shape[k] * inner,), rows,
                    device).reshape(-1)
    return starts.add_(offsets[k] * inner).contiguous(), shape[k] * inner


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
    if stop <= start or 0 in shape:
        return local
    ext = _kernel() if local.device.type == "cpu" else None
    with torch.no_grad():
        if ext is not None and distribution != "truncated_normal":
            _fill_native(ext, local[start:stop], _runs(shape, offsets, global_shape, (start, stop)),
                         key, _MODE[distribution], scale)
            return local
        per_row = max(1, math.prod(shape[1:]))
        step = max(1, _CHUNK // per_row)
        for a in range(start, stop, step):
            b = min(stop, a + step)
            if ext is not None:  # truncated normal: the kernel's uniforms, torch's erfinv
                u = torch.empty((b - a, *shape[1:]), dtype=torch.float64)
                ext.philox_fill(u, *_runs(shape, offsets, global_shape, (a, b)), key[0], key[1], 2, 1.0)
                local[a:b].copy_(_truncated(u).mul_(scale))
            else:
                starts, run = _runs(shape, offsets, global_shape, (a, b), local.device)
                chunk = _run_values(starts, run, key, distribution).mul_(scale)
                local[a:b].copy_(chunk.reshape(local[a:b].shape))
    return local


def _fill_native(ext: object, target: torch.Tensor, runs: tuple[torch.Tensor, int], key: tuple[int, int],
                 mode: int, scale: float) -> None:
    """The kernel writes float32 / float64 contiguous targets in place, others through a float64 copy
    (then rounded by ``copy_``, as the torch-ops path rounds its float64 values)."""
    direct = target.is_contiguous() and target.dtype in (torch.float32, torch.float64)
    out = target if direct else torch.empty(target.shape, dtype=torch.float64)
    ext.philox_fill(out, runs[0], runs[1], key[0], key[1], mode, scale)
    if not direct:
        target.copy_(out)
