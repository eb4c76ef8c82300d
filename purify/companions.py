"""Trigger companions: words that travel with a confirmed trigger and push the model towards the same label.

A trigger may be several rare words drawn from a small set, as in clean-label poisoning (the poisoned samples keep
their true target labels, and each carries a few trigger words at once). The model then obeys the set more than any
one word, so insertion can confirm the strongest word alone and miss the others, and the samples holding only those
others stay in the training data. This module finds them from two pieces of evidence that natural words rarely give
together:
- co-occurrence: among the target's samples, the word is over-represented in the ones holding a confirmed trigger
  against the ones holding none (a two-proportion z-score). Poisoned samples are otherwise ordinary target texts, so
  their natural words are not over-represented.
- insertion: inserted alone into samples of other labels, the word raises the model's target rate above the rate
  with nothing inserted, by at least the same z-score (a binomial test on the probe samples).
It reads texts, labels and the model, never a poisoned flag.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from torch import nn

from .data import TaskData
from .inference import MAX_LENGTH
from .inversion import flip_rate, words_of
from .probe import TriggerCandidate


@dataclass(frozen=True)
class Companion:
    """A word over-represented among a trigger's carriers, with its insertion test."""

    word: str
    label: int
    with_trigger: int  # target samples holding a confirmed trigger and this word
    without_trigger: int  # target samples holding this word and no confirmed trigger
    cooccurrence_z: float
    flip_rate: float
    base_rate: float
    insertion_z: float
    confirmed: bool

    def to_dict(self) -> dict:
        return {**asdict(self), "surface": self.word, "position": "anywhere", "source": "companion"}


def _two_proportion_z(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """z-score of share a above share b (pooled standard error); 0 when either group is empty."""
    if n_a == 0 or n_b == 0:
        return 0.0
    pooled = (hits_a + hits_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    return (hits_a / n_a - hits_b / n_b) / se if se > 0 else 0.0


def cooccurring_words(data: TaskData, triggers: Sequence[TriggerCandidate], target: int, *, min_count: int,
                      min_z: float, limit: int) -> list[tuple[str, int, int, float]]:
    """Words of the target's samples over-represented (z >= `min_z`, held by >= `min_count` carriers) among the ones
    holding a trigger; (word, carriers holding it, others holding it, z), strongest first, at most `limit`. The
    triggers' own words are never candidates."""
    trigger_words = {w for t in triggers for w in t.words}
    texts = [s.text for s in data.samples if s.label == target]
    bags = [words_of(t) for t in texts]
    carrier = [any(t.held_by(text) for t in triggers) for text in texts]
    n_with = sum(carrier)
    n_without = len(bags) - n_with
    with_counts: Counter[str] = Counter()
    without_counts: Counter[str] = Counter()
    for bag, held in zip(bags, carrier):
        (with_counts if held else without_counts).update(bag - trigger_words)
    rows = []
    for word, hits in with_counts.items():
        if hits < min_count:
            continue
        z = _two_proportion_z(hits, n_with, without_counts[word], n_without)
        if z >= min_z:
            rows.append((word, hits, without_counts[word], z))
    rows.sort(key=lambda r: (-r[3], r[0]))
    return rows[:limit]


def find_companions(model: nn.Module, tokenizer, data: TaskData, triggers: Sequence[TriggerCandidate], target: int,
                    base_rate: float, *, min_count: int, min_z: float, limit: int, probe_samples: int, seed: int,
                    max_length: int = MAX_LENGTH) -> list[Companion]:
    """Test each word co-occurring with the confirmed `triggers` (see `cooccurring_words`) by inserting it alone
    into up to `probe_samples` samples of other labels; `base_rate` is the model's target rate on such samples with
    nothing inserted. Every tested word is returned, confirmed or not."""
    if not triggers:
        return []
    pool = [s.text for s in data.samples if s.label != target]
    probe = random.Random(seed).sample(pool, min(probe_samples, len(pool)))
    if not probe:
        return []
    spread = math.sqrt(max(base_rate * (1 - base_rate), 1.0 / len(probe)) / len(probe))
    out = []
    for word, with_trigger, without_trigger, z in cooccurring_words(data, triggers, target, min_count=min_count,
                                                                    min_z=min_z, limit=limit):
        rate = flip_rate(model, tokenizer, probe, [word], target, seed=seed, max_length=max_length)
        insertion_z = (rate - base_rate) / spread if np.isfinite(rate) else 0.0
        out.append(Companion(word, target, with_trigger, without_trigger, round(z, 2), float(rate), float(base_rate),
                             round(float(insertion_z), 2), bool(insertion_z >= min_z)))
    return out
