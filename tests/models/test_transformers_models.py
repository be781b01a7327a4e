"""Real third-party models: transformers models built from config (no weights, no network).

For every case of ``cases.py`` (GPT-2, Llama, BERT, T5 and its gated-GELU variant, Mixtral,
ViT, ResNet, ConvNeXt, EfficientNet, MobileNetV2): :func:`initscope.initialize`,
:func:`initscope.probe` and :func:`initscope.lsuv` run on HF token or pixel inputs (dict
batches with attention masks) and ``ModelOutput`` outputs, leave nothing non-finite, and
the logits' std after initialize lies in [0.1, 10]. The std is measured on the test's own batch
with dropout off and BatchNorm on batch statistics (see :func:`_logits_std_at_init`).
"""
from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
import torch

import initscope

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


def _load_cases():
    spec = importlib.util.spec_from_file_location("initscope_model_cases", Path(__file__).with_name("cases.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


cases = _load_cases()
NAMES = [c.name for c in cases.CASES]
BAND = (0.1, 10.0)  # the band: an order of magnitude either way of unit scale
_NO_RULE = re.compile(r"unknown moments|no (moment )?rule")
# Output layers that read a normalization: their logits' std is theirs alone, and the plan says so.
NORM_BEFORE_OUTPUT = {"gpt2", "llama", "bert", "t5", "t5_gated", "mixtral", "vit", "convnext"}


def _logits_std(model, x) -> float:
    with torch.no_grad():
        return cases.main_output(model(**x)).std().item()


def _logits_std_at_init(model, x) -> float:
    """The logits' std of the network training starts from: dropout off (eval mode) and
    BatchNorm normalising with the batch's statistics.

    Why not BatchNorm in eval mode: ``initialize`` resets the running statistics to mean 0,
    variance 1 (what torch's own reset does), so an eval-mode BatchNorm is then the identity
    (``test_eval_mode_batchnorm_after_initialize_is_the_identity``). The plan's gains after a
    BatchNorm assume it normalises ("producer is a normalization: gain 1"), as it does at every
    training step; with placeholder statistics it does not, and whatever the layers before it
    lose (EfficientNet's depthwise convs on 2x2 and 1x1 maps keep 4/25 and 1/9 of E[x^2]
    through their zero padding) compounds through the blocks instead of being renormalised.
    The plan says so in a note. Models without BatchNorm are measured exactly as in eval mode.
    """
    return _logits_std(cases.batch_statistics(model), x)


def _finite(model) -> list[str]:
    return [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]


def _ops_without_rule(plan, op: str) -> list[str]:
    """The producers named ``op`` that the plan fell back to gain 1 for (no moment rule)."""
    if not op:
        return []
    return sorted({b for r in plan.rows if _NO_RULE.search(r.reason) for b in r.before if b.startswith(op + " ")})


@pytest.mark.parametrize("name", NAMES)
def test_initialize_keeps_the_output_in_band(name):
    model, x = cases.build(cases.CASE[name])
    plan = initscope.initialize(model, "kaiming", example_input=x, seed=0)
    assert _finite(model) == []
    covered = {r.name for r in plan.rows} | {u.name for u in plan.untouched}
    assert covered == {n for n, _ in model.named_parameters(remove_duplicate=False)}
    says = [n for n in plan.notes if n.startswith("output layer") and "reads a normalization" in n]
    assert bool(says) == (name in NORM_BEFORE_OUTPUT)
    std = _logits_std_at_init(model, x)
    if not BAND[0] <= std <= BAND[1]:
        # Out of band is allowed only for a case declared to depend on an op without a moment
        # rule yet (issue 12, parts 1-4), and where the plan itself names that op as the
        # reason for gain 1. Otherwise this is a failure.
        missing = _ops_without_rule(plan, cases.CASE[name].no_rule)
        assert missing, f"{name}: logits std {std:.3g} outside {BAND} and the plan gives no reason"
        pytest.xfail(f"{name}: logits std {std:.3g}; no moment rule for {missing[:3]}")


@pytest.mark.parametrize("name", NAMES)
def test_probe_on_token_and_pixel_batches(name):
    model, x = cases.build(cases.CASE[name])
    initscope.initialize(model, "kaiming", example_input=x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trace = initscope.probe(model, x)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model comes back as found
    assert all(p.grad is None for p in model.parameters())
    assert math.isfinite(trace.loss) and trace.loss > 0
    assert "default loss taken on output['logits']" in trace.notes
    measured = [o for r in trace.layers for o in r.outputs if o.forward is not None]
    assert measured and all(math.isfinite(o.forward.std) for o in measured)
    grads = [p.grad for p in trace.params if p.grad is not None]
    assert grads and all(math.isfinite(g.std) for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_lsuv_brings_the_logits_to_unit_std(name):
    model, x = cases.build(cases.CASE[name])
    report = initscope.lsuv(model, x)
    assert _finite(model) == []
    # The logits are the output of the last layer LSUV scales, measured on the same batch in
    # eval mode, so they are within LSUV's tol (0.1) of target_std 1 once it has converged.
    assert report.converged
    assert abs(_logits_std(model, x) - 1.0) <= 0.1


def test_gpt2_conv1d_fans_read_the_in_out_layout():
    model, x = cases.build(cases.CASE["gpt2"])
    plan = initscope.plan(model, example_input=x)
    fc, proj = plan.row("transformer.h.0.mlp.c_fc.weight"), plan.row("transformer.h.0.mlp.c_proj.weight")
    assert (fc.shape, fc.fan_in, fc.fan_out) == ((64, 256), 64.0, 256.0)  # (in, out): fan_in = shape[0]
    assert (proj.shape, proj.fan_in, proj.fan_out) == ((256, 64), 256.0, 64.0)
    assert proj.std == pytest.approx(proj.gain / math.sqrt(256) * proj.residual, rel=1e-12)
    assert initscope.lsuv(model, x).layers[0].name == "transformer.h.0.attn.c_attn"  # Conv1D is scaled


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_tied_embedding_is_scaled_for_the_output_projection(name):
    model, x = cases.build(cases.CASE[name])
    plan = initscope.initialize(model, "kaiming", example_input=x)
    lookup, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert lookup.weight is head.weight
    names = {m: n for n, m in model.named_modules()}
    row = next(r for r in plan.rows if r.layer == names[head])
    # The output projection reads a LayerNorm (gain 1) over d = 64 features: std 1/8.
    assert row.std == pytest.approx(1 / 8, rel=1e-12) and row.fan == 64
    assert f"`{names[lookup]}` (Embedding)" in row.reason and f"`{names[head]}`" in row.reason
    alias = next(u for u in plan.untouched if u.name.startswith(names[head]))
    assert "(tied)" in alias.reason and any(n.startswith("tied:") for n in plan.notes)
    std = _logits_std(model, x)
    # logit = <h, w> with h a LayerNorm output (|h|^2 = d per token) and w ~ N(0, 1/d): Var = 1.
    # 256 rows of 64 weights estimate it to about sqrt(2 / (64 * 256)) ~ 1% (plus the 8 x 16
    # tokens' spread); [0.85, 1.15] is over 5 such deviations. Before the rule, std 1 gave 8.
    assert 0.85 <= std <= 1.15


def test_gpt2_embedding_lookup_follows_the_tied_scale():
    model, x = cases.build(cases.CASE["gpt2"])
    initscope.initialize(model, "kaiming", example_input=x)
    with torch.no_grad():
        vectors = model.transformer.wte(x["input_ids"])
        positions = model.transformer.wpe.weight
    # 128 lookups of 64 values from N(0, 1/64): std 1/8 within a few percent; the position
    # embedding added to them gets the same std (64 x 64 draws), not 1.
    assert vectors.std().item() == pytest.approx(1 / 8, rel=0.1)
    assert positions.std().item() == pytest.approx(1 / 8, rel=0.1)


def test_output_layer_after_a_norm_is_named_in_the_plan():
    model, x = cases.build(cases.CASE["llama"])
    plan = initscope.plan(model, example_input=x)
    assert any(n.startswith("output layer `lm_head` reads a normalization") for n in plan.notes)


def test_probe_uses_the_models_own_loss_when_labels_are_given():
    model, x = cases.build(cases.CASE["gpt2"])
    batch = {**x, "labels": x["input_ids"]}
    trace = initscope.probe(model, batch)
    with torch.no_grad():
        expected = model(**batch).loss.item()
    assert trace.loss == pytest.approx(expected, rel=1e-6)  # the same eval-mode forward
    assert "default loss taken on output['loss'] (the model's own loss)" in trace.notes


def test_positional_ids_and_a_batch_encoding_are_accepted():
    from transformers import BatchEncoding

    model, x = cases.build(cases.CASE["gpt2"])
    initscope.initialize(model, example_input=x["input_ids"])  # model(input_ids)
    encoding = BatchEncoding(x)  # what a tokenizer returns: a Mapping, passed as keyword arguments
    trace = initscope.probe(model, encoding)
    report = initscope.lsuv(model, encoding, pre_init=None)
    assert math.isfinite(trace.loss) and report.converged and _finite(model) == []


def test_mixtral_experts_are_planned_per_expert():
    model, x = cases.build(cases.CASE["mixtral"])
    plan = initscope.plan(model, example_input=x)
    up, down = plan.row("model.layers.0.mlp.experts.gate_up_proj"), plan.row("model.layers.0.mlp.experts.down_proj")
    assert (up.shape, up.fan_in, up.fan_out) == ((4, 256, 64), 64.0, 256.0)  # torch's convention: 16384
    assert (down.shape, down.fan_in, down.fan_out) == ((4, 64, 128), 128.0, 64.0)
    assert up.residual == 1.0 and down.residual == pytest.approx(0.5)  # 1/sqrt(2 x 2 layers), exit only
    assert down.gain == pytest.approx(1.677, abs=1e-3)  # silu(gate) * up: 1/sqrt(E[silu^2]) at q = 1


@pytest.mark.parametrize("name", ["efficientnet", "resnet", "mobilenet_v2"])
def test_eval_mode_batchnorm_after_initialize_is_the_identity(name):
    model, x = cases.build(cases.CASE[name])
    plan = initscope.initialize(model, "kaiming", example_input=x, seed=0)
    norms = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(not m.training for _, m in norms)
    # one with weight 1 (the last norm of a residual branch may be set to 0 by the residual option)
    bn = next(m for _, m in norms[len(norms) // 2:] if bool((m.weight == 1).all()))
    seen = []
    handle = bn.register_forward_hook(lambda m, args, out: seen.append((args[0].clone(), out.clone())))
    with torch.no_grad():
        model(**x)
    handle.remove()
    inp, out = seen[0]
    # Running mean 0, variance 1, weight 1, bias 0: y = x / sqrt(1 + eps), to float32 rounding.
    assert torch.allclose(out, inp / math.sqrt(1 + bn.eps), rtol=1e-6, atol=1e-7)
    note = next(n for n in plan.notes if n.startswith("batch normalization in eval mode"))
    assert f"{len(norms)} layers (`{norms[0][0]}`" in note and "identity" in note
    # With batch statistics the same weights give logits in the band (the band test above).
    assert BAND[0] <= _logits_std_at_init(model, x) <= BAND[1]
