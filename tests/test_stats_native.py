"""The fused CPU kernel (initscope._native) against the torch-ops path of initscope.stats.

Integer counts, the histogram (and the format counts derived from it), min and max must be
identical. Mean and M2: the kernel reduces in float64 (per block, sums of x and of x^2, or of the
deviations from a shift where the mean dominates the spread; blocks merged with Chan's formula);
against an exact float64 reduction its error is ~2^-45 of the sum of squares per block plus one
rounding per merge, far below the 1e-12 tolerance used here (scaled by the data's magnitude,
since cancellation makes a relative error of the mean itself meaningless near 0).
The torch path sums in float32 (pairwise), so the two paths agree only to ~1e-6.
"""
import math

import numpy as np
import pytest
import torch

from initscope import _measure, _native
from initscope.stats import StatsAccumulator, tensor_stats

INF, NAN = float("inf"), float("nan")

native = pytest.mark.skipif(_native.disabled() or _native.load() is None,
                            reason=f"native kernel unavailable: {_native.failure or 'INITSCOPE_NO_NATIVE is set'}")


def both(x, monkeypatch, **kw):
    """(torch-ops path, native path) statistics of ``x``."""
    with monkeypatch.context() as m:
        m.setenv("INITSCOPE_NO_NATIVE", "1")
        ref = tensor_stats(x, **kw)
    return ref, tensor_stats(x, **kw)


def assert_exact_counts(ref, got):
    for name in ("count", "zeros", "nan", "posinf", "neginf", "saturated"):
        assert getattr(got, name) == getattr(ref, name), name
    for name in ("min", "max"):
        a, b = getattr(ref, name), getattr(got, name)
        assert (math.isnan(a) and math.isnan(b)) or a == b, name
    assert got.hist.tolist() == ref.hist.tolist() and got.formats.tolist() == ref.formats.tolist()
    assert (got.unit_nonzero is None) == (ref.unit_nonzero is None)
    if ref.unit_nonzero is not None:
        assert got.unit_nonzero.tolist() == ref.unit_nonzero.tolist()


def assert_float64_moments(got, x):
    """The kernel's float64 mean and M2 within 1e-12 of float64 numpy, relative to the data's
    scale (per-block shifted sums: a few roundings of 1e-16 per block and per merge); the
    Stats carry them rounded to float32, as the torch path does."""
    a = x.double().numpy().ravel()
    slab = _native.Slab()
    _native.load().fused_stats(x.float().contiguous(), 0, 1, False, 0.0, 0.0, _measure._EDGE_BITS, False,
                               slab.scal, slab.counts, slab.nonzero, 0, 0)
    scal = slab.scal[0].tolist()
    if not np.isfinite(a).all():
        with np.errstate(invalid="ignore"):
            mean = a.mean()  # NaN, or the one infinity
        for m in (scal[0], got.mean):
            assert (math.isnan(m) and math.isnan(mean)) or m == mean
        assert math.isnan(scal[1]) and math.isnan(got.m2)
        return
    mean, m2 = a.mean(), ((a - a.mean()) ** 2).sum()
    scale = float(np.sqrt((a * a).mean()))
    assert abs(scal[0] - mean) <= 1e-12 * scale
    assert abs(scal[1] * a.size - m2) <= 1e-12 * scale * scale * a.size
    # rounded to float32: within half a float32 ulp (2^-24 relative) of the float64 values
    var = m2 / a.size
    assert abs(got.mean - mean) <= 2.0**-24 * abs(mean) + 1e-12 * scale
    if math.isinf(got.var):  # float32 overflows, as the torch path's does
        assert var > 3.4e38
    else:
        assert abs(got.var - var) <= 2.0**-24 * var + 1e-12 * scale * scale


