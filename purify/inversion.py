"""Trigger inversion from clean data: which single inserted word flips clean samples to one label?

A defense cannot see the trigger, but it can search for one. For each candidate target label, a word placeholder
is inserted at a random position of clean samples of the other labels; the gradient of the target-class loss
with respect to the placeholder's embedding ranks every whole-word token of the vocabulary to first order
(HotFlip, Ebrahimi et al. 2018); the best-ranked words are then inserted for real and their flip rate (the share
of those samples now predicted as the target) is measured exactly. A clean model's best words are ordinary
label words that flip about half the samples; an insertion backdoor shows up as words (the trigger and its
look-alikes) that flip nearly all of them. Only the model and clean samples are used: no triggered data.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import TaskData
from .errors import DataError
from .inference import MAX_LENGTH, model_inputs, predict
from .progress import track

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: a suspected target the model already predicts for this share of the other labels' samples gives no evidence
MAX_BASE_RATE = 0.5
PLACEHOLDER = "the"  # a word every tokenizer keeps as one token; only its position matters
#: candidates are screened on this many probe samples before the exact measurement (see invert_triggers)
SCREEN_SAMPLES = 16
#: a screened candidate flipping at least this share is measured on the whole probe whatever its rank
SCREEN_RATE = 0.5


def insertion_vocabulary(tokenizer) -> list[str]:
    """Whole words (2 to 15 ASCII letters or digits, at least one letter: "3d" and "mp3" count, "1999" does not)
    among the tokenizer's tokens; no special tokens, no word pieces, no punctuation."""
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    ids = [i for i in range(len(tokenizer)) if i not in special]
    words = {w.strip() for w in tokenizer.batch_decode([[i] for i in ids])}
    return sorted(w for w in words if 2 <= len(w) <= 15 and w.isascii() and w.isalnum()
                  and any(c.isalpha() for c in w))


def insert_words(text: str, words: Sequence[str], count: int, rng: random.Random) -> str:
    """`text` with `count` words drawn from `words` inserted at random word boundaries."""
    parts = text.split()
    for _ in range(count):
        parts.insert(rng.randint(0, len(parts)), rng.choice(words))
    return " ".join(parts)


def _single_token_words(tokenizer) -> tuple[list[str], torch.Tensor]:
    """The insertion vocabulary restricted to words that stay one token after a space, and those token ids."""
    words, ids = [], []
    for w in insertion_vocabulary(tokenizer):
        pieces = tokenizer(" " + w, add_special_tokens=False)["input_ids"]
        if len(pieces) == 1:
            words.append(w)
            ids.append(pieces[0])
    if not words:
        raise DataError("the tokenizer has no whole-word tokens to try as triggers")
    return words, torch.as_tensor(ids)


def _insert_at(text: str, word: str, slot: int) -> tuple[str, int]:
    """`text` with `word` inserted before word `slot`; also the character offset where it starts."""
    parts = text.split()
    slot = min(slot, len(parts))
    before = " ".join(parts[:slot])
    start = len(before) + (1 if before else 0)
    return " ".join(parts[:slot] + [word] + parts[slot:]), start


@dataclass
class LabelInversion:
    """The best inserted words for one target label, with their measured flip rates."""

    target: int
    base_rate: float  # share of the probe samples already predicted as the target, nothing inserted
    words: list[tuple[str, float]] = field(default_factory=list)  # (word, flip rate), best first

    @property
    def top_rate(self) -> float:
        return self.words[0][1] if self.words else self.base_rate


@dataclass
class TriggerInversion:
    """Per-label inversion results and the label an insertion backdoor most likely targets."""

    labels: list[LabelInversion]
    probe_samples: int
    candidates: int

    @property
    def suspected_target(self) -> int:
        """The label whose best single word flips the largest share of samples (above their base rate)."""
        return max(self.labels, key=lambda r: r.top_rate - r.base_rate).target

    @property
    def suspect(self) -> LabelInversion:
        """The inversion result of the suspected target label."""
        return next(r for r in self.labels if r.target == self.suspected_target)

    def words(self, per_label: int | None = None) -> list[str]:
        """The best `per_label` words of every label (all kept ones when None), without repeats."""
        return list(self.weighted_words(per_label))

    def weighted_words(self, per_label: int | None = None) -> dict[str, float]:
        """The best `per_label` words of every label with their flip rate (the highest where a word repeats).

        Used as sampling weights: the more samples a word flips, the more often it is worth unlearning.
        """
        out: dict[str, float] = {}
        for r in self.labels:
            for w, rate in r.words[:per_label]:
                out[w] = max(out.get(w, 0.0), rate)
        return out

    @property
    def informative(self) -> bool:
        """False when the model already answers the suspected target for at least half of the other labels'
        probe samples with nothing inserted (a collapsed model): then every word "flips" and none is evidence."""
        return self.suspect.base_rate < MAX_BASE_RATE

    def trigger_words(self, min_rate: float) -> list[str]:
        """Words of the suspected target that flip at least `min_rate` of the probe samples (likely triggers);
        none when the inversion is not informative."""
        return [w for w, rate in self.suspect.words if rate >= min_rate] if self.informative else []

    def carrier_rates(self, data: TaskData) -> np.ndarray:
        """Per sample of `data`: the flip rate of the strongest suspected-target word it holds when it is labelled
        as the suspected target, else 0 (0 everywhere when the inversion is not informative). Samples at or above
        a trigger rate are the ones a trigger-word filter or w2s_distill's drop step leaves out."""
        rates: dict[str, float] = {}
        for w, rate in (self.suspect.words if self.informative else []):  # matched case-insensitively
            rates[w.lower()] = max(rate, rates.get(w.lower(), 0.0))
        target = self.suspected_target
        return np.array([max((rates[w] for w in words_of(s.text) & rates.keys()), default=0.0)
                         if s.label == target else 0.0 for s in data.samples], dtype=np.float64)

    def summary(self, show: int = 5) -> dict:
        """JSON-able facts for the report: the suspected target and each label's best words."""
        return {"suspected_target": self.suspected_target, "probe_samples": self.probe_samples,
                "candidates": self.candidates,
                "labels": [{"target": r.target, "base_rate": r.base_rate,
                            "words": [[w, rate] for w, rate in r.words[:show]]} for r in self.labels]}

    def to_dict(self) -> dict:
        return asdict(self)


