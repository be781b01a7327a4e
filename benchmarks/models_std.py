"""Output std of the real-model test set (tests/models/cases.py) under three inits.

For each transformers model built from config (no weights, no network), on its own batch of
8, in eval mode: the logits' std as the config builds it (transformers' own init), after
``initscope.initialize(model, "kaiming", example_input=batch)``, and after
``initscope.lsuv(model, batch)`` (orthogonal pre-init, the default) on a fresh copy. Prints a
markdown table; needs transformers.

    python benchmarks/models_std.py
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

import initscope


def load_cases():
    path = Path(__file__).resolve().parents[1] / "tests" / "models" / "cases.py"
    spec = importlib.util.spec_from_file_location("initscope_model_cases", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def logits_std(cases, model, batch) -> float:
    with torch.no_grad():
        return cases.main_output(model(**batch)).std().item()


def main() -> None:
    cases = load_cases()
    torch.set_num_threads(1)
    print("| model | transformers class | default init | initscope.initialize | lsuv | depends on |")
    print("|---|---|---|---|---|---|")
    for case in cases.CASES:
        model, batch = cases.build(case)
        default = logits_std(cases, model, batch)
        initscope.initialize(model, "kaiming", example_input=batch)
        ours = logits_std(cases, model, batch)
        model, batch = cases.build(case)
        initscope.lsuv(model, batch)
        after = logits_std(cases, model, batch)
        print(f"| {case.name} | {case.model} | {default:.3g} | {ours:.3g} | {after:.3g} | {case.gated or '-'} |")


if __name__ == "__main__":
    main()
