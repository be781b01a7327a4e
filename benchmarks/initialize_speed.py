"""Time initscope.initialize on a ~100M-parameter transformer against a hand-written loop of
torch.nn.init calls over the same parameters, and the discovery pass against one plain forward.

Everything is measured side by side in one run: the variants are interleaved round by
round and the medians compared, so machine load affects them alike. Prints ratios;
target: initialize / hand loop <= 1.2, for the default torch.Generator values and
for the counter-based ones (rng="philox"), side by side.

    python benchmarks/initialize_speed.py [--depth 14] [--rounds 5] [--device cpu] [--threads N]
        [--distribution normal|uniform|truncated_normal]

With example_input, initialize runs the model forward once (discovery): its cost is one
forward at that input's size, reported separately as discovery / one forward.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import torch
from torch import nn

from initscope import zoo
from initscope.graph import DiscoveryWarning, discover
from initscope.initialize import initialize, plan


def hand_loop(model: nn.Module, distribution: str = "normal") -> None:
    """What a careful user writes by hand: Kaiming for matrices, 1 for norm scales, 0 for the rest."""
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.dim() >= 2 and distribution == "uniform":
                nn.init.kaiming_uniform_(p, nonlinearity="relu")
            elif p.dim() >= 2 and distribution == "truncated_normal":
                std = math.sqrt(2.0 / p[0].numel())
                nn.init.trunc_normal_(p, std=std, a=-2 * std, b=2 * std)
            elif p.dim() >= 2:
                nn.init.kaiming_normal_(p, nonlinearity="relu")
            elif isinstance(module, nn.LayerNorm) and name == "weight":
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=14, help="blocks of d_model 768: 14 gives ~99M parameters")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--distribution", default="normal", choices=("normal", "uniform", "truncated_normal"),
                        help="of the matrices, in the hand loop and in initialize (default: normal)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with torch.device("meta"):
        model = zoo.transformer(depth=args.depth, d_model=768, heads=12)
    model.to_empty(device=device)
    x = torch.randn(1, 8, 768, device=device)
    n = sum(p.numel() for p in model.parameters())
    warnings.simplefilter("ignore", DiscoveryWarning)
    dist = args.distribution
    variants = {
        "hand loop (torch.nn.init)": lambda: hand_loop(model, dist),
        "initialize(example_input=x)": lambda: initialize(model, example_input=x, distribution=dist),
        "initialize(x, rng='philox')": lambda: initialize(model, example_input=x, distribution=dist, rng="philox"),
        "initialize() via torch.fx": lambda: initialize(model),
        "plan(example_input=x) only": lambda: plan(model, example_input=x),
        "discover(model, x)": lambda: discover(model, x),
        "one forward, no_grad": lambda: _forward(model, x),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm up: allocator, moments cache, fx imports
        fn()
    for _ in range(args.rounds):
        for name, fn in variants.items():
            times[name].append(timed(fn, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model: zoo.transformer(depth={args.depth}, d_model=768), {n / 1e6:.1f}M parameters, "
          f"{len(list(model.parameters()))} tensors, device {device}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds, {dist} matrices")
    for name, t in med.items():
        print(f"  {name:32s} {t * 1e3:9.1f} ms")
    base = med["hand loop (torch.nn.init)"]
    ratio = med["initialize(example_input=x)"] / base
    print(f"ratio initialize(example_input) / hand loop: {ratio:.3f}  (target <= 1.2)")
    philox = med["initialize(x, rng='philox')"]
    print(f"ratio initialize(rng='philox') / hand loop:  {philox / base:.3f}"
          "  (counter-based, world-size invariant; target <= 1.2)")
    print(f"ratio initialize(fx) / hand loop:            {med['initialize() via torch.fx'] / base:.3f}")
    print(f"ratio plan / hand loop:                      {med['plan(example_input=x) only'] / base:.3f}")
    rest = med["initialize(example_input=x)"] - med["discover(model, x)"]
    print(f"ratio initialize minus discovery / hand loop: {rest / base:.3f}  (plan rows + seeded writes)")
    print(f"ratio discovery / one forward:               {med['discover(model, x)'] / med['one forward, no_grad']:.3f}")


def _forward(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


if __name__ == "__main__":
    main()