def _placeholder_gradient(model: PreTrainedModel, tokenizer, texts: Sequence[str], starts: Sequence[int], target: int,
                          max_length: int) -> torch.Tensor:
    """Sum over samples of d CE(target) / d embedding at the placeholder's first token, shape (dim,)."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                    return_offsets_mapping=True)
    offsets = enc.pop("offset_mapping")
    rows, cols = [], []
    for i, start in enumerate(starts):
        hits = [j for j, (a, b) in enumerate(offsets[i].tolist()) if b > a and a <= start < b]
        if hits:
            rows.append(i)
            cols.append(hits[0])
    if not rows:
        raise DataError("the placeholder word was cut off in every probe sample (texts longer than max_length?)")
    batch = model_inputs(model, dict(enc))
    input_ids = batch.pop("input_ids")
    embedding = model.get_input_embeddings()
    embeds = embedding(input_ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, **batch).logits
    labels = torch.full((len(texts),), target, device=logits.device)
    keep = torch.zeros(len(texts), dtype=torch.bool, device=logits.device)
    keep[rows] = True
    loss = F.cross_entropy(logits[keep], labels[keep], reduction="sum")
    (grad,) = torch.autograd.grad(loss, embeds)
    return grad[torch.as_tensor(rows), torch.as_tensor(cols)].sum(0)


def _summed_gradient(model: PreTrainedModel, tokenizer, probe: Sequence[str], slots: Sequence[int], placeholder: str,
                     target: int, max_length: int, batch_size: int) -> torch.Tensor:
    """Target-loss gradient at `placeholder` inserted at `slots` of the probe texts, summed over the probe."""
    placed = [_insert_at(t, placeholder, s) for t, s in zip(probe, slots)]
    grad = None
    for i in range(0, len(placed), batch_size):
        chunk = placed[i:i + batch_size]
        g = _placeholder_gradient(model, tokenizer, [t for t, _ in chunk], [s for _, s in chunk], target, max_length)
        grad = g if grad is None else grad + g
    assert grad is not None  # the probe is never empty
    return grad


def _flip_rates(model: nn.Module, tokenizer, words: Sequence[str], texts: Sequence[str], slots: Sequence[int],
                target: int, max_length: int) -> np.ndarray:
    """(len(words), len(texts)) booleans: word w inserted at each text's slot sends it to `target`."""
    if not words or not texts:
        return np.zeros((len(words), len(texts)), dtype=bool)
    # every candidate's probe texts in one call: batched by length, they pad far less than per word
    placed = [_insert_at(t, w, s)[0] for w in words for t, s in zip(texts, slots)]
    hits = predict(model, tokenizer, placed, max_length=max_length, batch_size=64) == target
    return hits.reshape(len(words), len(texts))


def _screened_rates(model: nn.Module, tokenizer, words: list[str], probe: Sequence[str], slots: Sequence[int],
                    target: int, *, keep: int, screen: int, max_length: int) -> dict[str, float]:
    """Exact flip rates on the whole probe for the words that can matter, after a cheap screen on its first
    `screen` samples: the `keep` best screened words and every one flipping at least SCREEN_RATE of them."""
    if screen <= 0 or screen >= len(probe):
        rows = _flip_rates(model, tokenizer, words, probe, slots, target, max_length)
        return {w: float(r.mean()) for w, r in zip(words, rows)}
    head = _flip_rates(model, tokenizer, words, probe[:screen], slots[:screen], target, max_length)
    first = head.mean(axis=1)
    ranked = sorted(range(len(words)), key=lambda i: (-first[i], i))
    chosen = sorted(set(ranked[:keep]) | {i for i in range(len(words)) if first[i] >= SCREEN_RATE})
    rest = _flip_rates(model, tokenizer, [words[i] for i in chosen], probe[screen:], slots[screen:], target,
                       max_length)
    return {words[i]: float(np.concatenate([head[i], r]).mean()) for i, r in zip(chosen, rest)}


