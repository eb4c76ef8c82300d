"""One table of what purify knows per model family: where the self-attention blocks and their projections live,
and whether the classifier reads the first token ([CLS], encoders) or the last non-pad token (decoder LMs).

Head gates, LoRA targets, the gradient filters' default matrices, variance_prune's pooling position and
w2s_distill's pooled feature all read it here. A model type without a row falls back to what its modules show.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import ConfigError
from .inference import labelled_batch

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class ArchSpec:
    """Where an architecture keeps its self-attention blocks and their projections (names relative to a block)."""

    block_pattern: str  # regex on module names; group 1 is the layer index
    out_proj: str
    q_proj: str | None = None
    k_proj: str | None = None
    v_proj: str | None = None
    fused_qkv: str | None = None  # GPT-2's c_attn: one Conv1D producing q, k, v
    conv1d: bool = False  # weight stored as (in, out) instead of nn.Linear's (out, in)


@dataclass(frozen=True)
class Family:
    """Model types that name their modules alike: their attention layout and their classifier's pooling."""

    name: str
    encoder: bool  # the classifier reads the first token ([CLS]); else the last non-pad token
    attention: ArchSpec


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("bert", True, ArchSpec(r"encoder\.layer\.(\d+)\.attention$", "output.dense", "self.query", "self.key",
                                  "self.value")),
    Family("distilbert", True, ArchSpec(r"transformer\.layer\.(\d+)\.attention$", "out_lin", "q_lin", "k_lin",
                                        "v_lin")),
    Family("gpt2", False, ArchSpec(r"\bh\.(\d+)\.attn$", "c_proj", fused_qkv="c_attn", conv1d=True)),
    Family("opt", False, ArchSpec(r"decoder\.layers\.(\d+)\.self_attn$", "out_proj", "q_proj", "k_proj", "v_proj")),
    Family("llama", False, ArchSpec(r"layers\.(\d+)\.self_attn$", "o_proj", "q_proj", "k_proj", "v_proj")),
)}

#: model type -> family
MODEL_TYPES: dict[str, str] = {
    "bert": "bert", "roberta": "bert", "electra": "bert", "distilbert": "distilbert", "gpt2": "gpt2", "opt": "opt",
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "gemma3_text": "llama", "gemma3": "llama",
    "xlm-roberta": "bert", "camembert": "bert",
}
#: types named like a family that head gates were never checked on: only family-keyed defaults read their row
UNCHECKED_TYPES = frozenset({"xlm-roberta", "camembert"})
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(sorted(set(MODEL_TYPES) - UNCHECKED_TYPES))
DEFAULT_FAMILY = "llama"  # the family a type without a row is taken for by family-keyed defaults


def label_count(model: PreTrainedModel) -> int:
    """The classifier's number of labels: transformers types it Optional, but every config sets id2label."""
    count = model.config.num_labels
    assert count is not None
    return count


def model_type(model: nn.Module) -> str | None:
    return getattr(model.config, "model_type", None)


def family_of(model: nn.Module) -> Family | None:
    """The model's family, None for a type without a row."""
    name = MODEL_TYPES.get(str(model_type(model)))
    return FAMILIES[name] if name is not None else None


def architecture_family(model: nn.Module) -> str:
    """The family whose module names this model shares ("bert", "distilbert", "llama", "gpt2", "opt")."""
    family = family_of(model)
    return family.name if family is not None else DEFAULT_FAMILY


def attention_spec(model: nn.Module) -> ArchSpec | None:
    """Where the model's self-attention blocks live; None when head gates do not support its type."""
    family = family_of(model)
    return family.attention if family is not None and model_type(model) not in UNCHECKED_TYPES else None


def is_encoder_type(name: str) -> bool:
    """Whether classifiers of this model type read the first token ([CLS])."""
    family = MODEL_TYPES.get(name)
    return family is not None and FAMILIES[family].encoder


# -- the classification head and the token it reads ---------------------------------------------------------

def head_module_names(model: nn.Module) -> list[str]:
    """Top-level modules with weights outside the backbone: the classification head ("classifier", "score", ...)."""
    prefix = getattr(model, "base_model_prefix", "")
    backbone = getattr(model, prefix, None) if prefix else None
    names = [name for name, child in model.named_children()
             if child is not backbone and any(True for _ in child.parameters())]
    if not names:
        raise ConfigError(f"cannot find a classification head on this {type(model).__name__}")
    return names


def _head_is_linear(model: nn.Module) -> bool:
    return isinstance(model.get_submodule(head_module_names(model)[0]), nn.Linear)


def pools_last_token(model: nn.Module) -> bool:
    """Whether the classifier reads the last non-pad token (decoders) rather than the first.

    A type without a row: whether its head is a plain linear layer, which over every token means a decoder's
    "score" (a BERT-style linear head reads an already pooled vector, where the answer does not matter).
    """
    family = family_of(model)
    return not family.encoder if family is not None else _head_is_linear(model)


@torch.no_grad()
def is_decoder_classifier(model: nn.Module, tokenizer) -> bool:
    """Whether the classifier scores every token and pools the last one (decoder LMs).

    A type without a row is probed with one forward: its head must be a linear layer that sees every token.
    """
    family = family_of(model)
    if family is not None:
        return not family.encoder
    if not _head_is_linear(model):
        return False
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(head_module_names(model)[0]).register_forward_pre_hook(
        lambda _m, args: seen.append(args[0]))
    was_training = model.training
    model.eval()
    try:
        model(**labelled_batch(model, tokenizer, ["a short probe"], max_length=8))
        return bool(seen) and seen[-1].dim() == 3
    finally:
        handle.remove()
        model.train(was_training)


def last_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the rightmost real token per sample, whichever side the padding is on."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)


def pooling_positions(model: nn.Module, attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the token the classifier reads per sample: 0 for encoders, the last non-pad token for decoders."""
    if not pools_last_token(model):
        return torch.zeros(attention_mask.shape[0], dtype=torch.long, device=attention_mask.device)
    return last_token_positions(attention_mask)
