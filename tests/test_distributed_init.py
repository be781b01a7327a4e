"""Sharded initialize on gloo groups: gathered weights equal the single-process values bitwise."""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # spawned ranks import the workers by module name
from dist_helpers import run  # noqa: E402
from dist_workers import _fsdp_worker, _tp_worker  # noqa: E402

from initscope import _boxmuller, _philox  # noqa: E402


@pytest.mark.parametrize("world", [1, 2, 4])
def test_fsdp2_gathered_weights_equal_one_process(world):
    for result in run(_fsdp_worker, world, timeout=150):
        for case, (diff, notes) in result.items():
            assert diff == [], f"{case}: {diff} differ from the single-process values"
        assert any("orthogonal needs the whole matrix" in n for n in result[("orthogonal", None)][1])


def test_two_dimensional_mesh_shards_equal_one_process():
    assert run(_tp_worker, 4, timeout=150) == [[]] * 4


def test_philox_known_answers():
    """Random123's published known-answer vectors of Philox4x32-10 (its tests/kat_vectors)."""
    kat = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
           ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
           ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, expected in kat:
        words = _philox.philox4x32([torch.tensor([c], dtype=torch.int64) for c in counter], key)
        assert tuple(int(w) for w in words) == expected


@pytest.mark.parametrize("dist, var, lo, hi", [("normal", 1.0, -8, 8), ("uniform", 1 / 3, -1, 1),
                                                 ("truncated_normal", 0.8796256610342398 ** 2, -2, 2)])
def test_philox_distributions(dist, var, lo, hi):
    """2^20 values: the sample mean's std is sqrt(var / n) < 1e-3, so 5e-3 is 5 sigma; the sample
    variance's relative std is sqrt(2 / n) ~ 1.4e-3 (normal; less for the others), so 1e-2 is 7 sigma."""
    x = _philox.fill_(torch.empty(1024, 1024, dtype=torch.float64), _philox.key_of(0, "w"), dist, 1.0)
    assert abs(x.mean().item()) < 5e-3
    assert abs(x.var().item() / var - 1) < 1e-2
    assert lo <= x.min().item() and x.max().item() <= hi


def test_shard_of_philox_equals_slice_of_whole():
    """Filling a block at an offset generates exactly the whole tensor's values there."""
    key = _philox.key_of(5, "layer.weight")
    whole = _philox.fill_(torch.empty(9, 7, 3), key, "normal", 0.5)
    part = _philox.fill_(torch.empty(4, 3, 3), key, "normal", 0.5, offsets=(2, 4, 0), global_shape=(9, 7, 3))
    assert torch.equal(part, whole[2:6, 4:7])


def _both_paths(monkeypatch, make, *args):
    """fill_ by the C++ kernel and by torch ops alone (INITSCOPE_NO_NATIVE=1), on fresh targets."""
    native = _philox.fill_(make(), *args)
    with monkeypatch.context() as m:
        m.setenv("INITSCOPE_NO_NATIVE", "1")
        ops = _philox.fill_(make(), *args)
    return native, ops


@pytest.mark.parametrize("dist", ["normal", "uniform", "truncated_normal"])
def test_philox_kernel_equals_torch_ops(monkeypatch, dist):
    """The fused C++ kernel writes the same bits as the torch-ops path: whole tensors, shards starting
    mid-counter (i mod 4 != 0), indices past 2^32, float32/float64 in place, bfloat16 and a
    non-contiguous target through float64."""
    if _philox._kernel() is None:
        pytest.skip("no C++ build of _philox.cpp here (no compiler or ninja)")
    key = _philox.key_of(3, "w")
    cases = [(lambda dt=dt: torch.empty(37, 91, dtype=dt), ()) for dt in (torch.float32, torch.float64, torch.bfloat16)]
    cases += [(lambda: torch.empty(4, 3, 5, dtype=torch.float64), ((2, 4, 1), (9, 7, 6))),   # Shard(1) and (2)
              (lambda: torch.zeros(5, 7, dtype=torch.float32), ((3, 0), (11, 7), (1, 4))),   # rows of a shard
              (lambda: torch.empty(1 << 12, dtype=torch.float64), (((1 << 40) + 3,), ((1 << 41),))),
              (lambda: torch.empty(91, 37).t(), ())]
    ext = _philox._kernel()
    for avx512 in (True, False):  # Philox's AVX-512 loop (where the CPU has it) and the generic one
        old = ext.set_avx512(avx512)
        try:
            for make, extra in cases:
                native, ops = _both_paths(monkeypatch, make, key, dist, 0.7, *extra)
                assert native.dtype == ops.dtype and torch.equal(native, ops), (dist, avx512, native.shape, extra)
                assert native.abs().sum() > 0
        finally:
            ext.set_avx512(old)


