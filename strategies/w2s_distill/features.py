"""The pooled feature a classification head reads, per sample: a tap on the head and a batched read-out."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from purify.architecture import head_module_names, last_token_positions, pools_last_token
from purify.inference import MAX_LENGTH, labelled_batch


class FeatureTap:
    """Captures, on every forward, the per-sample pooled feature the classification head reads.

    A hook on the head's first module sees its input: a (batch, dim) pooled vector for BERT-style heads
    ([CLS] / pooler output), or (batch, tokens, dim) hidden states, pooled at the token the classifier reads
    (purify.architecture: the last non-pad token for decoders, the first for RoBERTa/ELECTRA heads).
    """

    def __init__(self, module: nn.Module, last_token: bool) -> None:
        self.last_token = last_token
        self.value: torch.Tensor | None = None
        self._handle = module.register_forward_pre_hook(self._hook)

    @classmethod
    def on_head(cls, model: nn.Module) -> FeatureTap:
        """A tap on `model`'s classification head, pooling where its classifier does."""
        return cls(model.get_submodule(head_module_names(model)[0]), pools_last_token(model))

    def _hook(self, _module: nn.Module, args: tuple) -> None:
        self.value = args[0]

    def pooled(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, dim) feature of the last forward."""
        if self.value is None:
            raise RuntimeError("no forward has run since the tap was attached")
        return pool_hidden(self.value, attention_mask, self.last_token)

    def remove(self) -> None:
        self._handle.remove()


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, last_token: bool) -> torch.Tensor:
    """One vector per sample: as is when already pooled, else the last non-pad or the first token."""
    if hidden.dim() == 2:
        return hidden
    if not last_token:
        return hidden[:, 0]
    last = last_token_positions(attention_mask.to(hidden.device))
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@torch.no_grad()
def pooled_outputs(model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 64,
                   max_length: int = MAX_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (n, labels), pooled features (n, dim)) of a classifier over `texts`, in eval mode, on its device."""
    was_training = model.training
    model.eval()
    tap = FeatureTap.on_head(model)
    logits, feats = [], []
    try:
        for start in range(0, len(texts), batch_size):
            batch = labelled_batch(model, tokenizer, texts[start:start + batch_size], max_length=max_length)
            logits.append(model(**batch).logits.float())
            feats.append(tap.pooled(batch["attention_mask"]).float())
    finally:
        tap.remove()
        model.train(was_training)
    return torch.cat(logits), torch.cat(feats)
