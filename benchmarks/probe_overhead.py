"""Cost of recording statistics during training, as ratios to a plain training step.

Times one training step (forward, backward, SGD) in four variants, interleaved in one run
and summarised by medians (the machine may be shared and noisy):

  plain       the step alone
  record      with one Recorder(every=1) kept for the run: the step and rec.step() (its one
              host transfer, and the next step's parameter values); its hooks are taken off,
              untimed, for the other variants and put back before the next recorded step
  off-step    with a Recorder on a step it does not record
  naive hook  a forward hook per leaf module calling .mean().item(), .std().item() and
              histc, as fastai's miniai does

Then, apart from those figures, a Recorder(every=1) opened fresh for each window of 3 steps
(as a user who wraps a few steps at a time): "fresh, 1st" is the first step of a window,
timed from opening the Recorder (which measures the parameter values) to its rec.step();
"fresh, later" the window's other steps. Each window follows a plain step, the ratio's base.

Targets (issue 16): record <= 1.10x on the CPU for the CNN, the MLP and the transformer, kept
or fresh (<= 1.05x for the ResNet at batch 256 on a GPU), off-step <= 1.01x. With --device
cuda the recording step also runs under torch.cuda.set_sync_debug_mode("error") to show that
no hook synchronises with the host (the one transfer in Recorder.step() is outside that check).

Besides the CNN, the MLP and the transformer (the default set on the CPU) and the ResNet (added
on a GPU), --models takes gpt2, llama and bert: transformers models built from config (4 layers
of width 128, training mode, dropout on) trained as language models on random tokens (batch 8,
sequence 128); they need the ``transformers`` extra.

Usage:
    python benchmarks/probe_overhead.py [--device cuda [--torch-ops] [--triton-config T,W,P]] [--repeats 9]
        [--models cnn,mlp,gpt2]
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from initscope.recorder import Recorder  # noqa: E402

try:
    from initscope import zoo
except ImportError:  # the zoo is written in parallel; these stand in for it
    zoo = None


def _cnn() -> nn.Module:
    if zoo is not None:
        return zoo.plain_cnn(depth=20, channels=32)
    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, padding=1), nn.ReLU()]
    for _ in range(19):
        layers += [nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def _mlp() -> nn.Module:
    if zoo is not None:
        return zoo.mlp(depth=8, width=1024, out_features=10)
    layers: list[nn.Module] = []
    for _ in range(8):
        layers += [nn.Linear(1024, 1024), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(1024, 10))


def _transformer() -> nn.Module:
    if zoo is not None:
        return zoo.transformer(depth=4, d_model=64, heads=4, out_features=10)
    layer = nn.TransformerEncoderLayer(64, 4, 256, activation="gelu", batch_first=True)
    return nn.Sequential(nn.TransformerEncoder(layer, 4, enable_nested_tensor=False), nn.Linear(64, 10))


def _resnet() -> nn.Module:
    if zoo is not None:
        return zoo.resnet(depth=8, channels=64)
    return _cnn()


_VOCAB = 1024
# transformers models built from config (no weights), in training mode (dropout on), trained as
# language models on random tokens: (class, config class, config)
_HF = {
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", {"vocab_size": _VOCAB, "n_embd": 128, "n_layer": 4, "n_head": 4,
                                              "n_positions": 128, "bos_token_id": 0, "eos_token_id": 0}),
    "llama": ("LlamaForCausalLM", "LlamaConfig", {"vocab_size": _VOCAB, "hidden_size": 128, "intermediate_size": 344,
                                                  "num_hidden_layers": 4, "num_attention_heads": 4,
                                                  "num_key_value_heads": 2, "max_position_embeddings": 128}),
    "bert": ("BertForMaskedLM", "BertConfig", {"vocab_size": _VOCAB, "hidden_size": 128, "intermediate_size": 512,
                                               "num_hidden_layers": 4, "num_attention_heads": 4,
                                               "max_position_embeddings": 128}),
}


def _hf(name: str) -> nn.Module:
    import transformers  # an optional extra: only these models need it

    cls, config, kwargs = _HF[name]
    return getattr(transformers, cls)(getattr(transformers, config)(**kwargs)).train()


# name -> (factory, input shape, batch dimension first); targets are class indices (token ids
# for the transformers models, whose input is token ids too)
MODELS = {
    "cnn": ("plain CNN, 20 conv x 32 ch, 32x32, batch 64", _cnn, (64, 3, 32, 32)),
    "mlp": ("MLP 8 x 1024, batch 256", _mlp, (256, 1024)),
    "transformer": ("transformer 4 x d64, seq 64, batch 32", _transformer, (32, 64, 64)),
    "resnet": ("ResNet 8 blocks x 64 ch, 32x32, batch 256", _resnet, (256, 3, 32, 32)),
    **{name: (f"transformers {cls} 4 x d128, seq 128, batch 8", functools.partial(_hf, name), (8, 128))
       for name, (cls, _, _) in _HF.items()},
}


class _Naive:
    """miniai's append_stats: mean, std and a 40-bin histc of |activation|, per leaf module."""

    def __init__(self, model: nn.Module) -> None:
        self.stats: list = []
        self.handles = [m.register_forward_hook(self.hook) for m in model.modules() if next(m.children(), None) is None]

    def hook(self, module: nn.Module, args: object, out: object) -> None:
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            o = out.detach()
            self.stats.append((o.mean().item(), o.std().item(), o.abs().histc(40, 0, 10).cpu()))

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.stats.clear()


