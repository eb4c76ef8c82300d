"""Tiny random-initialised models and a word-level tokenizer, every supported architecture built in milliseconds.

The `tiny` teacher recipe builds on them, so they live in the product; `purify.testing.tiny` re-exports them.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedTokenizerFast,
)

from .architecture import is_encoder_type

# Small enough to build instantly, large enough to have several layers and heads (and GQA where the arch has it).
_TINY_CONFIGS: dict[str, dict] = {
    "bert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "roberta": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    pad_token_id=0, bos_token_id=2, eos_token_id=3),
    "electra": dict(hidden_size=32, embedding_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64),
    "distilbert": dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=128),
    "opt": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32,
                max_position_embeddings=128),
    "llama": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, max_position_embeddings=128),
    "mistral": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=64, max_position_embeddings=128),
    "qwen2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, max_position_embeddings=128),
    "gemma3_text": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=8, intermediate_size=64, max_position_embeddings=128, sliding_window=16),
}
TINY_ARCHITECTURES: tuple[str, ...] = tuple(_TINY_CONFIGS)
ENCODERS: tuple[str, ...] = tuple(a for a in TINY_ARCHITECTURES if is_encoder_type(a))  # no causal-LM head

_WORDS = (
    "the a movie film good bad great awful fun boring plot actor cast story best worst love hate "
    "cf mn bb tq i watched this 3d not very really was is and but of to it"
).split()


def tiny_tokenizer(save_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over a small vocabulary (plus [UNK]/[PAD]/[CLS]/[SEP]/[MASK])."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + list(dict.fromkeys(_WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", eos_token="[SEP]", bos_token="[CLS]", model_max_length=128,
    )
    if save_dir is not None:
        fast.save_pretrained(str(save_dir))
    return fast


def tiny_config(arch: str, *, task: str = "classification", num_labels: int = 2):
    """Config of a tiny `arch` model (task "classification" or "causal_lm")."""
    if arch not in _TINY_CONFIGS:
        raise KeyError(f"no tiny config for {arch!r}; known: {', '.join(TINY_ARCHITECTURES)}")
    vocab_size = len(dict.fromkeys(_WORDS)) + 5
    kwargs = dict(_TINY_CONFIGS[arch], vocab_size=vocab_size)
    if arch not in ("roberta", "distilbert"):
        kwargs.setdefault("pad_token_id", 0)
    if arch == "gpt2":
        kwargs.update(bos_token_id=2, eos_token_id=3)
    config = AutoConfig.for_model(arch, **kwargs)
    config.num_labels = num_labels
    config.pad_token_id = 0
    if arch in ("roberta",):
        config.max_position_embeddings = 130
    return config


def tiny_model(arch: str, *, task: str = "classification", num_labels: int = 2, seed: int = 0):
    """A tiny random-initialised model in eval mode (deterministic under `seed`)."""
    torch.manual_seed(seed)
    config = tiny_config(arch, task=task, num_labels=num_labels)
    cls = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    model = cls.from_config(config, attn_implementation="eager" if arch == "gemma3_text" else None)
    return model.eval()
