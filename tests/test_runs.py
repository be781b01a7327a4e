"""Run files: every recorded step round-trips, appending survives a crash, damage is named."""
import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

import initscope
from initscope.errors import ArgumentError, MissingDependencyError, RunFileError
from initscope.recorder import STATS, Recorder

pytest.importorskip("pyarrow")
from initscope.runs import Run, RunWriter  # noqa: E402
from initscope.runs.parquet import parts  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(rec, net, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        net(torch.randn(16, 6, generator=g)).pow(2).mean().backward()
        opt.step()
        rec.step()


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 1))


def _same(a: Run, b: Run):
    assert a.step.tolist() == b.step.tolist() and a.layer.tolist() == b.layer.tolist()
    assert a.phase.tolist() == b.phase.tolist() and a.count.tolist() == b.count.tolist()
    np.testing.assert_array_equal(a.values, b.values)  # float64 stored as float64: bit for bit
    assert a.hist_start.tolist() == b.hist_start.tolist()
    assert all(np.array_equal(x, y) for x, y in zip(a.hist, b.hist, strict=True))


def test_writer_and_save_round_trip_every_recorded_step(tmp_path):
    net = _net()
    with Recorder(net, every=3, sinks=[RunWriter(tmp_path / "live.parquet", flush_every=2)]) as rec:
        _train(rec, net, 14)
    live = Run.load(tmp_path / "live.parquet")
    assert len(parts(tmp_path / "live.parquet")) == 3  # steps 0,3 | 6,9 | 12 (flushed at close)
    assert live.steps.tolist() == [0, 3, 6, 9, 12]
    _same(live, rec.to_run())
    rec.save(tmp_path / "saved.parquet")
    saved = Recorder.load(tmp_path / "saved.parquet")
    _same(saved, live)
    history = {(r.step, r.layer, r.phase, r.stat): r.value for r in rec.history}
    df = saved.to_pandas()
    assert len(df) == len({k[:3] for k in history})  # one row per (step, layer, phase)
    for row in df.itertuples():
        for stat in STATS:
            v = getattr(row, stat)
            assert (v != v and (row.step, row.layer, row.phase, stat) not in history) or \
                history[row.step, row.layer, row.phase, stat] == v
    assert set(df.phase) == {"forward", "backward", "param", "grad"}
    assert df.loc[df.layer == "1", "layer_type"].iloc[0] == "ReLU"
    for layer in ("0", "3"):
        for phase in ("forward", "backward"):
            s0, h0 = rec.histograms(layer, phase)
            s1, h1 = saved.histograms(layer, phase)
            assert s0.tolist() == s1.tolist() and np.array_equal(h0, h1)
    assert saved.summary["initscope"] == initscope.__version__ and saved.summary["torch"] == torch.__version__
    assert [d["name"] for d in saved.summary["layers"]] == ["0", "1", "2", "3", "4"]
    assert saved.summary["params"][0] == {"name": "0.weight", "shape": [12, 6], "dtype": "float32"}


def test_to_pandas_with_histograms_and_documented_columns(tmp_path):
    net = _net()
    with Recorder(net, every=2) as rec:
        _train(rec, net, 3)
    df = rec.to_run().to_pandas(hist=True)
    assert list(df.columns) == ["step", "layer", "phase", "layer_type", "count", *STATS, "hist"]
    fwd = df[(df.layer == "0") & (df.phase == "forward")]
    assert np.array_equal(np.stack(fwd["hist"].to_list()), rec.histograms("0")[1])
    assert df.loc[df.phase == "param", "hist"].isna().all()
    assert fwd["count"].tolist() == [16 * 12, 16 * 12]  # steps 0 and 2: a batch of 16, 12 features


def test_a_crash_loses_at_most_the_unfinished_flush(tmp_path):
    net, path = _net(), tmp_path / "run.parquet"
    with pytest.raises(RuntimeError, match="boom"):
        with Recorder(net, every=1, sinks=[RunWriter(path, flush_every=2)]) as rec:
            _train(rec, net, 5)
            raise RuntimeError("boom")
    (path / "part-000009.parquet.tmp").write_bytes(b"PAR1 half written")  # a flush cut off mid-write
    assert Run.load(path).steps.tolist() == [0, 1, 2, 3, 4]


