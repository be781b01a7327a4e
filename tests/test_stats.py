"""Stats: oracle tests against numpy in float64, contract tests, and exact merging."""
import gc
import json
import math
import weakref

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from initscope.errors import ShapeError
from initscope.stats import FORMATS, HIST_EXPONENTS, Stats, StatsAccumulator, tensor_stats

INF, NAN = float("inf"), float("nan")
# smallest normal, smallest subnormal, max: IEEE values for fp16 / bf16 / fp8 (OCP e4m3fn, e5m2)
LIMITS = {"fp16": (2.0**-14, 2.0**-24, 65504.0), "bf16": (2.0**-126, 2.0**-133, 3.3895313892515355e38),
          "fp8_e4m3": (2.0**-6, 2.0**-9, 448.0), "fp8_e5m2": (2.0**-14, 2.0**-16, 57344.0)}


def oracle_hist(a: np.ndarray) -> np.ndarray:
    """The documented bins, from numpy's exact frexp: zero, tiny, octaves, huge, nonfinite."""
    a = a.astype(np.float64).ravel()
    fin = a[np.isfinite(a) & (a != 0)]
    e = np.frexp(np.abs(fin))[1] - 1  # floor(log2|x|)
    h = np.zeros(258, np.int64)
    h[0] = (a == 0).sum()
    h[1] = (e < -126).sum()
    idx = e[(e >= -126) & (e <= 127)] + 128
    np.add.at(h, idx, 1)
    h[256] = (e > 127).sum()
    h[257] = (~np.isfinite(a)).sum()
    return h


