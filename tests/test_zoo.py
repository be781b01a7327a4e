"""initscope.zoo: the reference models build and run, and the demo's claim: under
initialize(model, "kaiming", example_input=x) the pre-activation second moment stays
within [0.5, 2] of the input's across depth, while PyTorch's default init shrinks it by
the factor its formula predicts."""
import math

import pytest
import torch
from torch import nn

from initscope import zoo
from initscope.errors import ArgumentError, UnknownOptionError
from initscope.initialize import initialize


def preact(model, x, kind):
    """E[z^2] of the input of every ``kind`` activation module, in call order."""
    out = []
    hooks = [m.register_forward_pre_hook(lambda m, a: out.append(a[0].pow(2).mean().item()))
             for m in model.modules() if isinstance(m, kind)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


@pytest.mark.parametrize("name,shape", [("mlp", (4, 1)), ("plain_cnn", (4, 10)), ("resnet", (4, 10)),
                                        ("transformer", (4, 16, 1)), ("lstm", (4, 1))])
def test_each_model_builds_runs_and_initializes(name, shape):
    kwargs = {"mlp": {"depth": 3, "width": 8}, "plain_cnn": {"depth": 3, "channels": 8}}.get(name, {})
    model, x = zoo.build(name, **kwargs)
    assert tuple(model(x).shape) == shape
    plan = initialize(model, example_input=x)
    assert plan.discovery == "run" and torch.isfinite(model(x)).all()


def test_the_input_is_independent_of_the_weights():
    # Regression: the input generator once shared the weights' seed, and x @ W.T of the first
    # layer came out 12% above its expectation.
    model, x = zoo.build("mlp", depth=1, width=512, batch=128)
    assert model[0](x).pow(2).mean().item() == pytest.approx(1 / 3, rel=0.03)


def test_build_size_and_bad_arguments():
    assert zoo.build("plain_cnn", depth=3, size=16)[1].shape == (4, 3, 16, 16)
    assert zoo.build("transformer", depth=1, size=5, batch=2)[1].shape == (2, 5, 64)
    with pytest.raises(UnknownOptionError, match="unknown zoo model 'vgg'"):
        zoo.build("vgg")
    with pytest.raises(ArgumentError, match="depth"):
        zoo.mlp(depth=0)
    with pytest.raises(ArgumentError, match="divisible"):
        zoo.transformer(d_model=10, heads=3)


def test_mlp_keeps_the_second_moment_and_torch_default_decays_sixfold_per_layer():
    depth, width = 20, 512
    model, x = zoo.build("mlp", depth=depth, width=width, batch=128)
    q0 = x.pow(2).mean().item()
    default = [q / q0 for q in preact(model, x, nn.ReLU)]
    # torch's Linear default: kaiming_uniform_(a=sqrt(5)), Var[w] = 1/(3 fan_in); bias Var 1/(3 fan_in).
    # Layer 1 gets 1/3 + 1/1536; each later layer E[relu^2] = q/2 times 1/3: q/6, down to the
    # bias floor b/(1 - 1/6) = 7.8e-4.
    floor = 1 / (3 * width) / (1 - 1 / 6)
    assert default[0] == pytest.approx(1 / 3 + 1 / (3 * width), rel=0.05)  # 100 inputs x 512 units: ~1% noise
    assert default[1] / default[0] == pytest.approx(1 / 6 + 1 / (3 * width) / default[0], rel=0.15)
    assert default[-1] == pytest.approx(floor, rel=0.25) and default[-1] < 1e-3  # 1/1280 of the input
    initialize(model, "kaiming", example_input=x, seed=0)
    ours = [q / q0 for q in preact(model, x, nn.ReLU)]
    # Finite width: once the ReLU mean dominates, a layer's E[z^2] is a chi-square average over
    # 512 units (~6% sd per layer, a random walk); seeds 0-5 measured min 0.64, max 1.27.
    assert 0.5 <= min(ours) and max(ours) <= 2.0


def test_plain_cnn_keeps_the_second_moment_on_average_and_torch_default_decays():
    # Three stages of 32, 64, 128 channels on 64x64 images. A single CNN's per-layer E[z^2]
    # fluctuates like a chi-square over its *channels* (ReLU means make positions and samples
    # move together): ~25% per layer at 32 channels. The derivation fixes the expectation over
    # weights, so we average 3 independently initialized models; zero padding also loses
    # ~2/4/8% per layer at 64/32/16 pixels (0.65 expected at the last layer).
    ours, default = [], []
    for seed in range(3):
        model, x = zoo.build("plain_cnn", depth=8, channels=32, size=64, seed=seed)
        q0 = x.pow(2).mean().item()
        default.append([q / q0 for q in preact(model, x, nn.ReLU)])
        initialize(model, example_input=x, seed=seed)
        ours.append([q / q0 for q in preact(model, x, nn.ReLU)])
    mean = [sum(col) / len(col) for col in zip(*ours)]
    assert 0.5 <= min(mean) and max(mean) <= 2.0, mean
    first = sum(d[0] for d in default) / 3
    assert first == pytest.approx(1 / 3 + 1 / 81, rel=0.1)  # fan_in 27: 1/3 of the input, plus the bias
    ratios = [d[i + 1] / d[i] for d in default for i in range(3)]
    assert all(0.08 < r < 0.25 for r in ratios)  # about 1/6 per layer
    assert max(d[-1] for d in default) < 2e-3


def test_transformer_pre_activations_stay_at_one_and_torch_default_sits_at_a_third():
    model, x = zoo.build("transformer", depth=4, batch=8)
    default = preact(model, x, nn.GELU)
    # fc1 reads a LayerNorm output (E = 1): default Var[w] fan_in = 1/3, plus bias 1/(3*64);
    # LayerNorm resets the scale, so no compounding: 1/3 at every block.
    assert all(q == pytest.approx(1 / 3 + 1 / 192, rel=0.1) for q in default)
    initialize(model, example_input=x, seed=0)
    ours = preact(model, x, nn.GELU)
    assert all(q == pytest.approx(1.0, rel=0.1) for q in ours)  # measured 0.97-1.02
    assert math.prod(ours) > 0.5


def test_resnet_and_lstm_initialize_with_their_blocks():
    model, x = zoo.build("resnet", depth=2)
    plan = initialize(model, example_input=x)
    assert [b.last_norm for b in []] == [] and plan.residual.startswith("auto: zero_last_norm")
    model, x = zoo.build("lstm")
    plan = initialize(model, "orthogonal", example_input=x)
    w = model.lstm.weight_hh_l0[:32]  # gate i: a 32 x 32 orthogonal block times its std * sqrt(32)
    torch.testing.assert_close(w @ w.T, torch.eye(32) * (w @ w.T)[0, 0], rtol=1e-4, atol=1e-5)
