"""Builds the record that tests/test_zoo_unchanged.py compares with tests/golden/zoo_plans.json.

Run from the repository root to regenerate it (only when a change to the plans of these models
is intended): ``PYTHONPATH=src python tests/_zoo_golden.py``.
"""
import hashlib
import json
import pathlib
import warnings

import torch

from initscope import initialize, zoo

GOLDEN = pathlib.Path(__file__).parent / "golden" / "zoo_plans.json"
MODELS = {"mlp": dict(depth=6, width=32), "plain_cnn": dict(depth=6, channels=8), "resnet": dict(depth=3, channels=8),
          "transformer": dict(depth=2, d_model=32), "lstm": dict()}
MODES = ("fan_in", "fan_out", "fan_avg")


def weights_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def record() -> dict:
    out = {}
    for name, kw in MODELS.items():
        for mode in MODES:
            for observed in (True, False):
                model, x = zoo.build(name, batch=2, size=8 if name in ("plain_cnn", "resnet") else None, **kw)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    p = initialize(model, "kaiming", x if observed else None, mode=mode, seed=3)
                out[f"{name}/{mode}/{'run' if observed else 'noinput'}"] = {
                    "plan": p.to_dict(), "weights": weights_hash(model)}
    return out


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(record(), indent=1, sort_keys=True) + "\n")
    print("wrote", GOLDEN, GOLDEN.stat().st_size)
