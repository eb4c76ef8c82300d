"""Repeated label-pure phrases in untrusted training data: candidate triggers that single-word inversion misses.

An inserted-sentence trigger ("I watched this 3D movie") may need the whole sentence before the model reacts, so
no single inserted word flips it; but a poisoned training set repeats that sentence in every poisoned sample,
always with the target label. Natural text rarely repeats a word sequence many times with one label only. This
module counts the word n-grams of each sample once, keeps those seen in at least `min_count` samples whose labels
are at least `purity` one label, and collapses phrases that occur in exactly the same samples to the longest one.
Which of them is a trigger is for the model to say (`purify.filters.trigger_words` inserts each into samples of
other labels and measures the flip rate); this module reads only texts and labels, never the poisoned flag.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from .data import TaskData
from .inversion import word_sequence


@dataclass(frozen=True)
class Phrase:
    """A repeated word sequence, the label its samples carry, and how often and how purely."""

    words: tuple[str, ...]
    label: int
    count: int  # samples holding it
    purity: float  # share of those samples labelled `label`
    surface: str  # the phrase as first written in the data (case and punctuation kept), for insertion

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def to_dict(self) -> dict:
        return {"phrase": self.text, "surface": self.surface, "label": self.label, "count": self.count,
                "purity": round(self.purity, 4)}


def _contains(sequence: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    n = len(phrase)
    return any(sequence[i:i + n] == phrase for i in range(len(sequence) - n + 1))


def mine_phrases(data: TaskData, *, min_count: int = 5, purity: float = 0.95, max_words: int = 6,
                 per_label: int = 16) -> list[Phrase]:
    """The `per_label` most repeated label-pure phrases of each label (most samples first, then longest).

    An n-gram (1 to `max_words` words) counts once per sample; it is kept when at least `min_count` samples hold
    it and at least a `purity` share of them carry one label. Phrases held by exactly the same samples are
    collapsed to the longest (the sentence, not each of its pieces).
    """
    sequences = [word_sequence(s.text) for s in data.samples]
    holders: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, seq in enumerate(sequences):
        grams = {seq[a:a + n] for n in range(1, max_words + 1) for a in range(len(seq) - n + 1)}
        for gram in grams:
            holders[gram].append(i)
    labels = np.asarray(data.labels)
    by_samples: dict[tuple[int, ...], tuple[tuple[str, ...], int, float]] = {}
    for gram, idx in holders.items():
        if len(idx) < min_count:
            continue
        top, top_count = Counter(labels[idx].tolist()).most_common(1)[0]
        if top_count / len(idx) < purity:
            continue
        key = tuple(idx)
        kept = by_samples.get(key)
        # the longest phrase of a sample set, ties broken by the words (set order depends on the hash seed)
        if kept is None or (-len(gram), gram) < (-len(kept[0]), kept[0]):
            by_samples[key] = (gram, int(top), top_count / len(idx))
    found: dict[int, list[Phrase]] = defaultdict(list)
    for members, (gram, top, share) in by_samples.items():
        found[top].append(Phrase(gram, top, len(members), share, surface_of(data.samples[members[0]].text, gram)))
    out = []
    for label in sorted(found):
        out += sorted(found[label], key=lambda p: (-p.count, -len(p.words), p.words))[:per_label]
    return out


def surface_of(text: str, gram: tuple[str, ...], *, at_start: bool = False) -> str:
    """The words of `text` that spell `gram`, as written (so a cased tokenizer sees the trigger's own case); with
    `at_start`, only its opening words."""
    parts = [p for p in text.split() if word_sequence(p)]
    n = len(gram)
    for a in ([0] if at_start else range(len(parts) - n + 1)):
        if word_sequence(" ".join(parts[a:a + n])) == gram:
            return " ".join(parts[a:a + n])
    return " ".join(gram)


def holders_of(data: TaskData, phrase: Phrase) -> np.ndarray:
    """Boolean mask of the samples of `data` that hold `phrase` (whole words, in order)."""
    return np.array([_contains(word_sequence(s.text), phrase.words) for s in data.samples], dtype=bool)