def log_uniform(n: int, lo: float, hi: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mag = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(lo), math.log(hi), generator=g))
    sign = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    return mag * sign


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_special_values_are_counted_exactly(dtype):
    x = torch.tensor([0.0, -0.0, 1.0, -2.0, INF, -INF, -INF, NAN, 0.25, 3.0], dtype=dtype)
    s = tensor_stats(x)
    assert (s.count, s.zeros, s.nan, s.posinf, s.neginf, s.nonfinite) == (10, 2, 1, 1, 2, 4)
    assert s.zero_frac == 0.2 and s.nan_frac == 0.1
    assert math.isnan(s.min) and math.isnan(s.max)  # NaN propagates, as in torch.aminmax
    assert s.hist.tolist() == oracle_hist(x.double().numpy()).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_moments_match_float64_numpy(dtype):
    x = (torch.randn(4096, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3 + 2).to(dtype)
    s = tensor_stats(x)
    ref = x.double().numpy()
    # float32 data: torch's pairwise sums keep ~1e-7 relative error; float64: ~1e-15
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    assert s.mean == pytest.approx(ref.mean(), rel=rtol)
    assert s.std == pytest.approx(ref.std(), rel=rtol)
    assert s.second_moment == pytest.approx((ref**2).mean(), rel=rtol)
    assert (s.min, s.max, s.absmax) == (ref.min(), ref.max(), np.abs(ref).max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_histogram_matches_frexp_including_subnormals(dtype):
    x = torch.cat([log_uniform(20000, 1e-44 if dtype == torch.float32 else 1e-300, 1e38), torch.zeros(7),
                   torch.tensor([2.0**-126, 2.0**-127, 1.0, 0.5, -(2.0**127)], dtype=torch.float64)]).to(dtype)
    s = tensor_stats(x)
    assert s.hist.tolist() == oracle_hist(x.numpy()).tolist()
    assert s.hist.sum() == s.count and len(HIST_EXPONENTS) == 254


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_underflow_counts_match_thresholds(dtype):
    x = log_uniform(50000, 1e-40, 1e3, seed=2).to(dtype)
    a = np.abs(x.double().numpy())
    s = tensor_stats(x)
    for f, (normal, sub, _) in LIMITS.items():
        assert s.formats[FORMATS.index(f), 0] == ((a > 0) & (a < normal)).sum()
        if f != "bf16":  # bf16's 2^-133 lies inside float32's subnormals: an upper bound there
            assert s.formats[FORMATS.index(f), 1] == ((a > 0) & (a < sub)).sum()
        else:
            assert s.formats[FORMATS.index(f), 1] >= ((a > 0) & (a < sub)).sum()


def test_underflow_agrees_with_an_actual_cast_away_from_boundaries():
    x = log_uniform(20000, 1e-12, 1.0, seed=3).float()
    x = x[(torch.log2(x.abs()) - torch.log2(x.abs()).round()).abs() > 0.01]  # not within 1% of 2^k
    s = tensor_stats(x)
    cast = x.half().float()
    sub_or_zero = (cast.abs() < 2.0**-14).sum().item()
    zero = (cast == 0).sum().item()
    assert s.formats[0, 0] == sub_or_zero
    assert s.formats[0, 1] >= zero  # below 2^-24 counts [2^-25, 2^-24), which rounds up


def test_overflow_counts_values_that_certainly_round_to_inf():
    # first 1/8-octave edges past the max: fp16 65536, bf16 2^128, e4m3 480, e5m2 61440
    s = tensor_stats(torch.tensor([65504.0, -448.0, 464.0, 57344.0, 1.0]))
    assert s.formats[:, 2].tolist() == [0, 0, 2, 1]  # 448 and 464 fit e4m3; 57344 fits e5m2
    beyond = torch.tensor([1e5, -7e4, 500.0, 61440.0, 1e39, INF], dtype=torch.float64)
    s = tensor_stats(beyond)
    assert s.overflow_frac["fp16"] == pytest.approx(3 / 6)  # 1e5, 7e4, 1e39; inf is counted as inf
    assert s.formats[1:, 2].tolist() == [1, 5, 4]
    # the counted values do overflow an actual cast
    x = log_uniform(5000, 1e3, 1e6, seed=5).float()
    assert tensor_stats(x).formats[0, 2] <= torch.isinf(x.half()).sum().item()


def test_dead_units_per_channel_and_per_feature():
    x = torch.randn(8, 5, 4, 4).relu_()
    x[:, 2] = 0
    s = tensor_stats(x, unit_dim=1)
    assert s.dead_units == 1 and s.dead_frac == pytest.approx(1 / 5)
    assert s.unit_nonzero.tolist() == (x != 0).sum((0, 2, 3)).tolist()
    y = torch.randn(3, 7, 6)
    y[..., 4] = 0
    assert tensor_stats(y, unit_dim=-1).dead_units == 1
    assert tensor_stats(torch.randn(5)).unit_nonzero is None  # 1-D: no units


def test_saturation_band():
    y = torch.tanh(torch.randn(10000, generator=torch.Generator().manual_seed(4)) * 3)
    s = tensor_stats(y, saturation=(0.0, 1.0))
    assert s.saturated == (y.abs() > 0.99).sum().item()
    assert math.isnan(tensor_stats(y).saturation_frac)


def test_layouts_give_the_same_statistics():
    x = torch.randn(4, 6, 5, 5)
    ref = tensor_stats(x, unit_dim=1)
    for other in (x.to(memory_format=torch.channels_last), x.transpose(2, 3), x[:, :, ::1]):
        s = tensor_stats(other, unit_dim=1)
        assert s.hist.tolist() == ref.hist.tolist() and s.unit_nonzero.tolist() == ref.unit_nonzero.tolist()
        assert s.mean == pytest.approx(ref.mean, abs=1e-7) and (s.min, s.max) == (ref.min, ref.max)


def test_large_tensor_takes_the_subhistogram_path():
    x = torch.randn(300000, 2)  # above the sub-histogram threshold
    s = tensor_stats(x)
    assert s.hist.tolist() == oracle_hist(x.numpy()).tolist()


def test_empty_and_identity():
    e = tensor_stats(torch.empty(0, 3), unit_dim=1)
    assert e.count == 0 and math.isnan(e.mean) and e.unit_nonzero.tolist() == [0, 0, 0]
    s = tensor_stats(torch.randn(4, 3), unit_dim=1)
    assert e.merge(s) is s and s.merge(e) is s


def test_merge_rejects_different_units():
    with pytest.raises(ShapeError, match="units"):
        tensor_stats(torch.randn(4, 3), unit_dim=1).merge(tensor_stats(torch.randn(4, 2), unit_dim=1))


def test_non_floating_input_is_refused():
    with pytest.raises(TypeError, match="floating"):
        StatsAccumulator().add("k", torch.arange(3))


def test_accumulator_keeps_no_reference_to_the_tensor():
    acc = StatsAccumulator()
    x = torch.randn(100, 10)
    ref = weakref.ref(x)
    acc.add("x", x, unit_dim=1)
    del x
    gc.collect()
    assert ref() is None
    [(key, s)] = acc.to_host()
    assert key == "x" and s.count == 1000 and len(acc) == 0


def test_to_dict_is_strict_json():
    s = tensor_stats(torch.tensor([1.0, NAN, INF]))
    text = json.dumps(s.to_dict(), allow_nan=False)
    assert '"nan": 1' in text and '"max": "nan"' in text


# ---- merging: a.merge(b) equals the statistics of the concatenated data -------------------

values = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, width=64),
    st.sampled_from([0.0, -0.0, 1e-310, 2.0**-14, 65504.0, 1e5, 3e38, 1e150]),
)
specials = st.sampled_from([NAN, INF, -INF])


