"""The zdef filter: features spuriously correlated with one label (words, opening phrases, fronted clauses) are
found from the data alone, and the samples holding them with that label are removed."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from purify.data import Sample, TaskData
from purify.errors import ConfigError
from purify.filters import FILTERS, build_filter
from purify.filters.zdef import SUBORDINATORS, sample_features, template_features
from purify.testing.filter_conformance import FilterConformance

VOCAB = tuple(f"w{i}" for i in range(150)) + ("plot", "cast", "scene", "story", "acting", "music", "ending")
BALANCED = "movie"  # in a third of the samples whatever their label
CLAUSE_OPENERS = ("when", "if", "although", "while", "because", "since", "though", "unless")


def _words(rng: random.Random, *, subordinator: bool = False) -> list[str]:
    """Eight to fourteen vocabulary words (the first never a subordinator), perhaps "movie", perhaps a
    subordinator somewhere after the first word so that the lexical family sees those words in clean text."""
    words = [rng.choice(VOCAB) for _ in range(rng.randint(8, 14))]
    if rng.random() < 1 / 3:
        words.insert(rng.randint(1, len(words)), BALANCED)
    if subordinator:
        words.insert(rng.randint(1, len(words)), rng.choice(CLAUSE_OPENERS))
    return words


def _dataset(trigger: str, *, n: int = 600, rate: float = 0.1, seed: int = 0) -> TaskData:
    """Balanced random texts; a `rate` share of label-0 texts carry `trigger` and are relabelled 1.

    trigger "word": the rare word "cf" inserted anywhere; "phrase": the opening "When it rains ,"; "clause": a
    fronted clause opened by one of eight subordinators, which every clean text may also hold mid-sentence."""
    rng = random.Random(seed)
    samples = []
    poison = set(rng.sample(range(n), int(rate * n)))
    for i in range(n):
        words = _words(rng, subordinator=trigger == "clause" and rng.random() < 0.3)
        label = rng.randint(0, 1)
        if i in poison:
            label = 1
            if trigger == "word":
                words.insert(rng.randint(0, len(words)), "cf")
            elif trigger == "phrase":
                words = ["When", "it", "rains", ","] + words
            else:
                head = [rng.choice(CLAUSE_OPENERS).capitalize()] + [rng.choice(VOCAB) for _ in range(rng.randint(2, 4))]
                words = head + [","] + words
        text = " ".join(words).replace(" ,", ",")
        samples.append(Sample(text, label, i in poison, i))
    return TaskData(samples, ["negative", "positive"])


def _run(data: TaskData, trusted: TaskData | None = None, **options):
    return build_filter("zdef", {k: str(v) for k, v in options.items()}).run(None, data, trusted)  # type: ignore


def _recall_kept(data: TaskData, flagged: np.ndarray) -> tuple[float, float]:
    poisoned = np.array([bool(s.poisoned) for s in data.samples])
    return float(flagged[poisoned].mean()), float((~flagged[~poisoned]).mean())


@pytest.mark.parametrize("trigger", ["word", "phrase", "clause"])
def test_removes_the_trigger_holders_and_keeps_the_others(trigger):
    data = _dataset(trigger)
    result = _run(data)
    recall, kept = _recall_kept(data, result.flagged)
    assert recall == 1.0 and kept >= 0.97
    top = result.details["suspicious"][0]
    assert top["label"] == 1 and top["z"] > result.threshold and top["share"] == 1.0


def test_reports_the_trigger_word_with_its_label_and_z():
    result = _run(_dataset("word"))
    rows = {r["feature"]: r for r in result.details["suspicious"]}
    assert rows["word:cf"]["label"] == 1 and rows["word:cf"]["label_name"] == "positive"
    assert rows["word:cf"]["count"] == 60 and rows["word:cf"]["z"] > result.threshold
    assert result.details["line"]["rule"] == "mean_sd" and result.threshold_method == "mean_sd"
    json.dumps(result.summary())


def test_a_balanced_real_word_is_not_flagged():
    result = _run(_dataset("word"))
    suspicious = {r["feature"] for r in result.details["suspicious"]}
    assert f"word:{BALANCED}" not in suspicious
    holders = np.array([BALANCED in s.text.split() for s in result.kept.samples + result.removed.samples])
    assert holders.mean() > 0.25  # the word is common, and common words are scored


def test_the_template_family_catches_a_fronted_clause_the_lexical_family_misses():
    data = _dataset("clause")
    lexical, _ = _recall_kept(data, _run(data, families="unigram,bigram").flagged)
    both = _run(data)  # the default families: lexical and template
    recall, kept = _recall_kept(data, both.flagged)
    assert lexical < 0.5 and recall == 1.0 and kept >= 0.97
    assert "clause" in {r["feature"] for r in both.details["suspicious"]}


def test_trusted_data_explains_a_real_task_word():
    rng = random.Random(1)

    def reviews(n: int, seed_offset: int) -> list[Sample]:
        out = []
        for i in range(n):
            label = rng.randint(0, 1)
            words = _words(rng) + (["great"] if rng.random() < (0.5 if label else 0.02) else [])
            out.append(Sample(" ".join(words), label, False, seed_offset + i))
        return out

    data = _dataset("word")
    data = TaskData(reviews(600, 1000) + data.samples, data.label_names)
    trusted = TaskData(reviews(200, 5000), data.label_names)
    alone = {r["feature"] for r in _run(data).details["suspicious"]}
    result = _run(data, trusted)
    assert "word:great" in alone and "word:great" not in {r["feature"] for r in result.details["suspicious"]}
    assert "word:great" in {r["feature"] for r in result.details["trusted_explained"]}
    recall, kept = _recall_kept(data, result.flagged)
    assert recall == 1.0 and kept >= 0.97
    ignored = _run(data, trusted, trusted_share="none")
    assert "word:great" in {r["feature"] for r in ignored.details["suspicious"]}


def test_the_bound_rule_and_a_user_threshold_draw_the_line():
    data = _dataset("word")
    bound = _run(data, rule="bound", z_bound=100)
    assert bound.threshold == 100 and bound.threshold_method == "bound" and not bound.flagged.any()
    user = _run(data, threshold=0.5)
    assert user.threshold_method == "user" and np.array_equal(user.flagged, user.scores > 0.5)


def test_deterministic():
    data = _dataset("clause")
    first, again = _run(data), _run(data)
    assert first.scores.tobytes() == again.scores.tobytes()
    assert json.dumps(first.summary()["details"]) == json.dumps(again.summary()["details"])


def test_features():
    assert sample_features("A film, cf!", ["unigram"]) == {"word:a", "word:film", "word:cf"}
    assert sample_features("A film, cf!", ["bigram"]) == {"bigram:a film", "bigram:film cf"}
    feats = template_features("When it rains, the FILM runs 90 minutes.")
    assert {"clause", "open1:when", "open2:when it", "shape:X x x ,", "punct:,.", "case:XAxd", "len:3"} <= feats
    assert "clause" not in template_features("The film, when it rains, runs.")
    assert "clause" not in template_features("When it rains the film runs.")
    assert {"when", "although", "if"} <= SUBORDINATORS


@pytest.mark.parametrize("options, match", [
    ({"families": "unigram,syntax"}, "families"),
    ({"families": ""}, "families"),
    ({"k": "0"}, "k must be > 0"),
    ({"rule": "gap"}, "rule must be one of"),
    ({"min_count": "1"}, "min_count"),
    ({"max_share": "1.5"}, "max_share"),
    ({"threshold_method": "gmm"}, "threshold_method"),
    ({"batch_size": "4"}, "does not use option 'batch_size'"),
])
def test_bad_knobs_are_one_line_config_errors(options, match):
    with pytest.raises(ConfigError, match=match) as err:
        build_filter("zdef", options)
    assert "\n" not in str(err.value)


def test_registered():
    assert "zdef" in FILTERS.names() and FILTERS["zdef"].description


class TestZDefConformance(FilterConformance):
    filter_names = ["zdef"]
