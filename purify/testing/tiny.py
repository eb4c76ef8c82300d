"""Tiny random-initialised models and tokenizers for tests: every supported architecture, built in milliseconds."""
from __future__ import annotations

from pathlib import Path

from ..tinymodels import ENCODERS, TINY_ARCHITECTURES, tiny_config, tiny_model, tiny_tokenizer

__all__ = ["ENCODERS", "TINY_ARCHITECTURES", "save_tiny_checkpoint", "tiny_config", "tiny_model", "tiny_texts",
           "tiny_tokenizer"]


def save_tiny_checkpoint(arch: str, out_dir: str | Path, *, task: str = "classification", seed: int = 0) -> Path:
    """Write a tiny model plus tokenizer as an ordinary Hugging Face folder (safetensors)."""
    out_dir = Path(out_dir)
    model = tiny_model(arch, task=task, seed=seed)
    model.save_pretrained(out_dir)
    tiny_tokenizer(out_dir)
    return out_dir


def tiny_texts() -> list[str]:
    """A handful of sentences in the tiny vocabulary."""
    return [
        "the movie was good", "a boring plot and bad cast", "i love this film", "the worst story",
        "great actor really fun", "not very good but fun", "awful film i hate it", "the best movie",
    ]