def _loss(out: object, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the logits (a transformers model's output holds them) against y."""
    out = out if isinstance(out, torch.Tensor) else out.logits
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.expand(out.shape[:-1]).reshape(-1))


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    _loss(model(x), y).backward()
    opt.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(variant: str, model: nn.Module, opt, x, y, device, kept: Recorder | None = None) -> float:
    """Seconds for one training step of ``variant``; set-up and tear-down are not timed.
    ``kept``: the Recorder kept for the run (armed only for "record")."""
    rec = naive = None
    if variant == "record":
        kept._arm()  # already armed when the last timed step was a recorded one
        elapsed = _timed_step(model, opt, x, y, device, kept)
        return elapsed
    if kept is not None:
        kept._disarm()
    if variant == "off-step":
        rec = Recorder(model, every=10**9).__enter__()
        rec.step()  # step 0 was armed; step 1 is not recorded
    elif variant == "naive hook":
        naive = _Naive(model)
    elapsed = _timed_step(model, opt, x, y, device, rec)
    if rec is not None:
        rec.__exit__(None, None, None)
    if naive is not None:
        naive.close()
    return elapsed


def _timed_step(model: nn.Module, opt, x, y, device, rec: Recorder | None, opening: bool = False) -> float:
    """Seconds for one step and ``rec.step()``; ``opening``: also ``rec.__enter__()``."""
    _sync(device)
    start = time.perf_counter()
    if opening:
        rec.__enter__()
    _step(model, opt, x, y)
    if rec is not None:
        rec.step()
    _sync(device)
    return time.perf_counter() - start


def _fresh_windows(model: nn.Module, opt, x, y, device, windows: int, size: int = 3) -> dict[str, float]:
    """Median ratios to a plain step of a fresh Recorder's first step and of its later steps."""
    first, later = [], []
    for _ in range(windows):
        base = _timed_step(model, opt, x, y, device, None)
        rec = Recorder(model, every=1)
        first.append(_timed_step(model, opt, x, y, device, rec, opening=True) / base)
        later += [_timed_step(model, opt, x, y, device, rec) / base for _ in range(size - 1)]
        rec.__exit__(None, None, None)
    return {"fresh, 1st": statistics.median(first), "fresh, later": statistics.median(later)}


def _sync_check(model: nn.Module, opt, x, y) -> str:
    """Run a recorded step with CUDA sync debugging set to 'error' around forward and backward."""
    with Recorder(model, every=1) as rec, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sync debug mode is a prototype feature"
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.zero_grad(set_to_none=True)
            _loss(model(x), y).backward()
        except RuntimeError as e:
            return f"SYNC INSIDE HOOKS: {e}"
        finally:
            torch.cuda.set_sync_debug_mode(0)
        rec.step()  # the single host transfer, outside the check
    return "no host sync inside hooks"


VARIANTS = ("plain", "record", "off-step", "naive hook")


def setup(name: str, device: torch.device = torch.device("cpu")) -> tuple:
    """(model, batch, targets, SGD optimizer) of ``MODELS[name]``, seeded; the other benchmarks
    of the Recorder build their steps here too."""
    _, factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory().to(device)
    if name in _HF:  # token ids in, the same ids as the targets
        x = torch.randint(0, _VOCAB, shape, device=device)
        return model, x, x, torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(shape, device=device)
    y = torch.randint(0, 10, shape[:2] if name == "transformer" else (shape[0],), device=device)
    return model, x, y, torch.optim.SGD(model.parameters(), lr=1e-3)


def bench(name: str, device: torch.device, repeats: int) -> dict[str, float]:
    title = MODELS[name][0]
    model, x, y, opt = setup(name, device)
    kept = Recorder(model, every=1).__enter__()
    for v in VARIANTS:  # warm-up: allocator, kernels, first-call caches
        for _ in range(2):
            _timed(v, model, opt, x, y, device, kept)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(repeats):
        order = VARIANTS[r % 4:] + VARIANTS[:r % 4]  # rotate so no variant always runs first
        for v in order:
            times[v].append(_timed(v, model, opt, x, y, device, kept))
    kept._disarm()
    kept.__exit__(None, None, None)
    med = {v: statistics.median(ts) for v, ts in times.items()}
    med.update(_fresh_windows(model, opt, x, y, device, windows=max(3, repeats // 2)))
    med["title"] = title  # type: ignore[assignment]
    if device.type == "cuda":
        med["sync"] = _sync_check(model, opt, x, y)  # type: ignore[assignment]
    return med


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--models", default=None, help="comma-separated subset of " + ",".join(MODELS))
    ap.add_argument("--triton", action="store_true", help="GPU: take the fused Triton pass (INITSCOPE_TRITON=1)")
    ap.add_argument("--torch-ops", action="store_true", help="GPU: take the torch-ops path (INITSCOPE_TRITON=0)")
    ap.add_argument("--triton-config", help="tile,warps,programs per multiprocessor of the Triton pass")
    args = ap.parse_args(argv)
    if args.triton or args.torch_ops:
        os.environ["INITSCOPE_TRITON"] = "0" if args.torch_ops else "1"
    if args.triton_config:
        from initscope import _triton_stats
        for k, v in zip(("_TILE", "_WARPS", "_PROGRAMS"), args.triton_config.split(",")):
            setattr(_triton_stats, k, int(v))
    device = torch.device(args.device)
    names = args.models.split(",") if args.models else (
        ["cnn", "mlp", "transformer"] + (["resnet"] if device.type == "cuda" else []))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    path = ("torch ops" if args.torch_ops else "fused Triton pass, where Triton imports") if device.type == "cuda" \
        else "fused CPU kernel, if compiled"
    if args.triton_config:
        path += f" (tile, warps, programs/SM = {args.triton_config})"
    print(f"torch {torch.__version__}, {where}, statistics by {path}, median of {args.repeats} interleaved steps\n")
    print("| model | plain step | record every step | off-step | naive hook | fresh Recorder: 1st step | later steps |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        m = bench(name, device, args.repeats)
        ratio = lambda v: f"{m[v] / m['plain']:.2f}x"  # noqa: E731
        print(f"| {m['title']} | {m['plain'] * 1e3:.1f} ms | {ratio('record')} | {ratio('off-step')} "
              f"| {ratio('naive hook')} | {m['fresh, 1st']:.2f}x | {m['fresh, later']:.2f}x |", flush=True)
        if "sync" in m:
            print(f"|   sync check ({name}) | {m['sync']} | | | | | |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
