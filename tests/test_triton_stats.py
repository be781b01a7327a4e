"""The opt-in Triton pass (initscope._triton_stats) against the torch-ops path of initscope.stats.

Integer counts, the histogram, the format counts, min and max must be identical to the torch
path's; mean and variance are checked against float64 numpy (see :func:`assert_moments`). Without a GPU, Triton's interpreter runs the kernel on CPU tensors
(``TRITON_INTERPRET=1``, in a subprocess so that the flag applies before Triton is imported);
with a CUDA device the compiled kernel runs through ``tensor_stats`` with
``INITSCOPE_TRITON=1``. Both skip where Triton is not installed (CI installs none).
"""
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("triton")
sys.path.insert(0, str(Path(__file__).parent))  # the shared cases of the CPU kernel's tests

from test_stats_native import SHAPES, assert_exact_counts, sample  # noqa: E402

from initscope.stats import tensor_stats  # noqa: E402

KINDS = ["normal", "relu", "wide", "special", "offset", "shifted", "edges"]


def assert_moments(got, x):
    """Mean and variance against float64 numpy: float64 per tile, merged with Chan's formula and
    rounded to float32, so within half a float32 ulp plus 1e-12 of the data's scale (the float32
    torch path itself overflows on the widest samples, so it is not the reference here)."""
    a = x.double().numpy().ravel()
    if not np.isfinite(a).all():
        with np.errstate(invalid="ignore"):
            mean = a.mean()  # NaN, or the one infinity
        assert (math.isnan(got.mean) and math.isnan(mean)) or got.mean == mean
        assert math.isnan(got.m2)
        return
    mean, var = a.mean(), ((a - a.mean()) ** 2).mean()
    scale = float(np.sqrt((a * a).mean()))
    assert abs(got.mean - mean) <= 2.0**-24 * abs(mean) + 1e-12 * scale
    if math.isinf(got.var):  # float32 overflows
        assert var > 3.4e38
    else:
        assert abs(got.var - var) <= 2.0**-24 * var + 1e-12 * scale * scale


def interpreted_check() -> int:
    """Every shape and kind through the kernel in Triton's interpreter; returns the cases checked."""
    n = 0
    for shape, unit_dim in SHAPES:
        for kind in KINDS:
            x = sample(shape, kind, seed=len(shape) * 31 + shape[0])
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                _one(x.to(dtype), unit_dim)
                n += 1
    return n


def _one(y, unit_dim, band=(0.25, 1.5)):
    """``y`` through the kernel and the batched merge, checked against the torch path."""
    from initscope import _decode, _measure, _triton_stats
    from initscope.stats import Stats

    arena = _triton_stats.Arena(y.device)
    parts = _triton_stats.measure(y, unit_dim, band, _measure.SATURATION_LEVEL, _measure._EDGE_BITS, arena)
    assert parts is not None, _triton_stats.failure
    arena.finish()
    units = None if unit_dim is None else y.shape[unit_dim]
    pending = _measure._Pending(parts, y.numel(), units, True, True, exponents=True)
    got = Stats(*_decode.decode(*_decode.transfer([pending]), [pending])[0])
    os.environ["INITSCOPE_NO_NATIVE"] = "1"
    ref = tensor_stats(y, unit_dim=unit_dim, saturation=band)
    del os.environ["INITSCOPE_NO_NATIVE"]
    assert_exact_counts(ref, got)
    assert_moments(got, y.float())


def interpreted_edge_check() -> int:
    """The shift K (the first value) when that value is infinite, NaN or far from the rest, and
    programs that loop over many tiles (small tiles, few programs)."""
    from initscope import _triton_stats

    g = torch.Generator().manual_seed(1)
    n = 0
    for first in (math.inf, math.nan, -math.inf, 1e30, 3e38, 0.0):
        x = torch.randn(40, 6, 7, generator=g) + 1e3
        x.view(-1)[0] = first
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            if dtype is torch.float16 and math.isfinite(first) and abs(first) > 6e4:
                continue  # not a float16 value
            _one(x.to(dtype), 1)
            n += 1
    _triton_stats._PROGRAMS, _triton_stats._TILE = 1, 16  # 4 programs ("processors" off CUDA), 16 values a lap
    x = torch.randn(300, 3, 50, generator=g) * 1e-3 + 5
    for y, unit_dim in ((x, 1), (x, None), (x.to(torch.bfloat16), 2)):
        _one(y, unit_dim)
        n += 1
    return n


def _interpret(call: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 1.25 to 2.3 warn
        try:
            int(np.array([1]))
        except TypeError:  # numpy >= 2.4; Triton 3.6's interpreter reads a loop bound so
            pytest.skip("Triton's interpreter calls int() on a 1-element array, which this numpy refuses")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = f"import test_triton_stats as t; print('checked', t.{call}())"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_kernel_in_triton_s_interpreter_equals_the_torch_path():
    assert f"checked {len(SHAPES) * len(KINDS) * 3}" in _interpret("interpreted_check")


def test_the_shift_and_the_loop_over_tiles_in_triton_s_interpreter():
    assert "checked 19" in _interpret("interpreted_edge_check")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none here")
@pytest.mark.parametrize("shape,unit_dim", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_the_compiled_kernel_on_cuda_equals_the_torch_path(shape, unit_dim, kind, monkeypatch):
    x = sample(shape, kind, seed=len(shape) * 31 + shape[0])
    with monkeypatch.context() as m:
        m.setenv("INITSCOPE_NO_NATIVE", "1")
        ref = tensor_stats(x, unit_dim=unit_dim, saturation=(0.25, 1.5))
    monkeypatch.setenv("INITSCOPE_TRITON", "1")
    got = tensor_stats(x.cuda(), unit_dim=unit_dim, saturation=(0.25, 1.5))
    assert_exact_counts(ref, got)
    assert_moments(got, x)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none here")
def test_the_triton_pass_never_synchronises_with_the_host(monkeypatch):
    from initscope.stats import StatsAccumulator

    monkeypatch.setenv("INITSCOPE_TRITON", "1")
    acc = StatsAccumulator()
    x = torch.randn(256, 64, 32, 32, device="cuda").relu()
    acc.add("warm-up", x, unit_dim=1)  # compiles outside the check
    acc.to_host()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sync debug mode is a prototype feature"
        torch.cuda.set_sync_debug_mode("error")
        try:
            acc.add("a", x, unit_dim=1, saturation=(0.0, 1.0))
            acc.add("b", x.half(), unit_dim=1)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    (_, a), (_, b) = acc.to_host()
    assert a.count == b.count == x.numel()
