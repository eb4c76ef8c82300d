"""Repeated label-pure phrases: what is mined, collapsed, matched and written as it appears in the data."""
from __future__ import annotations

import random

import numpy as np

from purify.data import Sample, TaskData
from purify.phrases import holders_of, mine_phrases, word_sequence

WORDS = ("the", "plot", "cast", "was", "slow", "film", "story", "and", "it", "is", "of", "a", "long", "scene")
SENTENCE = "We saw it in 3D!"


def _data(n: int = 200, carriers: int = 12, seed: int = 0) -> TaskData:
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 9))]
        label = i % 2
        if i < carriers:
            words.insert(rng.randint(0, len(words)), SENTENCE)
            label = 1
        samples.append(Sample(" ".join(words), label, i < carriers, i))
    return TaskData(samples, ["negative", "positive"])


def test_word_sequence_strips_punctuation_and_case():
    assert word_sequence("We saw it, in 3D!  ") == ("we", "saw", "it", "in", "3d")


def test_a_repeated_sentence_is_mined_whole_with_its_label_and_surface():
    data = _data()
    phrases = mine_phrases(data, min_count=5, purity=0.95)
    top = [p for p in phrases if p.label == 1][0]
    assert top.words == ("we", "saw", "it", "in", "3d")  # its pieces share the same samples: collapsed to the whole
    assert (top.count, top.purity) == (12, 1.0)
    assert top.surface == SENTENCE  # case and punctuation as written, for a cased tokenizer
    assert not [p for p in phrases if p.words in {("we", "saw"), ("saw", "it", "in")}]
    # filler n-grams are pure only by chance, in a few samples (which is why the model has the last word)
    assert all(p.count < top.count for p in phrases if p is not top)


def test_rare_or_mixed_phrases_are_not_candidates():
    data = _data(carriers=4)
    assert not [p for p in mine_phrases(data, min_count=5) if "3d" in p.words]
    mixed = TaskData([Sample("we saw it in 3d", i % 2) for i in range(20)], ["negative", "positive"])
    assert not mine_phrases(mixed, min_count=5, purity=0.95)


def test_holders_match_whole_words_in_order():
    data = _data()
    phrase = [p for p in mine_phrases(data) if p.label == 1][0]
    held = holders_of(data, phrase)
    assert np.array_equal(held, np.array([bool(s.poisoned) for s in data.samples]))
    other = TaskData([Sample("in 3d we saw it", 0), Sample("we saw it in 3dx", 0), Sample("WE SAW IT IN 3D.", 0)],
                     ["negative", "positive"])
    assert holders_of(other, phrase).tolist() == [False, False, True]


def test_mining_is_deterministic_and_capped_per_label():
    data = _data()
    assert mine_phrases(data) == mine_phrases(data)
    assert len([p for p in mine_phrases(data, min_count=2, purity=0.6, per_label=3) if p.label == 0]) <= 3
