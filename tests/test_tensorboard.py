"""The TensorBoard sink, read back with tensorboard's own EventAccumulator."""
import struct

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
    for layer, phase in [(n, p) for n in "012" for p in ("forward", "backward")]:
        steps, counts = rec.histograms(layer, phase)
        events = acc.Histograms(f"hist_{phase}/{layer}")
        assert [e.step for e in events] == steps.tolist() == [0, 3, 6]
        for e, h in zip(events, counts):
            v = e.histogram_value
            octaves = h[1:257]
            assert v.num == octaves.sum() == h.sum() - h[0] - h[257]  # zeros and non-finite are left out
            assert list(v.bucket) == octaves[np.flatnonzero(octaves)[0]:np.flatnonzero(octaves)[-1] + 1].tolist()
            got = dict(zip(v.bucket_limit, v.bucket))
            want = {float(edges[i]): float(c) for i, c in enumerate(octaves) if c}
            assert {k: c for k, c in got.items() if c} == want
            assert v.min == (-150 if min(want) == -126 else min(want) - 1) and v.max == max(want)  # in log2|x|


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


def test_without_the_c_checksum_tensorboards_record_writer_frames_the_same_events(tmp_path, monkeypatch):
    """google-crc32c missing: tensorboard's RecordWriter (pure-Python checksum) frames the records."""
    import sys
    monkeypatch.setitem(sys.modules, "google_crc32c", None)  # import raises ImportError
    slow = tmp_path / "slow"
    rec = _record(TensorBoardSink(slow))
    monkeypatch.undo()
    assert len(rec.steps) == 3
    _check_bytes(slow, rec.steps)
    assert _events(slow).Tags()["scalars"]

# --- The event files hold, byte for byte, what tensorboard's protobuf classes serialise ---------

def _oracle_histogram(pb, h):
    """The HistogramProto of one octave histogram, built from its definition with protobuf."""
    counts = np.asarray(h[1:257], np.float64)
    nonzero = np.flatnonzero(counts)
    if not len(nonzero):
        return None
    lo, hi = nonzero[0], nonzero[-1] + 1
    edges = hist_edges()  # bucket [e - 1, e) of log2|x|, its centre e - 0.5; the subnormal one [-150, -126)
    centres = edges - 0.5
    centres[0] = -138.0
    return pb.HistogramProto(min=-150.0 if lo == 0 else edges[lo] - 1, max=edges[hi - 1], num=counts.sum(),
                             sum=counts @ centres, sum_squares=counts @ centres**2,
                             bucket_limit=edges[lo:hi].tolist(), bucket=counts[lo:hi].tolist())


def _oracle_event(st, wall_time, histograms=True):
    """One recorded step as an Event built with tensorboard's protobuf classes, serialised."""
    from tensorboard.compat.proto import event_pb2, summary_pb2 as pb

    from initscope.runs.run import STAT_COLUMNS
    cols = [STAT_COLUMNS.index(s) for s in SCALARS]
    values = [pb.Summary.Value(tag=f"{phase}_{stat}/{layer}", simple_value=v)
              for (layer, phase), row in zip(st.keys, st.values[:, cols].tolist()) if phase in PHASES
              for stat, v in zip(SCALARS, row) if v == v]
    if histograms:
        values += [pb.Summary.Value(tag=f"hist_{phase}/{layer}", histo=histo)
                   for (layer, phase), h in st.hists.items() if (histo := _oracle_histogram(pb, h)) is not None]
    return event_pb2.Event(wall_time=wall_time, step=st.step, summary=pb.Summary(value=values)).SerializeToString()


