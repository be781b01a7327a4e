"""Tiny transformers models built from config (no weights, no network), and their inputs.

Shared by ``test_transformers_models.py`` and ``benchmarks/models_std.py``. Each
:class:`Case` builds one model in eval mode (dropout off, so the output std is a
property of the weights alone) and a batch for it, on the CPU. Sizes are the
smallest that keep every block type of the family (2 layers, hidden 64, vocab 256,
32x32 images): the whole set builds and runs in a few seconds on one core.

``transformers`` is imported inside :func:`build` only, so this module imports
without it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Case", "CASES", "CASE", "build", "main_output", "batch_statistics"]

_VOCAB, _HIDDEN, _HEADS, _LAYERS = 256, 64, 4, 2
_TEXT = {"vocab_size": _VOCAB, "hidden_size": _HIDDEN, "num_attention_heads": _HEADS,
         "num_hidden_layers": _LAYERS, "intermediate_size": 128}
_DECODER = {**_TEXT, "num_key_value_heads": 2, "max_position_embeddings": 64, "pad_token_id": 0}


@dataclass(frozen=True)
class Case:
    """One model family: the class and config names in ``transformers``, the config, and
    which input it takes (``tokens``, ``seq2seq`` or ``image``)."""

    name: str
    model: str
    config: str
    kwargs: dict = field(default_factory=dict)
    inputs: str = "tokens"
    gated: str = ""  # the ops whose moment rules (issue 12, parts 1-4) the output std depends on
    no_rule: str = ""  # the op the plan may name as "of unknown moments" until those rules exist
    image: int = 32


CASES = (
    Case("gpt2", "GPT2LMHeadModel", "GPT2Config",
         {"vocab_size": _VOCAB, "n_embd": _HIDDEN, "n_layer": _LAYERS, "n_head": _HEADS, "n_positions": 64,
          "bos_token_id": 0, "eos_token_id": 0}),
    Case("llama", "LlamaForCausalLM", "LlamaConfig", _DECODER, gated="silu(gate) * up (SwiGLU)", no_rule="torch.mul"),
    Case("bert", "BertForMaskedLM", "BertConfig", {**_TEXT, "max_position_embeddings": 64}),
    Case("t5", "T5ForConditionalGeneration", "T5Config",
         {"vocab_size": _VOCAB, "d_model": _HIDDEN, "d_kv": 16, "d_ff": 128, "num_layers": _LAYERS,
          "num_heads": _HEADS, "feed_forward_proj": "relu"}, inputs="seq2seq",
         gated="x * d_model**-0.5 before the tied lm_head"),
    Case("t5_gated", "T5ForConditionalGeneration", "T5Config",
         {"vocab_size": _VOCAB, "d_model": _HIDDEN, "d_kv": 16, "d_ff": 128, "num_layers": _LAYERS,
          "num_heads": _HEADS, "feed_forward_proj": "gated-gelu"}, inputs="seq2seq",
         gated="gelu(wi_0) * wi_1; x * d_model**-0.5 before the tied lm_head", no_rule="torch.mul"),
    Case("mixtral", "MixtralForCausalLM", "MixtralConfig",
         {**_DECODER, "num_local_experts": 4, "num_experts_per_tok": 2}),  # experts' gate: initscope._experts
    Case("vit", "ViTForImageClassification", "ViTConfig",
         {"hidden_size": _HIDDEN, "num_hidden_layers": _LAYERS, "num_attention_heads": _HEADS,
          "intermediate_size": 128, "image_size": 32, "patch_size": 8, "num_labels": 64}, inputs="image"),
    Case("resnet", "ResNetForImageClassification", "ResNetConfig",
         {"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1], "layer_type": "basic",
          "num_labels": 64}, inputs="image", gated="max_pool2d raises, adaptive_avg_pool2d lowers E[x^2]"),
    Case("convnext", "ConvNextForImageClassification", "ConvNextConfig",
         {"hidden_sizes": [16, 32], "depths": [1, 1], "num_stages": 2, "num_labels": 64}, inputs="image"),
    Case("efficientnet", "EfficientNetForImageClassification", "EfficientNetConfig",
         {"image_size": 32, "width_coefficient": 0.25, "depth_coefficient": 0.25, "hidden_dim": 320,
          "num_labels": 64}, inputs="image", gated="sigmoid(SE) * features; BatchNorm on batch statistics"),
    Case("mobilenet_v2", "MobileNetV2ForImageClassification", "MobileNetV2Config",
         {"image_size": 96, "depth_multiplier": 0.35, "num_labels": 64}, inputs="image", image=96,
         gated="adaptive_avg_pool2d keeps only the mean part of E[relu6^2]; zero padding of 3x3 maps"),
)


CASE = {c.name: c for c in CASES}


def _inputs(case: Case, generator: torch.Generator, batch: int) -> dict:
    if case.inputs == "image":
        return {"pixel_values": torch.randn(batch, 3, case.image, case.image, generator=generator)}
    ids = torch.randint(1, _VOCAB, (batch, 16), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, -4:] = 0  # one padded sequence, so attention masks are exercised
    out = {"input_ids": ids, "attention_mask": mask}
    if case.inputs == "seq2seq":
        out["decoder_input_ids"] = torch.randint(1, _VOCAB, (batch, 8), generator=generator)
    return out


def build(case: Case, seed: int = 0, batch: int = 8) -> tuple[torch.nn.Module, dict]:
    """The model, as the config builds it (transformers' own default init), in eval mode,
    and a keyword batch for it. Both are reproducible from ``seed``."""
    import transformers

    torch.manual_seed(seed)
    config = getattr(transformers, case.config)(**case.kwargs)
    model = getattr(transformers, case.model)(config).eval()
    return model, _inputs(case, torch.Generator().manual_seed(seed), batch)


def main_output(output: object) -> torch.Tensor:
    """The logits of an HF ``ModelOutput`` (what the std is measured on)."""
    return output["logits"]


def batch_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose BatchNorm layers normalise with the batch's statistics (their
    training mode); everything else (dropout, drop-connect) stays in eval mode.

    ``initialize`` resets BatchNorm's running statistics to mean 0, variance 1, so in eval mode
    each BatchNorm is then the identity: not the normalisation its plan assumes ("producer is a
    normalization: gain 1"), nor what the network computes at the first training step. Measured
    this way, the output std is that of the network training starts from. A copy, so the
    caller's running statistics are not updated.
    """
    import copy

    clone = copy.deepcopy(model)
    for module in clone.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.train()
    return clone