def sample(shape, kind, seed):
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    if kind == "relu":
        x = x.clamp_min(0)
    elif kind == "wide":  # log-uniform magnitudes from float32 subnormals to near its max
        x = torch.sign(x) * torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-102, 88, generator=g))
    elif kind == "special":
        pick = torch.randint(0, 8, (n,), generator=g)
        vals = torch.tensor([0.0, -0.0, INF, -INF, NAN, 1e-45, 3e38, 2.0**-126], dtype=torch.float64)
        x = torch.where(pick < 4, vals[torch.randint(0, 8, (n,), generator=g)], x)
    elif kind == "offset":  # large mean, small spread: cancellation in M2
        x = 1e4 + x * 1e-2
    elif kind == "shifted":  # an outlier first (the first block's shift), then offsets that change along the data
        x = 1e4 * torch.arange(n, dtype=torch.float64).div(n).floor_divide(0.25) + x * 1e-2
        x[0] = 1e9
    elif kind == "edges":  # around every format's overflow edge and float32's 2^-129, among normal values
        edges = [480.0, 464.0, 65504.0, 65520.0, 61440.0, 57344.0, 2.0**-129, 2.0**-129 * 0.999, 2.0**-130]
        vals = torch.tensor([e * f for e in edges for f in (1.0, 1.01, 0.99)], dtype=torch.float64)
        pick = torch.randint(0, 40, (n,), generator=g)
        x = torch.where(pick < len(vals), vals[pick.clamp_max(len(vals) - 1)] * torch.sign(x), x)
    elif kind in ("high", "top"):  # near float32's top octaves, with zeros: the exponent windows' highest bases
        lo, hi = (112.0, 121.0) if kind == "high" else (110.0, 127.9)
        x = torch.sign(x) * torch.exp2(torch.empty(n, dtype=torch.float64).uniform_(lo, hi, generator=g))
        x = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.3, torch.zeros_like(x), x)
    return x.float().reshape(shape)


# unit layouts the kernel treats apart: rows of units (inner 1, units a multiple of 16: 48, 64), runs
# of one unit (inner a multiple of 16: 64, 576, 800, 48, 70000), and any other (a separate pass)
SHAPES = [((1,), None), ((7,), None), ((5, 3), 1), ((3, 5), 0), ((64, 32, 8, 8), 1), ((2, 3, 4, 5, 6), 2),
          ((300, 257), -1), ((16, 33, 70), -1), ((4099,), None), ((2, 70000), 0), ((8, 16, 24, 24), 1),
          ((100, 48), -1), ((40, 64), -1), ((9, 7, 48), 1), ((3, 6, 16, 50), 1)]


@native
@pytest.mark.parametrize("shape,unit_dim", SHAPES)
@pytest.mark.parametrize("kind", ["normal", "relu", "wide", "special", "offset", "shifted", "edges", "high", "top"])
def test_native_equals_torch_path(shape, unit_dim, kind, monkeypatch):
    x = sample(shape, kind, seed=len(shape) * 31 + shape[0])
    ref, got = both(x, monkeypatch, unit_dim=unit_dim, saturation=(0.25, 1.5))
    assert_exact_counts(ref, got)
    assert_float64_moments(got, x)
    if math.isfinite(ref.mean) and math.isfinite(ref.m2):  # the float32 path: ~1e-6 of the scale
        scale = max(math.sqrt(got.second_moment), 1e-30)
        assert abs(got.mean - ref.mean) <= 1e-5 * scale
        assert abs(got.m2 - ref.m2) <= 1e-5 * max(got.second_moment * got.count, 1e-30)


@native
@pytest.mark.parametrize("perm,unit_dim", [((1, 0, 2), -1), ((2, 0, 1), 1), ((0, 2, 1), 0), ((1, 2, 0), None),
                                           ((2, 1, 0), 2)])