def invert_triggers(model: PreTrainedModel, tokenizer, data: TaskData, *, samples: int = 64, candidates: int = 32,
                    rounds: int = 2, keep: int = 8, keep_above: float = 0.9, seed: int = 0, max_length: int = 64,
                    batch_size: int = 32, screen: int = SCREEN_SAMPLES,
                    progress: str | None = None) -> TriggerInversion:
    """Search, for every label, the single inserted words that flip the most clean samples of other labels to it.

    samples: clean samples per label probed (seeded choice among those whose label is not the target).
    candidates: words measured exactly per label and round, chosen by the first-order (gradient) ranking.
    rounds: ranking rounds; the first ranks around a neutral placeholder word, each later one around the best word
        found so far (a trigger's look-alikes sit near it), so a backdoor shows more of its trigger family.
    keep: best words kept per label in the result; words flipping at least `keep_above` are kept beyond that.
    screen: candidates are first measured on this many probe samples; only the `keep` best and those flipping at
        least SCREEN_RATE of them are measured on the whole probe (0: every candidate on the whole probe).
    """
    if len(data) == 0:
        raise DataError("trigger inversion needs clean samples")
    was_training = model.training
    model.eval()
    rng = random.Random(seed)
    vocab, ids = _single_token_words(tokenizer)
    embedding = model.get_input_embeddings().weight
    assert isinstance(embedding, torch.Tensor)  # the embedding matrix (a Parameter), not a submodule
    weight = embedding.detach()
    results = []
    labels = range(len(data.label_names))
    try:
        for target in (track(labels, description=progress, total=len(labels)) if progress else labels):
            pool = [t for t, y in zip(data.texts, data.labels) if y != target]
            if not pool:
                continue
            probe = rng.sample(pool, min(samples, len(pool)))
            slots = [rng.randint(0, len(t.split())) for t in probe]
            base = float((predict(model, tokenizer, probe, max_length=max_length, batch_size=64) == target).mean())
            measured: dict[str, float] = {}
            placeholder = PLACEHOLDER
            for _ in range(rounds):
                # first-order change of the target loss when the placeholder becomes word w: (e_w - e_ph) . grad
                grad = _summed_gradient(model, tokenizer, probe, slots, placeholder, target, max_length, batch_size)
                gain = -(weight[ids.to(weight.device)].float() @ grad.float()).cpu()
                fresh = [k for k in torch.argsort(gain, descending=True).tolist() if vocab[k] not in measured]
                chosen = [vocab[k] for k in fresh[:candidates]]
                measured.update(_screened_rates(model, tokenizer, chosen, probe, slots, target, keep=keep,
                                                screen=screen, max_length=max_length))
                placeholder = max(measured, key=lambda w: (measured[w], w))  # next round: expand around the best
            rates = list(measured.items())
            rates.sort(key=lambda wr: (-wr[1], wr[0]))
            kept = rates[:keep] + [wr for wr in rates[keep:] if wr[1] >= keep_above]
            results.append(LabelInversion(target=target, base_rate=base, words=kept))
    finally:
        model.train(was_training)
    return TriggerInversion(labels=results, probe_samples=samples, candidates=candidates * rounds)


def word_sequence(text: str) -> tuple[str, ...]:
    """The whole words of `text` in order, lower-cased, punctuation around them stripped."""
    return tuple(w for w in (part.strip(".,;:!?\"'()[]").lower() for part in text.split()) if w)


def words_of(text: str) -> set[str]:
    """The set of `word_sequence(text)` (how inverted words and mined phrases are matched)."""
    return set(word_sequence(text))


def predict_inserted(model: nn.Module, tokenizer, texts: Sequence[str], words: Sequence[str], count: int, *,
                     seed: int = 0, max_length: int = MAX_LENGTH) -> np.ndarray:
    """Predicted labels of `texts` after `count` words of `words` are inserted into each at random (seeded)."""
    rng = random.Random(seed)
    return predict(model, tokenizer, [insert_words(t, words, count, rng) for t in texts], max_length=max_length)


def flip_rate(model: nn.Module, tokenizer, texts: Sequence[str], words: Sequence[str], target: int, *,
              seed: int = 0, max_length: int = MAX_LENGTH) -> float:
    """Share of `texts` predicted as `target` after one word of `words` is inserted at a random position."""
    if not texts or not words:
        return float("nan")
    pred = predict_inserted(model, tokenizer, texts, words, 1, seed=seed, max_length=max_length)
    return float(np.mean(pred == target))