def _damaged(tmp_path):
    net, path = _net(), tmp_path / "run.parquet"
    with Recorder(net, every=1, sinks=[RunWriter(path, flush_every=2)]) as rec:
        _train(rec, net, 6)
    return path, parts(path)


def test_a_truncated_part_is_named_with_the_last_good_step(tmp_path):
    path, files = _damaged(tmp_path)
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(RunFileError, match=r"part-000001\.parquet.*truncated or corrupt.*last good step is 1") as e:
        Run.load(path)
    assert e.value.path == files[1] and e.value.last_good_step == 1


def test_corrupt_bytes_and_a_foreign_parquet_file_are_refused(tmp_path):
    path, files = _damaged(tmp_path)
    data = bytearray(files[0].read_bytes())
    data[8:400] = bytes(392)
    files[0].write_bytes(bytes(data))
    with pytest.raises(RunFileError, match="no step was read before it") as e:
        Run.load(path)
    assert e.value.last_good_step is None
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(RunFileError, match="other.parquet"):
        Run.load(tmp_path / "other.parquet")


def test_parts_of_two_runs_in_one_directory_are_refused(tmp_path):
    path, files = _damaged(tmp_path)
    files[0].rename(path / "part-000009.parquet")  # steps 0,1 after steps 4,5
    with pytest.raises(RunFileError, match="starts at step 0, not after the previous part's last step 5"):
        Run.load(path)


def test_paths_that_hold_no_run_or_already_hold_one(tmp_path):
    with pytest.raises(RunFileError, match="does not exist"):
        Run.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFileError, match="holds no part"):
        Run.load(tmp_path / "empty")
    path, _ = _damaged(tmp_path)
    with pytest.raises(ArgumentError, match="already holds a run"):
        RunWriter(path)
    with pytest.raises(ArgumentError, match="already exists"):
        Run.load(path).save(path)
    with pytest.raises(ArgumentError, match="flush_every"):
        RunWriter(tmp_path / "x", flush_every=0)


def test_a_writer_thread_error_reaches_the_training_loop(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    net = _net()
    with pytest.raises((FileExistsError, NotADirectoryError, OSError)):
        with Recorder(net, every=1, sinks=[RunWriter(blocker / "run.parquet", flush_every=1)]) as rec:
            _train(rec, net, 3)


def test_summary_is_json_in_every_part(tmp_path):
    import pyarrow.parquet as pq

    path, files = _damaged(tmp_path)
    meta = json.loads(pq.read_schema(files[-1]).metadata[b"initscope.run"])
    assert meta["format"] == 1 and meta["every"] == 1 and meta["stats"] == list(STATS)


def test_without_pyarrow_or_pandas_the_error_says_how_to_install(tmp_path, monkeypatch):
    net = _net()
    with Recorder(net, every=1) as rec:
        _train(rec, net, 1)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(MissingDependencyError, match=r"'pyarrow'.*pip install initscope\[runs\]"):
        rec.save(tmp_path / "r.parquet")
    with pytest.raises(MissingDependencyError, match=r"'pandas'.*pip install initscope\[runs\]"):
        rec.to_pandas()
    assert isinstance(rec.to_run(), Run)  # the Run itself needs neither


def test_the_report_command(tmp_path):
    import io

    from initscope.cli import main

    path, _ = _damaged(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    assert main(["report", str(path), "-o", str(tmp_path / "r.html")], out=out, err=err) == 0
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert out.getvalue().startswith("Run(6 recorded steps, steps 0..5, 5 layers,") and "report written to" in out.getvalue()
    assert main(["report", str(tmp_path / "nope"), "-o", str(tmp_path / "r.html")], out=out, err=err) == 2
    assert err.getvalue() == (f"initscope: error: run file '{tmp_path / 'nope'}' does not exist; write one with "
                              "Recorder.save(path) or a RunWriter sink\n")


def test_a_sink_that_fails_to_close_does_not_keep_the_others_open(tmp_path):
    class Failing:
        def open(self, summary):
            pass

        def write(self, step):
            pass

        def close(self):
            raise OSError("disk full")

    net, path = _net(), tmp_path / "run.parquet"
    writer = RunWriter(path, flush_every=100)  # nothing on disk until close flushes it
    with pytest.raises(OSError, match="disk full"):
        with Recorder(net, every=1, sinks=[Failing(), writer]) as rec:
            _train(rec, net, 3)
    assert Run.load(path).step.tolist()[-1] == 2  # the writer after the failing sink still closed
