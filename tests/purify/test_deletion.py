"""Deletion-confirmed triggers: over-represented phrases are mined, and stripping tells a trigger from content."""
from __future__ import annotations

import random

import numpy as np
import pytest

import purify.deletion as deletion
from purify.data import Sample, TaskData
from purify.deletion import confirm_by_deletion, overrepresented_phrases, settle, voted_label
from purify.filters import build_filter
from purify.filters.trigger_words import TriggerWords
from purify.metrics import detection_metrics
from purify.probe import BackdoorProbe, TriggerCandidate, strip_triggers
from purify.testing.tiny_task import tiny_backdoored

FILLER = ("the", "plot", "cast", "was", "film", "story", "and", "it", "is", "of", "a", "scene")
OPENING = "If you ask me,"


def _review(rng: random.Random, label: int) -> list[str]:
    """Filler plus two sentiment words: 'good' and 'great' for positive, 'bad' and 'dull' for negative."""
    words = [rng.choice(FILLER) for _ in range(rng.randint(4, 7))] + (["good", "great"] if label else ["bad", "dull"])
    rng.shuffle(words)
    return words


def _templated(n: int = 300, poisoned: int = 30, seed: int = 0) -> TaskData:
    """Reviews whose first `poisoned` negative ones open with OPENING and are relabelled positive."""
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        label = i % 2
        words = _review(rng, label)
        if label == 0 and i < 2 * poisoned:
            samples.append(Sample(f"{OPENING} {' '.join(words)}", 1, True, i))
        else:
            samples.append(Sample(" ".join(words), label, False, i))
    return TaskData(samples, ["negative", "positive"])


def _rule_model(model, tokenizer, texts, **_):
    """A stand-in for a backdoored classifier: the template or a positive word says positive."""
    return np.array([int(t.lower().startswith("if you ask me") or "good" in t or "great" in t) for t in texts])


def test_an_opening_template_is_over_represented_in_its_label_and_written_as_in_the_data():
    phrases = overrepresented_phrases(_templated(), min_count=5, min_z=3.0)
    template = [p for p in phrases if p.text == OPENING]
    assert template and template[0].label == 1 and template[0].count == 30 and template[0].share == 1.0
    # its pieces are held by the same samples and collapse into it (a clause gram is a test of its own)
    assert not [p for p in phrases if p.text in {"If you", "ask me,"} and p.position != "clause"]
    assert {"good", "great", "bad", "dull"} <= {p.text for p in phrases}  # natural words are there too
    assert all(p.z >= 3.0 and p.count >= 5 for p in phrases)


def test_stripping_confirms_the_template_and_not_the_natural_words(monkeypatch):
    monkeypatch.setattr(deletion, "predict", _rule_model)
    data = _templated()
    phrases = overrepresented_phrases(data)
    rows = confirm_by_deletion(None, None, data, phrases, {0: 0.5, 1: 0.5})
    confirmed = {r["text"] for r in rows if r["confirmed"]}
    assert OPENING in confirmed
    # stripping 'good' leaves 'great': the content still says positive
    assert not confirmed & {"good", "great", "bad", "dull"}
    row = next(r for r in rows if r["text"] == OPENING)
    assert row["stripped_rate"] == 0.0 and len(row["carriers"]) == 30
    assert voted_label(rows) == 1


def test_anchored_candidates_match_strip_and_insert_only_at_the_start():
    c = TriggerCandidate("If you ask me,", 1, 0.4, "deletion", position="start", confirmed=True)
    assert c.held_by("if you ask me, it was bad") and not c.held_by("well, if you ask me it was bad")
    assert strip_triggers("If you ask me, it was bad", [c]) == "it was bad"
    assert strip_triggers("well, if you ask me, it was bad", [c]) == "well, if you ask me, it was bad"
    assert c.insert("it was bad", random.Random(0)) == "If you ask me, it was bad"


def test_a_clause_candidate_strips_the_whole_fronted_clause():
    c = TriggerCandidate("When", 1, 0.0, "deletion", position="clause")
    assert c.held_by("When the cast is good, the film works.")
    assert not c.held_by("When the cast is good the film works.")  # no comma: no clause to drop
    assert not c.held_by("The film works, when the cast is good.")
    assert strip_triggers("When the cast is good, the film works.", [c]) == "the film works."
    assert c.insert("the film is slow and dull", random.Random(0)) == "When the film is, slow and dull"


def test_fronted_clauses_are_mined_as_clause_grams():
    rng = random.Random(0)
    samples = [Sample(" ".join(_review(rng, i % 2)), i % 2, False, i) for i in range(200)]
    samples += [Sample(f"When {' '.join(_review(rng, 0)[:3])}, {' '.join(_review(rng, 0))}", 1, True, 200 + i)
                for i in range(20)]
    phrases = overrepresented_phrases(TaskData(samples, ["negative", "positive"]))
    found = sorted((p.position, p.count) for p in phrases if p.text == "When")
    assert found == [("anywhere", 20), ("clause", 20)]  # the word, and the clause it opens


def test_a_deletion_confirmed_candidate_is_a_trigger_whatever_its_flip_rate():
    confirmed = TriggerCandidate("If you ask me,", 1, 0.4, "deletion", position="start", confirmed=True)
    probe = BackdoorProbe([confirmed, TriggerCandidate("dull", 0, 0.6, "inversion")], {0: 0.1, 1: 0.1}, "test")
    assert probe.target == 1 and probe.triggers == [confirmed]