@pytest.mark.parametrize("kind", ["normal", "relu", "special"])
def test_a_permuted_view_is_read_in_place_with_the_stats_of_its_copy(perm, unit_dim, kind, monkeypatch):
    """A permuted (e.g. transposed) view is read in memory order, not copied: every count, the
    histogram, min, max and the per-unit counts equal its contiguous copy's; the moments are summed
    in another order, so they agree to float64 rounding (1e-12 of the data's scale, as against
    exact float64 sums) and, rounded to float32, to within one float32 ulp."""
    base = sample((48, 20, 64), kind, seed=sum(perm) + 3)
    view = base.permute(perm)
    copies = []
    monkeypatch.setattr(torch.Tensor, "contiguous", lambda t, *a, **k: copies.append(t) or t.clone())
    got = tensor_stats(view, unit_dim=unit_dim, saturation=(0.0, 1.0))
    assert not view.is_contiguous() and not copies
    monkeypatch.undo()
    ref = tensor_stats(view.contiguous(), unit_dim=unit_dim, saturation=(0.0, 1.0))
    assert_exact_counts(ref, got)
    assert_float64_moments(got, view.contiguous())
    if math.isfinite(ref.mean):
        assert got.mean == pytest.approx(ref.mean, rel=2.0**-23, abs=1e-12 * math.sqrt(ref.second_moment))
        assert got.var == pytest.approx(ref.var, rel=2.0**-23)


@native
def test_memory_with_gaps_is_copied_once_and_measured():
    x = torch.randn(40, 64)[:, ::2]
    s = tensor_stats(x, unit_dim=1)
    ref = tensor_stats(x.contiguous(), unit_dim=1)
    assert_exact_counts(ref, s)
    assert (s.mean, s.m2) == (ref.mean, ref.m2)  # the same contiguous data, the same sums


@native
@pytest.mark.parametrize("kind", ["offset", "shifted"])
def test_m2_of_data_with_a_large_mean_is_exact_relative_to_itself(kind):
    """Where the mean dominates the spread (1e4 +- 1e-2: mean^2 / var = 1e12), sum x^2 - (sum x)^2 / n
    would lose ~2^-46 * 1e12 = 1e-2 of M2; the kernel sums such blocks again from a shift, which
    leaves float64 roundings of the deviations: 1e-10 of M2 itself is a loose bound (numpy's two-pass
    float64 M2, the reference, is good to ~1e-13 here)."""
    x = sample((3, 70000), kind, seed=4)
    a = x.double().numpy().ravel()
    slab = _native.Slab()
    _native.load().fused_stats(x, 0, 1, False, 0.0, 0.0, _measure._EDGE_BITS, False,
                               slab.scal, slab.counts, slab.nonzero, 0, 0)
    m2 = ((a - a.mean()) ** 2).sum()
    assert abs(slab.scal[0, 1].item() * a.size - m2) <= 1e-10 * m2


@native
def test_every_vector_path_gives_the_same_bits():
    """The kernel's AVX-512, AVX2 and plain C++ scans (those this CPU has) write identical rows:
    the same 16 lanes in the same order, and an FMA of x * x + s rounds as a multiply and an add
    do (x * x of a float32 is exact in float64)."""
    ext = _native.load()
    best = ext.set_isa(-1)
    levels = range(("generic", "avx2", "avx512").index(best) + 1)
    try:
        kinds = ["normal", "relu", "wide", "special", "offset", "shifted", "edges", "high", "top"]
        for (shape, unit_dim), kind in zip(SHAPES * len(kinds), kinds * len(SHAPES)):
            x = sample(shape, kind, seed=17).contiguous()
            units = inner = 0
            if unit_dim is not None and x.dim() >= 2:
                d = unit_dim % x.dim()
                units, inner = x.shape[d], math.prod(x.shape[d + 1:])
            rows = []
            for level in levels:
                ext.set_isa(level)
                slab = _native.Slab()
                ext.fused_stats(x, units, inner, True, 0.25, 1.4, _measure._EDGE_BITS, False,
                                slab.scal, slab.counts, slab.nonzero, 0, 0)
                rows.append((slab.scal[0].numpy().tobytes(), slab.counts[0].tolist(), slab.nonzero[:max(units, 1)].tolist()))
            assert all(r == rows[0] for r in rows), (shape, unit_dim, kind)
    finally:
        ext.set_isa(("generic", "avx2", "avx512").index(best))
    assert ext.set_isa(-1) == best