def test_philox_kernel_values_do_not_depend_on_threads():
    """at::parallel_for splits the elements into chunks; element i's value depends on i alone."""
    if _philox._kernel() is None:
        pytest.skip("no C++ build of _philox.cpp here (no compiler or ninja)")
    key, threads = _philox.key_of(1, "w"), torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _philox.fill_(torch.empty(300, 1000), key, "normal", 1.0)
        torch.set_num_threads(4)
        four = _philox.fill_(torch.empty(300, 1000), key, "normal", 1.0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, four)


def test_philox_transcendentals_against_libm():
    """The series / Newton log, sin, cos and sqrt (shared by both paths) against torch's math library.

    Truncation of the series is below 1e-16 (see _philox.cpp); what is left is rounding: a dozen
    float64 ops of relative error 2^-53 = 1.1e-16 each, hence the 2e-15 bounds; sqrt within 1 ulp
    (relative 2.2e-16) after its correction step."""
    w = (torch.arange(1 << 18, dtype=torch.int64) * 16411 + 5) % (1 << 32)
    w = torch.cat([w, torch.tensor([0, 1, (1 << 31) - 1, 1 << 31, (1 << 32) - 1])])
    u = (w.to(torch.float64) + 0.5) * 2.0 ** -32
    ref = torch.sqrt(-2.0 * torch.log(u))
    assert ((_boxmuller.radius(w) - ref) / ref).abs().max() < 2e-15
    cos, sin = _boxmuller.turn(w)
    assert (cos - torch.cos(2 * math.pi * u)).abs().max() < 2e-15
    assert (sin - torch.sin(2 * math.pi * u)).abs().max() < 2e-15
    x = torch.logspace(-12, 2, 100_000, dtype=torch.float64)
    assert ((_boxmuller.root(x) - x.sqrt()) / x.sqrt()).abs().max() <= 2.3e-16


def test_rng_option_and_default():
    from torch import nn

    from initscope.errors import UnknownOptionError
    from initscope.initialize import initialize

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 2))
    x = torch.randn(4, 6)
    with pytest.raises(UnknownOptionError, match="rng"):
        initialize(net(), rng="mersenne", example_input=x)
    a, b, c = net(), net(), net()
    initialize(a, example_input=x, seed=1)                  # default: torch.Generator (no DTensor)
    initialize(b, example_input=x, seed=1, rng="torch")
    plan = initialize(c, example_input=x, seed=1, rng="philox")
    assert torch.equal(a[0].weight, b[0].weight) and not torch.equal(a[0].weight, c[0].weight)
    assert any("Philox4x32-10" in n for n in plan.notes)
    # a pure function of (seed, name, index): a wider neighbour leaves `0.weight` unchanged
    d = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 5))
    initialize(d, example_input=x, seed=1, rng="philox")
    assert torch.equal(c[0].weight, d[0].weight)


def test_philox_torch_path_by_runs_equals_values_per_index(monkeypatch):
    """The torch-ops fill (whole quads of counters per run, then sliced) gives values() of each
    element's global index, for a shard that starts mid-counter in two dimensions."""
    monkeypatch.setenv("INITSCOPE_NO_NATIVE", "1")
    key = _philox.key_of(9, "w")
    for dist in ("normal", "uniform", "truncated_normal"):
        part = _philox.fill_(torch.empty(3, 5, 6, dtype=torch.float64), key, dist, 1.0, (1, 2, 1), (6, 9, 7))
        index = _philox._index((3, 5, 6), (1, 2, 1), (6, 9, 7), (0, 3), torch.device("cpu"))
        assert torch.equal(part, _philox.values(index, key, dist)), dist


def test_philox_kernel_says_when_it_compiles(monkeypatch, capfd):
    """A load slower than NOTICE_AFTER_S is a compile: one line on stderr; a cached load is quiet."""
    if _philox._kernel() is None:
        pytest.skip("no C++ build of _philox.cpp here (no compiler or ninja)")
    import time

    from torch.utils import cpp_extension

    from initscope import _native
    real = cpp_extension.load
    monkeypatch.setattr(cpp_extension, "load", lambda *a, **k: (time.sleep(0.3), real(*a, **k))[1])  # a slow build
    monkeypatch.setattr(_native, "NOTICE_AFTER_S", 0.05)
    assert _philox._build() is not None
    assert "compiling the Philox kernel" in capfd.readouterr().err
    monkeypatch.setattr(cpp_extension, "load", real)
    monkeypatch.setattr(_native, "NOTICE_AFTER_S", 600.0)
    assert _philox._build() is not None
    assert capfd.readouterr().err == ""