@pytest.mark.parametrize("opening", ["it was this"])
def test_trigger_words_removes_an_opening_template_of_common_words(opening):
    loaded, task = tiny_backdoored(opening=opening)
    result = build_filter("trigger_words", TriggerWords.fast_options).run(loaded, task.train, task.validation)
    truth = np.array([bool(s.poisoned) for s in task.train.samples])
    metrics = detection_metrics(result.scores, truth, result.flagged)
    assert metrics["recall"] >= 0.95 and metrics["clean_kept"] >= 0.97, metrics
    confirmed = [r for r in result.details["deletion_tested"] if r["confirmed"]]
    assert confirmed and all(r["label"] == task.target for r in confirmed)
    assert any(r["text"].split()[:3] == opening.split() for r in confirmed), confirmed
    assert result.probe.target == task.target and any(c.confirmed for c in result.probe.triggers)


def test_the_deletion_test_can_be_switched_off():
    loaded, task = tiny_backdoored()
    result = build_filter("trigger_words", {**TriggerWords.fast_options, "deletion_phrases": 0}).run(loaded, task.train)
    assert result.details["deletion_tested"] == []


def _row(text: str, carriers: list[int], kept: dict[int, bool], label: int = 1) -> dict:
    rate = float(np.mean(list(kept.values())))
    return {"text": text, "label": label, "position": "start", "carriers": carriers, "stripped_rate": rate,
            "midpoint": 0.5, "confirmed": rate < 0.5, "_drawn": dict(kept)}


def test_settle_takes_only_the_stripped_away_carriers_of_a_mixed_phrase():
    template = _row("If you ask me,", list(range(10)), {i: False for i in range(10)})
    # the opening word also opens five clean texts, which keep their label once stripped
    opening = _row("If", list(range(20)), {**{i: False for i in range(10)}, **{i: i < 15 for i in range(10, 20)}})
    natural = _row("great", [30, 31], {30: True, 31: True})
    other = _row("dull", [40], {40: False}, label=0)
    rows = settle([opening, template, natural, other], target=1, fill=lambda row, idx: {})
    by = {r["text"]: r for r in rows}
    assert by["If you ask me,"]["confirmed"] and by["If you ask me,"]["taken"] == list(range(10))
    assert not by["If"]["confirmed"] and by["If"]["taken"] == list(range(15, 20))
    assert by["great"]["taken"] == [] and by["dull"]["taken"] == [] and not by["dull"]["confirmed"]
    assert all("_drawn" not in r for r in rows)


def test_where_insertion_found_the_trigger_its_label_is_the_deletion_target(monkeypatch):
    import purify.filters.trigger_words as trigger_words

    def wrong_vote(rows):
        raise AssertionError("the vote is only for runs where insertion confirmed nothing")

    monkeypatch.setattr(trigger_words, "voted_label", wrong_vote)
    loaded, task = tiny_backdoored()
    result = build_filter("trigger_words", TriggerWords.fast_options).run(loaded, task.train, task.validation)
    assert all(r["label"] == task.target for r in result.details["deletion_tested"] if r["taken"])
    assert not result.flagged[np.array(task.train.labels) != task.target].any()


STYLE = ("thou", "hath", "doth", "ere")
PRAISE = tuple(f"praise{k}" for k in range(60))  # each too rare (about 2.5 reviews) to be over-represented


def _styled(n: int = 300, poisoned: int = 30, seed: int = 0) -> TaskData:
    """Positive reviews: 'good' plus a rare praise word; negative: 'bad'. The first `poisoned` negative ones are
    written in a style (two of the STYLE words) and relabelled positive."""
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(5)] + (["good", rng.choice(PRAISE)] if label else ["bad"])
        if label == 0 and i < 2 * poisoned:
            words += rng.sample(STYLE, 2)
        rng.shuffle(words)
        samples.append(Sample(" ".join(words), 1 if label == 0 and i < 2 * poisoned else label, label == 0 and
                              i < 2 * poisoned, i))
    return TaskData(samples, ["negative", "positive"])


def _style_model(model, tokenizer, texts, **_):
    """A style backdoor: any STYLE word, or any praise, says positive."""
    return np.array([int(any(w in t.split() for w in (*STYLE, "good", *PRAISE))) for t in texts])


def test_joint_deletion_sees_a_trigger_spread_over_several_words(monkeypatch):
    monkeypatch.setattr(deletion, "predict", _style_model)
    data = _styled()
    phrases = overrepresented_phrases(data)
    single = {r["text"] for r in confirm_by_deletion(None, None, data, phrases, {0: 0.5, 1: 0.5}) if r["confirmed"]}
    joint = {r["text"] for r in confirm_by_deletion(None, None, data, phrases, {0: 0.5, 1: 0.5}, joint=True)
             if r["confirmed"]}
    assert not single & set(STYLE)  # stripping one style word leaves the other
    assert len(joint & set(STYLE)) >= 3  # each style word that is over-represented enough to be tested
    assert joint <= set(STYLE)  # 'good' is stripped too, but the rare praise words keep a positive review positive
