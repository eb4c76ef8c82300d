"""Conformance kit every registered data filter must pass (the filters' counterpart of `StrategyConformance`).

Use it from a test module::

    from purify.testing.filter_conformance import FilterConformance
    class TestMine(FilterConformance):
        filter_names = ["my_filter"]

Each check runs the filter with its ``fast_options`` on a quarter of the tiny backdoored task: its result is
consistent (scores for every sample, kept plus removed is the input, flags are the scores above the threshold), a
JSON-able summary, the same under the same seed, blind to the ground-truth flags, overridden by a user threshold,
an error on empty data, and it leaves the suspicious model's weights and mode as they were.
"""
from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import numpy as np
import pytest
import torch

from ..data import TaskData
from ..errors import DataError
from ..filters import FILTERS, FilterResult, build_filter
from .tiny_task import tiny_backdoored


def _without_flags(data: TaskData) -> TaskData:
    return TaskData([dataclasses.replace(s, poisoned=None) for s in data.samples], data.label_names, data.source)


def _setup(name: str, **options):
    loaded, task = tiny_backdoored()
    data = task.train.subset(range(0, len(task.train), 4))
    filt = build_filter(name, {**FILTERS[name].filter_cls.fast_options, **options})
    return filt, loaded, data, task.validation


class FilterConformance:
    """Behaviour every filter promises; subclass and set `filter_names` (default: every registered one)."""

    filter_names: ClassVar[list[str] | None] = None

    @classmethod
    def names(cls) -> list[str]:
        return cls.filter_names if cls.filter_names is not None else FILTERS.names()

    def pytest_generate_tests(self, metafunc) -> None:
        """Parametrise `filter_name` over `filter_names` (pytest calls this hook on test classes)."""
        if "filter_name" in metafunc.fixturenames:
            metafunc.parametrize("filter_name", type(self).names())

    def test_result_is_consistent_and_json_able(self, filter_name: str) -> None:
        filt, loaded, data, trusted = _setup(filter_name)
        result = filt.run(loaded, data, trusted)
        assert isinstance(result, FilterResult) and result.method == filter_name
        assert result.scores.shape == (len(data),) and np.isfinite(result.scores).all()
        assert result.flagged.dtype == bool and len(result.kept) + len(result.removed) == len(data)
        assert np.array_equal(result.flagged, result.scores > result.threshold)
        removed = [data.samples[i].index for i in np.flatnonzero(result.flagged)]
        assert [s.index for s in result.removed.samples] == removed
        summary = json.loads(json.dumps(result.summary(include_scores=True)))
        assert summary["n"] == len(data) and summary["n_removed"] == len(result.removed)
        assert summary["threshold_method"] == result.threshold_method and len(summary["scores"]) == len(data)

    def test_deterministic_and_blind_to_ground_truth(self, filter_name: str) -> None:
        filt, loaded, data, trusted = _setup(filter_name)
        first = filt.run(loaded, data, trusted)
        again = filt.run(loaded, _without_flags(data), trusted)
        assert np.allclose(again.scores, first.scores, rtol=1e-5, atol=1e-9)
        assert np.array_equal(again.flagged, first.flagged)

    def test_a_user_threshold_overrides_the_rule(self, filter_name: str) -> None:
        filt, loaded, data, trusted = _setup(filter_name)
        scores = filt.run(loaded, data, trusted).scores
        cut = float(np.median(scores))
        fixed = build_filter(filter_name, {**FILTERS[filter_name].filter_cls.fast_options, "threshold": cut})
        result = fixed.run(loaded, data, trusted)
        assert result.threshold == cut and np.array_equal(result.flagged, result.scores > cut)

    def test_empty_data_is_an_error(self, filter_name: str) -> None:
        filt, loaded, data, trusted = _setup(filter_name)
        with pytest.raises(DataError):
            filt.run(loaded, data.subset([]), trusted)

    def test_leaves_the_model_as_it_was(self, filter_name: str) -> None:
        filt, loaded, data, trusted = _setup(filter_name)
        loaded.model.eval()
        before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
        filt.run(loaded, data, trusted)
        assert not loaded.model.training
        after = loaded.model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert all(p.grad is None or not p.grad.any() for p in loaded.model.parameters())