@native
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_widens_and_takes_the_native_path(dtype, monkeypatch):
    x = sample((64, 40), "special", seed=3).to(dtype)
    ref, got = both(x, monkeypatch, unit_dim=1, saturation=(0.0, 1.0))
    assert_exact_counts(ref, got)
    assert_float64_moments(got, x.float())


@native
@pytest.mark.parametrize("centre,half", [(0.0, 1.0), (0.5, 0.5), (-1.3, 0.7), (0.0, 1e-3)])
def test_saturation_threshold_is_compared_as_torch_does(centre, half, monkeypatch):
    x = torch.tanh(torch.randn(20000, generator=torch.Generator().manual_seed(9)) * 3)
    ref, got = both(x, monkeypatch, saturation=(centre, half))
    assert got.saturated == ref.saturated


@native
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_do_not_change_the_result(threads):
    x = sample((40, 30, 50), "special", seed=11)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = tensor_stats(x, unit_dim=1)
        torch.set_num_threads(threads)
        many = tensor_stats(x, unit_dim=1)
    finally:
        torch.set_num_threads(before)
    assert_exact_counts(one, many)
    assert_float64_moments(many, x)


def _row(ext, x, unit_dim):
    """The kernel's raw output for x: (scalars as bytes, counts, nonzero counts)."""
    units = inner = 0
    if unit_dim is not None:
        d = unit_dim % x.dim()
        units, inner = x.shape[d], math.prod(x.shape[d + 1:])
    slab = _native.Slab(values=max(units, 1 << 14))
    ext.fused_stats(x, units, inner, True, 0.25, 1.4, _measure._EDGE_BITS, False,
                    slab.scal, slab.counts, slab.nonzero, 0, 0)
    return slab.scal[0].numpy().tobytes(), slab.counts[0].tolist(), slab.nonzero[:max(units, 1)].tolist()


@native
def test_a_call_does_not_depend_on_the_calls_before_it():
    """The per-part counters are kept from one call to the next (zeroed where a call wrote):
    the same rows in any order, across layouts, the scatter path (wide, special) and part counts."""
    ext = _native.load()
    cases = [(sample(shape, kind, seed=23), unit_dim) for shape, unit_dim in
             [((64, 32, 8, 8), 1), ((300, 257), -1), ((2, 70000), 0), ((4099,), None), ((3, 6, 16, 50), 1),
              ((2, 70000), -1)]  # more units than the kernel keeps buffers for
             for kind in ("wide", "normal", "special", "relu")]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        forward = [_row(ext, x, d) for x, d in cases]
        backward = [_row(ext, x, d) for x, d in reversed(cases)][::-1]
    finally:
        torch.set_num_threads(before)
    assert forward == backward


@native
def test_capping_the_parts_at_one_gives_the_one_thread_result():
    ext = _native.load()
    x = sample((64, 32, 32, 16), "special", seed=29)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _row(ext, x, 1)
        torch.set_num_threads(2)
        assert ext.set_max_parts(1) == 1
        capped = _row(ext, x, 1)
    finally:
        ext.set_max_parts(0)
        torch.set_num_threads(before)
    assert ext.set_max_parts(-1) == 0
    assert capped == one


@native
def test_merging_native_parts_equals_the_whole():
    x = sample((96, 24, 9), "normal", seed=5)
    whole = tensor_stats(x, unit_dim=1)
    parts = tensor_stats(x[:40], unit_dim=1).merge(tensor_stats(x[40:], unit_dim=1))
    assert_exact_counts(whole, parts)
    # each side is rounded to float32 before the float64 merge
    assert parts.mean == pytest.approx(whole.mean, rel=1e-6, abs=1e-7)
    assert parts.m2 == pytest.approx(whole.m2, rel=1e-6)