def _rows(draw, n, with_specials):
    vals = st.one_of(values, specials) if with_specials else values
    return draw(st.lists(st.lists(vals, min_size=3, max_size=3), min_size=n, max_size=n))


@st.composite
def split_data(draw, with_specials=False):
    n = draw(st.integers(2, 40))
    rows = _rows(draw, n, with_specials)
    return np.array(rows, dtype=np.float64), draw(st.integers(1, n - 1))


def assert_same(a: Stats, b: Stats, rtol: float = 1e-9) -> None:
    for name in ("count", "zeros", "nan", "posinf", "neginf"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.hist.tolist() == b.hist.tolist() and a.formats.tolist() == b.formats.tolist()
    assert a.unit_nonzero.tolist() == b.unit_nonzero.tolist()
    for name in ("min", "max", "mean"):
        x, y = getattr(a, name), getattr(b, name)
        assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=rtol, abs=1e-300), name
    # M2 sums squares of values up to 3e38 / 1e300: compare relative to the scale of the data
    scale = max(a.second_moment * a.count, 1e-300)
    assert (math.isnan(a.m2) and math.isnan(b.m2)) or abs(a.m2 - b.m2) <= rtol * scale


@settings(max_examples=150, deadline=None)
@given(split_data())
def test_merge_equals_concatenation(data):
    arr, k = data
    whole = tensor_stats(torch.from_numpy(arr), unit_dim=1)
    parts = tensor_stats(torch.from_numpy(arr[:k]), unit_dim=1).merge(tensor_stats(torch.from_numpy(arr[k:]), unit_dim=1))
    assert_same(parts, whole)


@settings(max_examples=60, deadline=None)
@given(split_data(with_specials=True))
def test_merge_with_nonfinite_values(data):
    arr, k = data
    whole = tensor_stats(torch.from_numpy(arr), unit_dim=1)
    parts = tensor_stats(torch.from_numpy(arr[:k]), unit_dim=1).merge(tensor_stats(torch.from_numpy(arr[k:]), unit_dim=1))
    assert_same(parts, whole)
    assert math.isnan(parts.mean) == math.isnan(whole.mean)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_counts_equal_cpu_counts(dtype):
    x = torch.cat([log_uniform(3000, 1e-44, 1e38, seed=6), torch.zeros(50),
                   torch.tensor([NAN, INF, -INF, -0.0, 1e5, 500.0], dtype=torch.float64)]).to(dtype).reshape(-1, 4)
    cpu, gpu = tensor_stats(x, unit_dim=1), tensor_stats(x.cuda(), unit_dim=1)
    for name in ("count", "zeros", "nan", "posinf", "neginf"):
        assert getattr(cpu, name) == getattr(gpu, name), name
    assert cpu.hist.tolist() == gpu.hist.tolist() and cpu.formats.tolist() == gpu.formats.tolist()
    assert cpu.unit_nonzero.tolist() == gpu.unit_nonzero.tolist()
    y = torch.randn(3000, 8, dtype=dtype)
    assert tensor_stats(y).std == pytest.approx(tensor_stats(y.cuda()).std, rel=1e-5)


def test_the_one_copy_transfer_of_other_devices_gives_the_same_numbers(monkeypatch):
    from initscope._decode import _transfer

    monkeypatch.setenv("INITSCOPE_NO_NATIVE", "1")  # the torch-ops path, whose tensors are transferred
    acc = StatsAccumulator()
    xs = [torch.randn(6, 5), torch.randn(3, 4, dtype=torch.float64), torch.tensor([0.0, float("nan"), 3.0])]
    acc.add("a", xs[0], unit_dim=1, saturation=(0.0, 1.0))
    acc.add("b", xs[1], unit_dim=0)
    acc.add("c", xs[2])
    group = [p for _, p in acc._queued()]
    local, copied = _transfer(group), _transfer(group, one_copy=True)
    np.testing.assert_array_equal(local[0], copied[0])  # scalars, NaN-padded alike
    for a, b in zip(local[1] + local[2], copied[1] + copied[2]):
        assert a.dtype == b.dtype == np.int64 and a.tolist() == b.tolist()


