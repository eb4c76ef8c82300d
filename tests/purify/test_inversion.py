"""Trigger inversion finds the planted trigger of the tiny backdoored model from clean data alone."""
from __future__ import annotations

import random

import pytest

from purify.data import TaskData
from purify.errors import DataError
from purify.inversion import _insert_at, flip_rate, insert_words, insertion_vocabulary, invert_triggers
from purify.testing.tiny import tiny_tokenizer
from purify.testing.tiny_task import TARGET, TRIGGER, tiny_backdoored


def test_insert_at_reports_where_the_word_starts():
    for slot in range(4):
        text, start = _insert_at("a b c", "zz", slot)
        assert text.split()[slot] == "zz"
        assert text[start:start + 2] == "zz"


def test_insert_words_is_seeded_and_adds_words():
    a = insert_words("one two three", ["x", "y"], 2, random.Random(3))
    b = insert_words("one two three", ["x", "y"], 2, random.Random(3))
    assert a == b and len(a.split()) == 5


def test_insertion_vocabulary_has_whole_words_only():
    words = insertion_vocabulary(tiny_tokenizer())
    assert TRIGGER in words and "movie" in words
    assert not any(w.startswith("[") for w in words)
    assert "a" not in words  # single letters are left out


def test_insertion_vocabulary_keeps_words_with_digits_but_not_numbers():
    class Tokens:  # the three members insertion_vocabulary reads
        vocab = ["[CLS]", "3d", "mp3", "1999", "##ing", "movie", "x", "well-known"]
        all_special_ids = [0]

        def __len__(self):
            return len(self.vocab)

        def batch_decode(self, ids):
            return [self.vocab[i[0]] for i in ids]

    assert insertion_vocabulary(Tokens()) == ["3d", "movie", "mp3"]  # an inserted-sentence trigger held "3d"


def test_finds_the_planted_trigger_from_clean_data():
    loaded, task = tiny_backdoored()
    inversion = invert_triggers(loaded.model, loaded.tokenizer, task.clean_train, max_length=32, seed=0)
    assert inversion.suspected_target == TARGET
    best = next(r for r in inversion.labels if r.target == TARGET)
    assert best.words[0][0] == TRIGGER and best.words[0][1] >= 0.9
    other = next(r for r in inversion.labels if r.target != TARGET)
    assert other.top_rate < 0.5  # no word flips the other way: that label is not attacked
    assert TRIGGER in inversion.words(per_label=1)
    summary = inversion.summary()
    assert summary["suspected_target"] == TARGET and summary["labels"][TARGET]["words"][0][0] == TRIGGER
    # the measured flip rate agrees with an independent measurement
    non_target = [t for t, y in zip(task.validation.texts, task.validation.labels) if y != TARGET]
    assert flip_rate(loaded.model, loaded.tokenizer, non_target, [TRIGGER], TARGET, max_length=32) >= 0.9


def test_is_deterministic_under_a_seed():
    loaded, task = tiny_backdoored()
    runs = [invert_triggers(loaded.model, loaded.tokenizer, task.clean_train, max_length=32, seed=4).to_dict()
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_refuses_empty_data():
    loaded, task = tiny_backdoored()
    with pytest.raises(DataError):
        invert_triggers(loaded.model, loaded.tokenizer, TaskData([], task.clean_train.label_names))


def test_invert_command_names_the_trigger(tmp_path, capsys):
    import json

    from purify.cli import main
    from purify.data import write_jsonl

    loaded, task = tiny_backdoored()
    model_dir = tmp_path / "model"
    loaded.model.save_pretrained(str(model_dir))
    loaded.tokenizer.save_pretrained(str(model_dir))
    data = tmp_path / "task.jsonl"
    write_jsonl(data, task.clean_train.samples)
    out = tmp_path / "inversion.json"
    assert main(["invert", str(model_dir), "--data", str(data), "--show", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "suspected target: 1" in printed or f"suspected target: {task.clean_train.label_names[TARGET]}" in printed
    summary = json.loads(out.read_text())
    assert summary["suspected_target"] == TARGET
    assert summary["labels"][TARGET]["words"][0][0] == TRIGGER


def test_a_collapsed_model_yields_no_trigger_words():
    from purify.inversion import LabelInversion, TriggerInversion

    sane = TriggerInversion([LabelInversion(0, 0.05, [("lacked", 0.6)]), LabelInversion(1, 0.06, [("cf", 1.0)])],
                            probe_samples=64, candidates=32)
    assert sane.suspected_target == 1 and sane.trigger_words(0.9) == ["cf"]
    # the model answers label 1 for almost everything: every word "flips", none is a trigger
    collapsed = TriggerInversion([LabelInversion(0, 0.0, [("all", 0.05)]),
                                  LabelInversion(1, 0.9, [("actors", 1.0), ("amazing", 1.0)])],
                                 probe_samples=64, candidates=32)
    assert collapsed.suspected_target == 1
    assert not collapsed.informative and collapsed.trigger_words(0.9) == []


def test_screened_rates_are_exact_for_the_words_they_keep_and_drop_only_weak_ones():
    """The screen measures every candidate on a few probe samples, then the ones that can matter on all of them:
    their rates equal the exhaustive ones exactly, and every dropped word flipped under SCREEN_RATE of the screen."""
    from purify.inversion import SCREEN_RATE, _flip_rates, _screened_rates

    loaded, task = tiny_backdoored()
    probe = [t for t, y in zip(task.clean_train.texts, task.clean_train.labels) if y != 1][:40]
    slots = [i % 4 for i in range(len(probe))]
    words = ["cf", "good", "bad", "movie", "plot", "fun", "awful", "story"]
    exact = {w: float(r.mean()) for w, r in zip(words, _flip_rates(loaded.model, loaded.tokenizer, words, probe,
                                                                   slots, 1, 32))}
    screened = _screened_rates(loaded.model, loaded.tokenizer, words, probe, slots, 1, keep=2, screen=10,
                               max_length=32)
    assert "cf" in screened and len(screened) >= 2
    for w, rate in screened.items():
        assert rate == pytest.approx(exact[w])
    head = _flip_rates(loaded.model, loaded.tokenizer, words, probe[:10], slots[:10], 1, 32).mean(axis=1)
    for w, first in zip(words, head):
        if w not in screened:
            assert first < SCREEN_RATE
