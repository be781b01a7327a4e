"""GPU: what one tensor's statistics cost on the device, against one read of that tensor.

Per tensor shape, side by side in one run:
  read once     torch.aminmax(x): one pass over the tensor, the floor of any statistics pass
  torch ops     the GPU path of StatsAccumulator.add without Triton (about ten passes)
  triton        the fused Triton pass (the default where Triton imports), for a few tile sizes,
                warp counts and programs per multiprocessor
"device" is GPU time per tensor (CUDA events around a run of adds); "host" is the Python time
per add (what a hook costs the CPU); "merge per tensor" is the batched merge that
Recorder.step() launches, divided by the tensors merged.

With --profile, then a torch.profiler table of a plain and a recorded ResNet training step
(probe_overhead.py's ResNet, batch 256): GPU time by kernel, to see where the extra goes.

Usage (needs a CUDA device):
    python benchmarks/gpu_stats_kernel.py [--repeats 30] [--profile] [--best FILE]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from initscope import _triton_stats  # noqa: E402
from initscope.stats import StatsAccumulator  # noqa: E402

SHAPES = {
    "ResNet activation 256x64x32x32": ((256, 64, 32, 32), 1),
    "conv weight 64x64x3x3": ((64, 64, 3, 3), 0),
    "MLP activation 256x1024": ((256, 1024), 1),
}


def _env(triton: bool) -> None:
    os.environ["INITSCOPE_TRITON"] = "1" if triton else "0"


def _time(fn, n: int, dev: torch.device, between) -> tuple[float, float]:
    """(device seconds, host seconds) per call of ``fn``, medians over 5 runs of ``n`` calls;
    ``between()`` runs untimed after each run."""
    fn()
    torch.cuda.synchronize(dev)
    between()
    d, h = [], []
    for _ in range(5):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(dev)
        e0.record()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        h.append((time.perf_counter() - t0) / n)
        e1.record()
        torch.cuda.synchronize(dev)
        d.append(e0.elapsed_time(e1) / 1e3 / n)
        between()
    return statistics.median(d), statistics.median(h)


CONFIG = ("_TILE", "_WARPS", "_PROGRAMS")


def _config(cfg: tuple[int, int, int] | None) -> tuple[int, int, int]:
    """Set the Triton pass's (tile, warps, programs per multiprocessor); returns the ones before."""
    before = tuple(getattr(_triton_stats, k) for k in CONFIG)
    for k, v in zip(CONFIG, cfg or before):
        setattr(_triton_stats, k, v)
    return before


def kernels(repeats: int) -> tuple[int, int, int]:
    """Print the table; returns the fastest Triton configuration on the ResNet activation."""
    dev = torch.device("cuda")
    print("| tensor | path | device per tensor | x read once | host per add | merge per tensor |")
    print("|---|---|---|---|---|---|")
    best: dict[tuple, float] = {}
    for title, (shape, unit_dim) in SHAPES.items():
        x = torch.randn(shape, device=dev).relu_()
        floor, _ = _time(lambda: torch.aminmax(x), repeats, dev, lambda: None)
        print(f"| {title} | read once (aminmax) | {floor * 1e6:.1f} us | 1.00 | | |", flush=True)
        default = _config(None)
        variants = [("torch ops", False, None), ("triton", True, default)]
        if shape == (256, 64, 32, 32):  # the sweep around the default (1024, 8, 4), on the tensor that matters most
            variants += [(f"triton, tile {t}, {w} warps, {p} programs/SM", True, (t, w, p))
                         for t, w, p in ((1024, 4, 4), (2048, 8, 4), (2048, 4, 4), (4096, 4, 4), (4096, 8, 4),
                                         (2048, 8, 2), (2048, 8, 8), (2048, 8, 16), (4096, 8, 8))]
        for name, triton, cfg in variants:
            _env(triton)
            _config(cfg)
            acc = StatsAccumulator()

            def add() -> None:
                acc.add("t", x, unit_dim=unit_dim, saturation=(0.0, 1.0))
            try:
                d, h = _time(add, repeats, dev, acc.clear)
                merge = ""
                if triton and not _triton_stats.failure:
                    for _ in range(repeats):
                        add()
                    (arena,) = acc._arenas.values()
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    e0.record()
                    arena.finish()
                    e1.record()
                    torch.cuda.synchronize()
                    merge = f"{e0.elapsed_time(e1) * 1e3 / repeats:.1f} us"
                    acc.clear()
                    if shape == (256, 64, 32, 32):
                        best[cfg] = d
                failed = f" (FAILED: {_triton_stats.failure})" if triton and _triton_stats.failure else ""
                print(f"| {title} | {name}{failed} | {d * 1e6:.1f} us | {d / floor:.2f} | {h * 1e6:.1f} us | {merge} |",
                      flush=True)
            except Exception:  # noqa: BLE001  report and go on: one device run has to tell everything
                print(f"| {title} | {name} | ERROR | | | |", flush=True)
                traceback.print_exc()
            finally:
                _config(default)
                _triton_stats.failure = ""
        _env(False)
    return min(best, key=best.get) if best else _config(None)


def profile() -> None:
    import probe_overhead as po
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof_

    from initscope.recorder import Recorder

    dev = torch.device("cuda")
    _, factory, shape = po.MODELS["resnet"]
    torch.manual_seed(0)
    model = factory().to(dev)
    x, y = torch.randn(shape, device=dev), torch.randint(0, 10, (shape[0],), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for label, triton in (("plain", None), ("torch ops", False), ("triton", True)):
        _env(bool(triton))
        rec = Recorder(model, every=1).__enter__() if triton is not None else None
        for _ in range(3):
            po._step(model, opt, x, y)
            if rec is not None:
                rec.step()
        torch.cuda.synchronize()
        with prof_(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            for _ in range(3):
                po._step(model, opt, x, y)
                if rec is not None:
                    rec.step()
            torch.cuda.synchronize()
        if rec is not None:
            rec.__exit__(None, None, None)
        ev = [e for e in p.key_averages()]
        key = "self_device_time_total" if hasattr(ev[0], "self_device_time_total") else "self_cuda_time_total"
        total = sum(getattr(e, key) for e in ev) / 3
        print(f"\n### ResNet step, {label}: GPU kernel time {total / 1e3:.2f} ms per step\n", flush=True)
        print(p.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=70), flush=True)
    os.environ.pop("INITSCOPE_TRITON", None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--best", help="write the fastest Triton configuration (tile,warps,programs) to this file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA device")
        return 0
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}\n")
    best = kernels(args.repeats)
    print(f"\nfastest Triton configuration on the ResNet activation: tile, warps, programs/SM = {best}")
    if args.best:
        Path(args.best).write_text(",".join(map(str, best)))
    if args.profile:
        try:
            profile()
        except Exception:  # noqa: BLE001
            traceback.print_exc()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
