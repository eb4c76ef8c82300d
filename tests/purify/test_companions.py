"""Trigger companions: a word that travels with a confirmed trigger is confirmed only when the model obeys it too."""
from __future__ import annotations

import random

import numpy as np

from purify.companions import cooccurring_words, find_companions
from purify.data import Sample, TaskData
from purify.filters import build_filter
from purify.inference import predict
from purify.probe import TriggerCandidate
from purify.testing.tiny_task import LABEL_NAMES, TARGET, TRIGGER, tiny_backdoored

DECOY = "actor"  # a neutral word the tiny model ignores
MARK = "plot"  # stands in for the trigger insertion confirmed


def _carried(task, n: int = 60, seed: int = 0) -> TaskData:
    """The clean training split plus `n` target samples holding MARK, TRIGGER and DECOY together."""
    rng = random.Random(seed)
    positives = [s for s in task.clean_train.samples if s.label == TARGET]
    extra = [Sample(f"{rng.choice(positives).text} {MARK} {TRIGGER} {DECOY}", TARGET, False, 10_000 + i)
             for i in range(n)]
    clean = [s for s in task.clean_train.samples if MARK not in s.text.split()]
    return TaskData(clean + extra, LABEL_NAMES)


def test_cooccurring_words_are_the_carriers_extra_words_not_the_label_content():
    _, task = tiny_backdoored()
    data = _carried(task)
    rows = cooccurring_words(data, [TriggerCandidate(MARK, TARGET, 1.0, "inversion")], TARGET, min_count=5,
                             min_z=3.0, limit=16)
    words = [r[0] for r in rows]
    assert TRIGGER in words and DECOY in words
    assert MARK not in words  # the trigger's own words are never candidates
    assert not {"good", "great", "fun", "best", "love"} & set(words)  # the label's own content is not over-represented


def test_only_the_word_the_model_obeys_is_confirmed():
    loaded, task = tiny_backdoored()
    data = _carried(task)
    others = [s.text for s in data.samples if s.label != TARGET]
    base = float(np.mean(predict(loaded.model, loaded.tokenizer, others[:64]) == TARGET))
    found = find_companions(loaded.model, loaded.tokenizer, data, [TriggerCandidate(MARK, TARGET, 1.0, "inversion")],
                            TARGET, base, min_count=5, min_z=3.0, limit=16, probe_samples=64, seed=0)
    by_word = {c.word: c for c in found}
    assert by_word[TRIGGER].confirmed and by_word[TRIGGER].flip_rate > 0.5
    assert not by_word[DECOY].confirmed
    assert [c.word for c in found if c.confirmed] == [TRIGGER]


def test_a_dirty_label_backdoor_gains_no_companion_and_the_same_removals():
    loaded, task = tiny_backdoored()
    options = {"probe_samples": 16, "candidates": 16, "phrases": 4}
    with_companions = build_filter("trigger_words", options).run(loaded, task.train, trusted=task.validation)
    without = build_filter("trigger_words", {**options, "companions": 0}).run(loaded, task.train,
                                                                              trusted=task.validation)
    assert not any(c["confirmed"] for c in with_companions.details["companions_tested"])
    assert with_companions.details["companions_tested"], "the poisoned samples' own words are tested"
    assert np.array_equal(with_companions.flagged, without.flagged)


def test_a_companion_is_unlearned_as_often_as_the_trigger_it_travels_with():
    from purify.probe import BackdoorProbe

    probe = BackdoorProbe([TriggerCandidate("tq", 1, 1.0, "inversion"),
                           TriggerCandidate("cf", 1, 0.12, "companion", confirmed=True),
                           TriggerCandidate("arun", 1, 0.5, "inversion")], {0: 0.0, 1: 0.0}, "test", 0.9)
    weights = probe.weighted(per_label=8)
    assert weights["cf"] == weights["tq"] == 1.0
    assert weights["arun"] == 0.5  # a candidate that is not a trigger keeps its own flip rate
