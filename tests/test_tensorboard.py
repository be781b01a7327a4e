"""The TensorBoard sink, read back with tensorboard's own EventAccumulator."""
import numpy as np
import pytest
import torch
from torch import nn

from initscope.recorder import Recorder

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from initscope.runs import TensorBoardSink  # noqa: E402
from initscope.runs.tensorboard import PHASES, SCALARS, hist_edges  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _record(sink, steps=7, every=3):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 10), nn.ReLU(), nn.Linear(10, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with Recorder(net, every=every, sinks=[sink]) as rec:
        for _ in range(steps):
            opt.zero_grad()
            net(torch.randn(20, 5)).pow(2).mean().backward()
            opt.step()
            rec.step()
    return rec


def _events(log_dir):
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_scalars_equal_the_recorders_values(tmp_path):
    rec = _record(TensorBoardSink(tmp_path))
    acc = _events(tmp_path)
    expected = {(f"{r.phase}_{r.stat}/{r.layer}", r.step): r.value for r in rec.history
                if r.stat in SCALARS and r.phase in PHASES}
    got = {(tag, e.step): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == np.float32(value)  # TensorBoard stores float32: the same number, rounded once
    assert {"forward_std/0", "backward_fp16_underflow/1", "grad_mean/0.weight", "forward_dead_frac/1"} <= \
        set(acc.Tags()["scalars"])
    assert sorted({s for _, s in got}) == [0, 3, 6]


def test_histograms_hold_the_recorders_counts(tmp_path):
    rec = _record(TensorBoardSink(tmp_path))
    acc = _events(tmp_path)
    assert set(acc.Tags()["histograms"]) == {f"hist_{p}/{n}" for n in "012" for p in ("forward", "backward")}
    edges = hist_edges()
    for layer in "02":
        steps, counts = rec.histograms(layer, "forward")
        events = acc.Histograms(f"hist_forward/{layer}")
        assert [e.step for e in events] == steps.tolist()
        for e, h in zip(events, counts):
            v = e.histogram_value
            octaves = h[1:257]
            assert v.num == octaves.sum() == h.sum() - h[0] - h[257]  # zeros and non-finite are left out
            got = dict(zip(v.bucket_limit, v.bucket))
            want = {float(edges[i]): float(c) for i, c in enumerate(octaves) if c}
            assert {k: c for k, c in got.items() if c} == want


def test_a_writer_passed_in_gives_its_directory_and_stays_usable(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    rec = _record(TensorBoardSink(writer, histograms=False), steps=2, every=1)
    writer.add_scalar("mine", 1.5, 0)  # still usable after the Recorder closed the sink
    writer.close()
    acc = _events(tmp_path)
    assert "mine" in acc.Tags()["scalars"] and acc.Tags()["histograms"] == []
    assert [e.step for e in acc.Scalars("forward_std/0")] == [0, 1]
    assert acc.Scalars("forward_std/0")[1].value == np.float32(
        next(r.value for r in rec.history if (r.step, r.layer, r.phase, r.stat) == (1, "0", "forward", "std")))


def test_the_record_checksum_matches_tensorboards_own():
    """Our framing uses the C CRC-32C; tensorboard's pure-Python one is the oracle."""
    google_crc32c = pytest.importorskip("google_crc32c")
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as oracle

    from initscope.runs._tfrecord import masked_crc32c
    rng = np.random.default_rng(0)
    for data in (b"", b"\x00" * 8, b"brain.Event:2", rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()):
        assert masked_crc32c(google_crc32c, data) == oracle(data)


def test_without_the_c_checksum_tensorboards_writer_is_used(tmp_path, monkeypatch):
    """google-crc32c missing: the sink falls back to tensorboard's EventFileWriter, same values."""
    import sys
    monkeypatch.setitem(sys.modules, "google_crc32c", None)  # import raises ImportError
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    rec = _record(TensorBoardSink(slow))
    monkeypatch.undo()
    _record(TensorBoardSink(fast))
    a, b = _events(slow), _events(fast)
    tags = a.Tags()["scalars"]
    assert tags and tags == b.Tags()["scalars"]
    assert all([e.value for e in a.Scalars(t)] == [e.value for e in b.Scalars(t)] for t in tags)
    assert len(rec.steps) == 3
