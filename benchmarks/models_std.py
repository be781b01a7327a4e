"""Output std of the real-model test set (tests/models/cases.py): three inits, and eval-mode BatchNorm.

For each transformers model built from config (no weights, no network), on its own batch of
8, with dropout off and BatchNorm on batch statistics (``cases.batch_statistics``, as the band
test measures): the logits' std as the config builds it (transformers' own init) and after
``initscope.initialize(model, "kaiming", example_input=batch)``; then the same initialized model
fully in eval mode (BatchNorm on the running statistics initialize resets: the identity), and
``initscope.lsuv(model, batch)`` (orthogonal pre-init, the default) on a fresh copy, in eval
mode as LSUV scales it. Prints a markdown table; needs transformers.

    python benchmarks/models_std.py
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

import initscope
from initscope.graph import discover


def load_cases():
    path = Path(__file__).resolve().parents[1] / "tests" / "models" / "cases.py"
    spec = importlib.util.spec_from_file_location("initscope_model_cases", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def logits_std(cases, model, batch) -> float:
    with torch.no_grad():
        output = model(**batch)
    return float("nan") if cases is None else cases.main_output(output).std().item()


def final_norm(model, batch) -> str | None:
    """The normalization the output layer reads, if it reads one (the plan's note names it)."""
    graph = discover(model, batch)
    for link in graph.layers.values():
        producers = [n for n in link.producers if n.kind != "constant"]
        if any(n.kind == "output" for n in link.consumers) and producers and producers[0].kind == "norm":
            return producers[0].where
    return None


def stream_std(model, batch, norm: str | None) -> float:
    """The std of the final normalization's input: what the gains before it left of the signal."""
    if norm is None:
        return float("nan")
    seen = []
    handle = model.get_submodule(norm).register_forward_pre_hook(lambda m, args: seen.append(args[0].std().item()))
    try:
        logits_std(None, model, batch)
    finally:
        handle.remove()
    return seen[-1]


def main() -> None:
    cases = load_cases()
    torch.set_num_threads(1)
    print("| model | transformers class | default init | initscope.initialize | initialize, eval-mode BN | lsuv "
          "| final norm's input (default / initialize) | depends on |")
    print("|---|---|---|---|---|---|---|---|")
    for case in cases.CASES:
        model, batch = cases.build(case)
        default, norm = logits_std(cases, cases.batch_statistics(model), batch), final_norm(model, batch)
        before = stream_std(model, batch, norm)
        initscope.initialize(model, "kaiming", example_input=batch)
        ours, stream = logits_std(cases, cases.batch_statistics(model), batch), stream_std(model, batch, norm)
        frozen = logits_std(cases, model, batch)
        model, batch = cases.build(case)
        initscope.lsuv(model, batch)
        after = logits_std(cases, model, batch)
        where = "-" if norm is None else f"`{norm}`: {before:.3g} / {stream:.3g}"
        print(f"| {case.name} | {case.model} | {default:.3g} | {ours:.3g} | {frozen:.3g} | {after:.3g} | {where} "
              f"| {case.gated or '-'} |")


if __name__ == "__main__":
    main()
