"""Cost of the run-file and TensorBoard sinks on recorded training steps, as a ratio.

Both variants record every step with a Recorder; one also feeds a ``RunWriter`` (a Parquet part
every 50 recorded steps) and a ``TensorBoardSink`` (scalars and histograms). Writing happens in
the sinks' background threads, so what this measures is the wall time of consecutive recorded
steps, with the writer threads running in between: blocks of ``--steps`` steps, variants
alternating block by block, the median of the per-step times of each variant's blocks. The
final flush at the end of a block (``close``) is timed apart: it happens once per run.

Because a shared machine's wall times are noisy, two costs are also counted directly: the
time the training thread spends inside the sinks' ``write`` calls (the only part on the
step's critical path), and the CPU time the writer threads use per recorded step
(``time.thread_time`` around each background job), each as a fraction of the recorded step.

Target: with sinks <= 1.05x the recorded step without.

Usage:
    python benchmarks/sink_overhead.py [--blocks 5] [--steps 20] [--models cnn,transformer]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from probe_overhead import MODELS, _step  # noqa: E402

from initscope.recorder import Recorder  # noqa: E402
from initscope.runs import RunWriter, TensorBoardSink, sinks as sinks_module  # noqa: E402

_COST = {"write": 0.0, "thread": 0.0}


def _instrument() -> None:
    """Count the time in ``write`` (training thread) and in background jobs (their CPU time)."""
    for cls in (RunWriter, TensorBoardSink):
        original = cls.write

        def write(self, step, _original=original):
            t = time.perf_counter()
            _original(self, step)
            _COST["write"] += time.perf_counter() - t
        cls.write = write
    submit = sinks_module.Background.submit

    def counted(self, job):
        def run():
            t = time.thread_time()
            job()
            _COST["thread"] += time.thread_time() - t
        submit(self, run)
    sinks_module.Background.submit = counted


def _block(model, opt, x, y, steps: int, sinks: list) -> tuple[float, float]:
    """(seconds per recorded step, seconds of the final close) for one block."""
    rec = Recorder(model, every=1, sinks=sinks).__enter__()
    start = time.perf_counter()
    for _ in range(steps):
        _step(model, opt, x, y)
        rec.step()
    per_step = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    rec.__exit__(None, None, None)
    return per_step, time.perf_counter() - start


def bench(name: str, blocks: int, steps: int) -> dict:
    title, factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    x = torch.randn(shape)
    y = torch.randint(0, 10, shape[:2] if name == "transformer" else (shape[0],))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    out: dict[str, list[float]] = {"record": [], "record + sinks": [], "close": [], "write": [], "thread": []}
    with tempfile.TemporaryDirectory() as tmp:
        for b in range(-1, blocks):  # block -1: warm-up of both variants, not counted
            for variant in (("record", "record + sinks") if b % 2 else ("record + sinks", "record")):
                sinks = [RunWriter(Path(tmp) / f"{name}-{b}-run.parquet"), TensorBoardSink(Path(tmp) / f"{name}-{b}-tb")] \
                    if variant != "record" else []
                _COST.update(write=0.0, thread=0.0)
                per_step, close = _block(model, opt, x, y, steps, sinks)
                if b >= 0 and sinks:
                    out["write"].append(_COST["write"] / steps)
                    out["thread"].append(_COST["thread"] / steps)
                if b >= 0:
                    out[variant].append(per_step)
                    if sinks:
                        out["close"].append(close)
    med = {k: statistics.median(v) for k, v in out.items()}
    med["title"] = title
    return med


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--models", default="cnn,transformer")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", DeprecationWarning)  # third-party imports (tensorboard is used only without google-crc32c)
    _instrument()
    import pyarrow.parquet  # noqa: F401 - the first part would otherwise pay this one-time import
    import google_crc32c  # noqa: F401 - the TensorBoard sink's checksum, imported when its file opens
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads; median over {args.blocks} blocks of "
          f"{args.steps} recorded steps per variant, alternating\n")
    print("| model | recorded step | with run file + TensorBoard sinks | wall ratio | in write() (critical path) "
          "| writer threads' CPU | final close |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        m = bench(name, args.blocks, args.steps)
        print(f"| {m['title']} | {m['record'] * 1e3:.1f} ms | {m['record + sinks'] * 1e3:.1f} ms | "
              f"**{m['record + sinks'] / m['record']:.3f}x** | {m['write'] * 1e3:.3f} ms "
              f"({m['write'] / m['record']:.2%}) | {m['thread'] * 1e3:.1f} ms ({m['thread'] / m['record']:.1%}) | "
              f"{m['close'] * 1e3:.0f} ms |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