@pytest.mark.parametrize("seed", range(3))
def test_the_accelerator_variant_of_the_torch_path_decodes_to_the_same_stats(seed, monkeypatch):
    """The GPU layout (histc without zeros, float32 counts, one float64 copy) run on the CPU:
    CI has no GPU, so this is where its decoding is checked against the CPU path."""
    from initscope import _measure

    monkeypatch.setenv("INITSCOPE_NO_NATIVE", "1")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 6, 5, generator=g) * torch.tensor([1e-40, 1e-8, 1.0, 3e4, 7e4, 1e38]).view(1, 6, 1)
    x = x.float().relu()
    x[0, 0, :2] = torch.tensor([float("nan"), -float("inf")])
    ref = tensor_stats(x, unit_dim=1, saturation=(0.0, 1.0))
    monkeypatch.setattr(_measure, "_device_path", lambda t: True)
    got = tensor_stats(x, unit_dim=1, saturation=(0.0, 1.0))
    for name in ("count", "zeros", "nan", "posinf", "neginf", "saturated"):
        assert getattr(got, name) == getattr(ref, name), name
    assert got.hist.tolist() == ref.hist.tolist() and got.formats.tolist() == ref.formats.tolist()
    assert got.unit_nonzero.tolist() == ref.unit_nonzero.tolist()
    assert math.isnan(got.min) and math.isnan(ref.min)


def test_the_triton_pass_is_gpu_only_and_can_be_turned_off(monkeypatch):
    from types import SimpleNamespace

    from initscope import _triton_stats

    x = torch.randn(4, 3)
    assert not _triton_stats.enabled(x)  # a CPU tensor
    monkeypatch.setenv("INITSCOPE_TRITON", "1")
    assert not _triton_stats.enabled(x)  # asked for, but a CPU tensor
    assert tensor_stats(x).count == 12
    monkeypatch.setattr(_triton_stats, "_kernel", lambda: object())  # as if Triton imported
    cuda = SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.float32)  # what enabled() reads
    monkeypatch.delenv("INITSCOPE_TRITON")
    assert _triton_stats.enabled(cuda)  # on by default
    monkeypatch.setenv("INITSCOPE_TRITON", "0")
    assert not _triton_stats.enabled(cuda)
    # tiles (outer, units, inner): powers of two, at most _TILE values, whole units along the unit axis
    monkeypatch.setattr(_triton_stats, "_TILE", 2048)
    assert _triton_stats._tiles(256, 64, 1024) == (1, 2, 1024)  # conv activations, channels as units
    assert _triton_stats._tiles(4096, 768, 1) == (2, 1024, 1)  # features as units, varying fastest
    assert _triton_stats._tiles(1, 1, 5000) == (1, 1, 2048)  # no units


def test_the_triton_arena_hands_out_zeroed_regions_and_zeroes_them_again_on_reset():
    from initscope._triton_stats import Arena

    arena = Arena(torch.device("cpu"), chunk=16)
    (c1, a), (c2, b) = arena.take(10), arena.take(6)
    assert c1 is c2 and (a, b) == (0, 10)  # one chunk while it has room
    c3, d = arena.take(4)
    assert c3 is not c1 and d == 0 and len(arena.chunks) == 2  # a new chunk when it has none
    big, e = arena.take(40)
    assert e == 0 and big[0].numel() == 40  # a region larger than a chunk gets a chunk of its own
    c1[0][:16] = 7
    c1[1][0] = 2.5  # the float64 view shares the memory
    c1[3].append(("job",))
    arena.reset()
    assert all(c[2] == 0 and not c[3] for c in arena.chunks)
    assert c1[0].count_nonzero() == 0 and c1[1][0] == 0.0
    for _ in range(3):  # batch after batch the same regions, in the same chunks: memory stays bounded
        taken = [arena.take(n) for n in (10, 6, 4, 40)]
        assert [(c is k, at) for (c, at), k in zip(taken, (c1, c1, c3, big))] == [(True, 0), (True, 10), (True, 0),
                                                                                   (True, 0)]
        assert len(arena.chunks) == 3
        arena.reset()


def test_a_triton_pass_that_fails_to_compile_falls_back_to_torch_ops(monkeypatch):
    from initscope import _measure, _triton_stats

    def broken(*args, **kwargs):
        raise RuntimeError("CompilationError: histogram() got an unexpected keyword argument 'mask'")

    monkeypatch.setenv("INITSCOPE_NO_NATIVE", "1")
    x = torch.randn(6, 5)
    ref = tensor_stats(x, unit_dim=1)
    monkeypatch.setattr(_measure, "_device_path", lambda t: True)  # as on a GPU
    monkeypatch.setattr(_triton_stats, "_kernel", lambda: object())
    monkeypatch.setattr(_triton_stats, "_launch", broken)
    monkeypatch.setattr(_triton_stats, "failure", "")
    monkeypatch.setattr(_triton_stats, "enabled", lambda t: not _triton_stats.failure)
    got = tensor_stats(x, unit_dim=1)
    assert "unexpected keyword argument 'mask'" in _triton_stats.failure
    assert got.hist.tolist() == ref.hist.tolist() and got.unit_nonzero.tolist() == ref.unit_nonzero.tolist()
