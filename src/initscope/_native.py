"""Optional fused CPU kernel for :mod:`initscope.stats`: one memory pass per tensor.

The torch-ops path reads a tensor about ten times (mean, var, aminmax, ne, per-unit sums,
the shift to codes, bincount...). ``_fused_stats.cpp`` reads a contiguous float32 CPU tensor
once, in L1-sized blocks, and returns what that path returns: the scalars, the 4096-code
histogram and the nonzero counts, so :func:`initscope.stats._decode` is unchanged.

It is compiled with :func:`torch.utils.cpp_extension.load` on first use (never at import),
into torch's extension cache, so a machine pays the compile once. Whenever it cannot be
used, :func:`fused` returns None and the caller takes the torch-ops path: no compiler or
ninja, a failed compile, another dtype, device or layout, or ``INITSCOPE_NO_NATIVE=1``.

Against the torch-ops path: integer counts, the histogram, min and max are identical. Mean
and variance are accumulated in float64 (two passes over each L1-resident block, blocks
merged with Chan's formula), within ~1e-12 relative of an exact float64 reduction, and then
rounded to float32, the precision the torch path reports for float32 data, so that results
do not depend on whether a compiler was found (the torch path's float32 sums carry ~1e-7
relative error; the rounded double result is the correctly rounded value). Passing
``float32_moments=False`` to the kernel keeps the float64 values.
"""
from __future__ import annotations

import math
import os
import threading
import warnings
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("_fused_stats.cpp")
_lock = threading.Lock()
_module: object | None = None
#: Why the kernel is not in use ("" while it has not been tried or is in use).
failure = ""


def disabled() -> bool:
    """Whether ``INITSCOPE_NO_NATIVE`` asks for the torch-ops path."""
    return os.environ.get("INITSCOPE_NO_NATIVE", "") not in ("", "0")


def load() -> object | None:
    """The compiled extension, compiling it on the first call; None if that fails."""
    global _module, failure
    if _module is not None or failure:
        return _module
    with _lock:
        if _module is None and not failure:
            try:
                from torch.utils import cpp_extension

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if not cpp_extension.is_ninja_available():
                        raise RuntimeError("ninja is not installed (pip install ninja)")
                    _module = cpp_extension.load(
                        "initscope_fused_stats", [str(_SOURCE)], extra_cflags=["-O3", "-fopenmp"],
                        extra_ldflags=["-fopenmp"], verbose=False)
            except Exception as e:  # no compiler, no ninja, a failed build: fall back quietly
                failure = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    return _module


def fused(x: torch.Tensor, unit_dim: int | None,
          band: tuple[float, float] | None, level: float) -> tuple[torch.Tensor, ...] | None:
    """(scalars, code histogram, nonzero counts) of ``x`` in one pass, or None to fall back.

    Args:
        x: the tensor; only contiguous float32 CPU tensors are handled.
        unit_dim: dimension indexing units, or None.
        band: (centre, half_width) of a bounded activation, or None.
        level: saturated where |x - centre| > level * half_width.
    """
    if x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous() or disabled():
        return None
    ext = load()
    if ext is None:
        return None
    units = inner = 0
    if unit_dim is not None:
        d = unit_dim % x.dim()
        units, inner = x.shape[d], math.prod(x.shape[d + 1:])
    centre, half = band if band is not None else (0.0, 0.0)
    return tuple(ext.fused_stats(x, units, inner, band is not None, centre, level * half, True))