def _records(log_dir):
    """The data of every record of the sink's event file, its framing checked on the way."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as oracle
    (path,) = list(log_dir.glob("*.initscope"))
    raw, out, at = path.read_bytes(), [], 0
    while at < len(raw):
        (n,) = struct.unpack_from("<Q", raw, at)
        assert struct.unpack_from("<I", raw, at + 8)[0] == oracle(raw[at:at + 8])
        data = raw[at + 12:at + 12 + n]
        assert struct.unpack_from("<I", raw, at + 12 + n)[0] == oracle(data)
        out.append(data)
        at += 16 + n
    return out


def _wall_time(data):
    from tensorboard.compat.proto import event_pb2
    return event_pb2.Event.FromString(data).wall_time


def _check_bytes(log_dir, steps, histograms=True):
    from tensorboard.compat.proto import event_pb2
    first, *events = _records(log_dir)
    assert first == event_pb2.Event(wall_time=_wall_time(first), file_version="brain.Event:2").SerializeToString()
    assert len(events) == len(steps)
    for data, st in zip(events, steps):
        assert data == _oracle_event(st, _wall_time(data), histograms)


@pytest.mark.parametrize("histograms", [True, False])
def test_the_events_are_protobufs_bytes_for_a_recorded_run(tmp_path, histograms):
    rec = _record(TensorBoardSink(tmp_path, histograms=histograms), steps=10, every=1)
    _check_bytes(tmp_path, rec.steps, histograms)


def _step(step, keys, values, hists):
    from initscope.recorder import RecordedStep
    from initscope.runs.run import STAT_COLUMNS
    table = np.full((len(keys), len(STAT_COLUMNS)), np.nan)
    for i, row in enumerate(values):
        table[i, [STAT_COLUMNS.index(s) for s in SCALARS]] = row
    return RecordedStep(step, keys, table, int(np.count_nonzero(table == table)), hists)


def _hist(**bins):
    h = np.zeros(258, np.int64)
    for k, v in bins.items():
        h[int(k[1:])] = v
    return h


def test_the_events_are_protobufs_bytes_at_the_edges(tmp_path):
    """Values protobuf treats specially: zeros (-0.0 has bits, so it is kept in the histogram's
    doubles; a float32 0 is written, simple_value being in a oneof), overflow to inf, underflow
    to 0, float32 rounding, NaN left out, step 0 left out, steps beyond 2^32, long and
    non-ASCII tags (two-byte lengths), layer sets and NaN patterns that change from step to
    step (more of them than the templates kept), histograms at both ends and empty ones."""
    big = 3.4028235677973366e38  # float32's largest finite value rounds either way around it
    edge = [0.0, -0.0, np.inf, -np.inf, 1e300, -1e300, 1e-300, big, np.nextafter(big, np.inf) * (1 + 2**-25),
            1 / 3, 2**-149, 2**-150, 1.5 * 2**-149, np.nan, 7.25e-46]
    long_name = "ξ" * 70 + ".weight"  # 147 bytes in UTF-8
    hists = {("a", "forward"): _hist(b1=3, b256=2), ("a", "backward"): _hist(b0=5, b257=1),
             (long_name, "forward"): _hist(b128=1, b129=4), ("b", "backward"): _hist(b127=2),
             ("b", "forward"): _hist(b200=1), ("c", "forward"): _hist(b129=2 ** 40, b130=7),
             ("d", "forward"): _hist(b127=3, b128=3)}  # min 0, max 0, sum 0
    rng = np.random.default_rng(1)
    steps = []
    for n in range(40):
        keys = [("a", "forward"), ("a", "backward"), (long_name, "forward"), ("a.w", "grad"), ("a.w", "param")]
        keys = keys[:3 + n % 3]  # the layer set changes
        values = rng.choice(edge, (len(keys), len(SCALARS)))
        if n % 2:
            values[rng.random(values.shape) < 0.3] = np.nan  # NaN patterns: more than the templates kept
        steps.append(_step([0, 1, 2**33 + n, 127, 128][n % 5] + 1000 * (n // 5), keys, values,
                           {k: h for k, h in hists.items() if n % 4 or k[0] != "c"}))
    sink = TensorBoardSink(tmp_path)
    for st in steps:
        sink.write(st)
    sink.close()
    _check_bytes(tmp_path, steps)