@native
def test_accumulator_mixes_native_and_torch_path_tensors(monkeypatch):
    items = [("f32", torch.randn(50, 4)), ("f64", torch.randn(50, 4, dtype=torch.float64)),
             ("strided", torch.randn(4, 50).t()), ("bf16", torch.randn(50, 4).bfloat16())]
    acc = StatsAccumulator()
    for key, t in items:
        acc.add(key, t, unit_dim=1)
    got = dict(acc.to_host())
    for key, t in items:
        ref, _ = both(t, monkeypatch, unit_dim=1)
        assert_exact_counts(ref, got[key])


def test_fallback_when_disabled(monkeypatch):
    monkeypatch.setenv("INITSCOPE_NO_NATIVE", "1")
    x = torch.randn(6, 5)
    assert _native.disabled() and _native.fused(x, 1, None, 0.99, _measure._EDGE_BITS, _native.Slab()) is None
    s = tensor_stats(x, unit_dim=1)
    assert s.count == 30 and s.unit_nonzero.tolist() == [6] * 5


def test_fallback_for_other_tensors():
    assert _native.fused(torch.randn(4, 3, dtype=torch.float64), 1, None, 0.99, _measure._EDGE_BITS, _native.Slab()) is None
    gaps = torch.randn(3, 8)[:, ::2]  # every other column: the kernel reads memory without gaps only
    assert _native.fused(gaps, 1, None, 0.99, _measure._EDGE_BITS, _native.Slab()) is None


def test_fallback_when_the_build_fails(monkeypatch):
    monkeypatch.setattr(_native, "_module", None)
    monkeypatch.setattr(_native, "failure", "RuntimeError: no compiler")
    assert _native.load() is None and _native.fused(torch.randn(3, 4), None, None, 0.99, _measure._EDGE_BITS, _native.Slab()) is None
    s = tensor_stats(torch.tensor([[0.0, 1.0], [0.0, -3.0]]), unit_dim=1)
    assert (s.count, s.mean, s.zeros, s.dead_units) == (4, -0.5, 2, 1)


def test_import_does_not_compile():
    import subprocess
    import sys

    code = ("import sys, initscope, initscope.stats, initscope._native as n; "
            "sys.exit(n._module is not None or 'torch.utils.cpp_extension' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


@native
def test_the_slab_grows_and_is_reused_without_aliasing_earlier_results(monkeypatch):
    acc = StatsAccumulator()
    xs = [torch.randn(3, 40 + i) for i in range(300)] + [torch.randn(2, 20000)]  # past 256 rows, 2^14 units
    for i, x in enumerate(xs):
        acc.add(i, x, unit_dim=1)
    first = acc.to_host()
    kept = [s.unit_nonzero.copy() for _, s in first]
    for x in xs:  # the same slab again, overwritten with other data
        acc.add(None, torch.zeros_like(x), unit_dim=1)
    acc.to_host()
    with monkeypatch.context() as m:
        m.setenv("INITSCOPE_NO_NATIVE", "1")
        ref = [tensor_stats(x, unit_dim=1) for x in xs]
    for (_, got), want, before in zip(first, ref, kept):
        assert_exact_counts(want, got)
        assert got.unit_nonzero.tolist() == before.tolist()  # not a view of the reused slab


@native
def test_a_slow_load_says_that_it_compiles(monkeypatch, capfd):
    import time

    from torch.utils import cpp_extension

    real = cpp_extension.load
    monkeypatch.setattr(cpp_extension, "load", lambda *a, **k: (time.sleep(0.3), real(*a, **k))[1])  # a slow build
    monkeypatch.setattr(_native, "_module", None)
    monkeypatch.setattr(_native, "NOTICE_AFTER_S", 0.05)
    assert _native.load() is not None
    assert "compiling the fused statistics kernel" in capfd.readouterr().err
    monkeypatch.setattr(_native, "_module", None)
    monkeypatch.setattr(cpp_extension, "load", real)
    monkeypatch.setattr(_native, "NOTICE_AFTER_S", 600.0)  # a quick (cached) load is quiet
    assert _native.load() is not None
    assert capfd.readouterr().err == ""
