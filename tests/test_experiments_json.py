"""Every experiment's ``to_dict()`` is plain Python: ``json.dumps`` takes it as it is."""
import json

import numpy as np
import pytest

from initscope import experiments

SMALLEST = {
    "udl": dict(depth=3, width=8, batch=4, variances=[0.1, 1.0]),
    "he2015": dict(depths=[3], steps=2, channels=2, inits=["kaiming"]),
    "mean_shift": dict(depth=2, width=8, batch=8),
    "low_precision": dict(depth=3, width=8, batch=4, scales=[0.5, 1.0]),
    "width": dict(widths=[8, 16], depth=2, steps=1, seeds=[0], batch=8),
}


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def test_every_experiment_has_a_smallest_setting_here():
    assert sorted(SMALLEST) == sorted(experiments.EXPERIMENTS)


@pytest.mark.parametrize("name", list(SMALLEST))
def test_to_dict_is_json_ready(name):
    result = experiments.EXPERIMENTS[name](**SMALLEST[name])
    d = result.to_dict()
    text = json.dumps(d, allow_nan=False)  # strict JSON: no numpy types, no NaN
    assert json.loads(text) == d
    assert not any(isinstance(v, (np.ndarray, np.generic, tuple)) for v in _leaves(d))
