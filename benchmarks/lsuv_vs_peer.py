"""initscope.lsuv against the PyPI ``lsuv`` package (0.3.0), side by side in one run.

Both start from the same weights (a deep copy of one model), use the same batch and the
same tolerance (0.1), and both pre-initialize orthogonally. Ours runs twice: with its default
``verify="auto"`` (one pass when the in-flight measurements of the corrected outputs verify it)
and with ``verify="pass"`` (a separate verification forward, as in earlier versions). Repeats
are interleaved (the order rotates) and medians are taken. For each model it prints the
wall-time ratios, the forward passes each used (a forward pre-hook on the root module counts
them) and the worst |std - 1| over layers, measured afterwards by an independent forward pass.

Run: ``.venv/bin/python benchmarks/lsuv_vs_peer.py [--device cuda] [--batch 32] [--repeats 5]``
(the peer is the ``bench`` extra: ``pip install initscope[bench]``).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import statistics
import time

import lsuv as peer
import torch
from torch import nn

from initscope import zoo
from initscope.lsuv import lsuv as ours

TOL = 0.1
KINDS = (nn.Linear, nn.MultiheadAttention, nn.Conv1d, nn.Conv2d, nn.Conv3d,
         nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def worst_std_error(model: nn.Module, x: torch.Tensor) -> float:
    """max over layers of |std(output) - 1|, from a fresh eval-mode forward pass (attention: its output)."""
    outs: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, KINDS) and not name.endswith("out_proj"):
            def hook(mod, args, out, name=name):
                outs.setdefault(name, []).append((out[0] if isinstance(out, tuple) else out).detach().flatten().clone())  # clone: an inplace ReLU may follow
            handles.append(m.register_forward_hook(hook))
    was = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return max(abs(torch.cat(v).double().std().item() - 1.0) for v in outs.values())


def run_ours(model: nn.Module, x: torch.Tensor, device: torch.device) -> None:
    ours(model, x, tol=TOL)


def run_ours_pass(model: nn.Module, x: torch.Tensor, device: torch.device) -> None:
    ours(model, x, tol=TOL, verify="pass")


def run_peer(model: nn.Module, x: torch.Tensor, device: torch.device) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        peer.lsuv_with_singlebatch(model, x, std_tol=TOL, verbose=False, device=device)


def timed(fn, base: nn.Module, x: torch.Tensor, device: torch.device) -> tuple[float, int, float]:
    """(seconds, forward passes, worst |std - 1|) of one run on a fresh copy of ``base``."""
    model = copy.deepcopy(base)
    passes = []
    handle = model.register_forward_pre_hook(lambda m, a: passes.append(1))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn(model, x, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    handle.remove()
    return seconds, len(passes), worst_std_error(model, x)


def compare(name: str, batch: int, repeats: int, device: torch.device) -> dict:
    base, x = zoo.build(name, batch=batch, seed=0)
    base, x = base.to(device), x.to(device)
    fns = {"ours": run_ours, "pass": run_ours_pass, "peer": run_peer}
    runs: dict[str, list[tuple[float, int, float]]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up, not counted
        timed(fn, base, x, device)
    for r in range(repeats):
        order = list(fns)[r % 3:] + list(fns)[:r % 3]
        for label in order:
            runs[label].append(timed(fns[label], base, x, device))
    med = {k: statistics.median(t for t, _, _ in v) for k, v in runs.items()}
    return {"model": name, "ours_s": med["ours"], "pass_s": med["pass"], "peer_s": med["peer"],
            "speedup": med["peer"] / med["ours"], "speedup_pass": med["peer"] / med["pass"],
            **{f"passes_{k}": runs[k][-1][1] for k in fns}, **{f"worst_{k}": max(w for _, _, w in runs[k]) for k in fns}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = [compare(name, args.batch, args.repeats, device) for name in ("plain_cnn", "resnet", "transformer")]
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.batch}, "
          f"{args.repeats} interleaved repeats "
          f"(medians), tol {TOL}")
    print("ours = verify='auto' (default), pass = verify='pass'; speedup = peer time / ours")
    head = f"{'model':<12}{'ours ms':>9}{'pass ms':>9}{'peer ms':>10}{'speedup':>9}{'(pass)':>8}" \
           f"{'passes':>8}{'pass':>6}{'peer':>6}{'worst |std-1|':>15}{'pass':>9}{'peer':>9}"
    print(head)
    for r in rows:
        print(f"{r['model']:<12}{r['ours_s'] * 1e3:>9.1f}{r['pass_s'] * 1e3:>9.1f}{r['peer_s'] * 1e3:>10.1f}"
              f"{r['speedup']:>8.1f}x{r['speedup_pass']:>7.1f}x{r['passes_ours']:>8}{r['passes_pass']:>6}"
              f"{r['passes_peer']:>6}{r['worst_ours']:>15.2e}{r['worst_pass']:>9.2e}{r['worst_peer']:>9.2e}")
    cnn = rows[0]
    print(f"target >= 20x on plain_cnn: {'met' if cnn['speedup'] >= 20 else 'MISSED'} ({cnn['speedup']:.1f}x); "
          f"<= 2 passes: {'met' if all(r['passes_ours'] <= 2 for r in rows) else 'MISSED'}; "
          f"every layer within {TOL}: {'met' if all(r['worst_ours'] <= TOL for r in rows) else 'MISSED'}")


if __name__ == "__main__":
    main()
