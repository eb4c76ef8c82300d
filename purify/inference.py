"""Batched prediction with the one tokenization purify uses everywhere (training, evaluation, filtering)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .device import model_device

MAX_LENGTH = 128


def encode(tokenizer, texts: Sequence[str], max_length: int = MAX_LENGTH) -> dict[str, torch.Tensor]:
    """Tokenize a batch of raw texts: padded, truncated to `max_length`, as PyTorch tensors."""
    if isinstance(texts, str):
        raise TypeError("encode expects a sequence of texts, got a single string")
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return dict(enc)


def model_inputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the keys the model's forward accepts and move them to its device."""
    device = model_device(model)
    keep: tuple[str, ...] = ("input_ids", "attention_mask", "labels")
    if getattr(model.config, "type_vocab_size", 0) and "token_type_ids" in batch:
        keep = keep + ("token_type_ids",)
    return {k: v.to(device) for k, v in batch.items() if k in keep}


def labelled_batch(model: nn.Module, tokenizer, texts: Sequence[str], labels: Sequence[int] | None = None,
                   max_length: int = MAX_LENGTH) -> dict[str, torch.Tensor]:
    """Tokenized texts (and labels, when given) ready for the model's forward."""
    batch = encode(tokenizer, texts, max_length)
    if labels is not None:
        batch["labels"] = torch.as_tensor(list(labels), dtype=torch.long)
    return model_inputs(model, batch)


def length_order(tokenizer, texts: Sequence[str], max_length: int = MAX_LENGTH) -> np.ndarray:
    """Indices of `texts` from shortest to longest in tokens (stable), so batches of neighbours pad little."""
    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    return np.argsort(np.asarray(lengths), kind="stable")


@torch.no_grad()
def predict_logits(model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 64,
                   max_length: int = MAX_LENGTH, progress: str | None = None) -> np.ndarray:
    """Classifier logits for `texts`, shape (n, num_labels), computed in eval mode and batches.

    Texts are batched in order of length and the logits put back in input order: each batch is padded to its own
    longest text, which on short, uneven task texts halves the tokens computed (padding is masked, so a text's
    logits do not depend on its batch beyond floating-point rounding).
    """
    from .progress import track

    if not len(texts):
        return np.zeros((0, getattr(model.config, "num_labels", 2)), dtype=np.float32)
    was_training = model.training
    model.eval()
    order = length_order(tokenizer, texts, max_length)
    out = []
    starts = range(0, len(texts), batch_size)
    try:
        for start in track(starts, description=progress, total=len(starts)) if progress else starts:
            chunk = [texts[i] for i in order[start:start + batch_size]]
            out.append(model(**labelled_batch(model, tokenizer, chunk, max_length=max_length)).logits.float().cpu())
    finally:
        model.train(was_training)
    logits = torch.cat(out).numpy()
    result = np.empty_like(logits)
    result[order] = logits
    return result


def predict(model: nn.Module, tokenizer, texts: Sequence[str], **kwargs) -> np.ndarray:
    """Predicted label ids for `texts`."""
    return predict_logits(model, tokenizer, texts, **kwargs).argmax(-1)
