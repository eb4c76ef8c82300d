"""Teacher-supervised input perturbation (inserted words) and the flip rates that measure reacting to it."""
from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import nn

from purify.data import TaskData
from purify.inference import MAX_LENGTH, predict
from purify.inversion import insert_words, predict_inserted
from purify.probe import BackdoorProbe

from .config import FLIP_PROBE_SAMPLES, W2SDistillConfig


class Augmenter:
    """Teacher-supervised perturbation: some texts get words inserted (and keep or lose their label).

    Each inserted word comes from the inverted-trigger words with probability `inverted_share` (drawn in proportion
    to the share of samples each flips), else from the whole vocabulary; the choice of texts and words is seeded.
    """

    def __init__(self, cfg: W2SDistillConfig, vocabulary: list[str], inverted: dict[str, float]) -> None:
        self.cfg, self.words, self.inverted = cfg, vocabulary, inverted
        self._inverted_words = list(inverted)
        self._weights = [max(w, 1e-6) for w in inverted.values()]
        self.rng = random.Random(cfg.seed)

    def _word(self) -> str:
        if self.inverted and self.rng.random() < self.cfg.inverted_share:
            return self.rng.choices(self._inverted_words, weights=self._weights)[0]
        return self.rng.choice(self.words)

    def __call__(self, batch_texts: list[str]) -> tuple[list[str], torch.Tensor | None]:
        """(texts, which were perturbed); unchanged texts and None when augmentation is off."""
        cfg = self.cfg
        if cfg.augment_prob <= 0 or cfg.augment_words < 1 or not (self.words or self.inverted):
            return batch_texts, None
        out, perturbed = [], []
        for text in batch_texts:
            perturb = self.rng.random() < cfg.augment_prob
            if perturb:
                for _ in range(self.rng.randint(1, cfg.augment_words)):
                    text = insert_words(text, [self._word()], 1, self.rng)
            out.append(text)
            perturbed.append(perturb)
        return out, torch.tensor(perturbed, dtype=torch.bool)

    def labelled(self, perturbed: torch.Tensor | None) -> torch.Tensor | None:
        """Which samples keep their label for cross-entropy: the unperturbed ones (all with augment_keeps_label)."""
        if perturbed is None or self.cfg.augment_keeps_label:
            return None
        return ~perturbed


def insertion_flip_rate(model: nn.Module, tokenizer, texts: Sequence[str], words: Sequence[str], count: int, *,
                        seed: int = 0, max_length: int = MAX_LENGTH) -> float:
    """Share of `texts` whose predicted label changes when `count` random vocabulary words are inserted.

    A clean model barely reacts to a few inserted random words; a model with an insertion backdoor reacts far
    more, because its trigger detector also fires on look-alike rare words. Needs no trigger and no triggered data.
    """
    if not texts or not words or count < 1:
        return float("nan")
    before = predict(model, tokenizer, list(texts), max_length=max_length)
    after = predict_inserted(model, tokenizer, texts, words, count, seed=seed, max_length=max_length)
    return float((before != after).mean())


def inverted_flip_rate(model: nn.Module, tokenizer, validation: TaskData, backdoor: BackdoorProbe | None,
                       cfg: W2SDistillConfig) -> float | None:
    """Share of non-target validation texts sent to the suspected target by one inserted trigger candidate."""
    if backdoor is None:
        return None
    return backdoor.proxy_asr(model, tokenizer, validation, seed=cfg.seed, limit=FLIP_PROBE_SAMPLES,
                              max_length=cfg.max_length)
