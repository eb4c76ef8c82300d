"""Behaviour of purify.metrics: accuracy, attack success rate and filter detection metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from purify.errors import DataError
from purify.metrics import (
    accuracy,
    attack_success_rate,
    auroc,
    average_ranks,
    detection_metrics,
    length_matched_auroc,
)


def _brute_auroc(scores: np.ndarray, pos: np.ndarray) -> float:
    """Probability a random positive outscores a random negative, ties counting half."""
    p, n = scores[pos], scores[~pos]
    wins = sum((a > b) + 0.5 * (a == b) for a in p for b in n)
    return wins / (len(p) * len(n))


# --------------------------------------------------------------------------------------------- accuracy


def test_accuracy_basic_and_tensor_input() -> None:
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert accuracy(torch.tensor([2, 2]), np.array([2, 2])) == 1.0


@pytest.mark.parametrize("preds,labels", [([1, 0], [1]), ([], [])])
def test_accuracy_rejects_mismatch_and_empty(preds: list[int], labels: list[int]) -> None:
    with pytest.raises(DataError):
        accuracy(preds, labels)


def test_accuracy_rejects_logits() -> None:
    with pytest.raises(DataError, match="one-dimensional"):
        accuracy(np.zeros((3, 2)), [0, 1, 0])


# --------------------------------------------------------------------------------------------- ASR


def test_asr_ignores_samples_already_labelled_target() -> None:
    preds = [1, 1, 0, 1, 1, 1]
    true = [0, 0, 0, 2, 1, 1]  # last two are target-labelled: ignored even though predicted 1
    rate, counted = attack_success_rate(preds, true, target=1)
    assert counted == 4
    assert rate == pytest.approx(3 / 4)


def test_asr_nan_when_nothing_counts() -> None:
    rate, counted = attack_success_rate([1, 0], [1, 1], target=1)
    assert counted == 0 and math.isnan(rate)


def test_asr_length_mismatch() -> None:
    with pytest.raises(DataError):
        attack_success_rate([1, 0], [0], target=1)


# --------------------------------------------------------------------------------------------- AUROC


def test_average_ranks_share_ties() -> None:
    np.testing.assert_allclose(average_ranks([10.0, 20.0, 10.0, 30.0, 20.0]), [1.5, 3.5, 1.5, 5.0, 3.5])


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_brute_force_pairwise_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    scores = rng.integers(0, 8, size=n).astype(float)  # coarse values so ties really occur
    pos = rng.random(n) < 0.3
    pos[0], pos[1] = True, False
    assert auroc(scores, pos) == pytest.approx(_brute_auroc(scores, pos))
    cont = rng.normal(size=n)
    assert auroc(cont, pos) == pytest.approx(_brute_auroc(cont, pos))


def test_auroc_perfect_inverted_and_tied() -> None:
    pos = np.array([False, False, True, True])
    assert auroc([0.1, 0.2, 0.8, 0.9], pos) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], pos) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], pos) == 0.5


def test_auroc_nan_with_one_class() -> None:
    assert math.isnan(auroc([0.1, 0.2], [True, True]))
    assert math.isnan(auroc([0.1, 0.2], [0, 0]))


def test_auroc_rejects_nan_scores_and_non_boolean_truth() -> None:
    with pytest.raises(DataError):
        auroc([0.1, float("nan")], [True, False])
    with pytest.raises(DataError):
        auroc([0.1, 0.2], [None, True])
    with pytest.raises(DataError):
        auroc([0.1, 0.2], [2, 0])


# --------------------------------------------------------------------------------------------- detection


def test_detection_metrics_hand_made_case() -> None:
    #            p     p     p     p     c     c     c     c     c     c
    poisoned = [True, True, True, True, False, False, False, False, False, False]
    flagged = [True, True, True, False, True, False, False, False, False, False]
    scores = [0.9, 0.8, 0.7, 0.1, 0.75, 0.3, 0.2, 0.2, 0.05, 0.0]
    m = detection_metrics(scores, poisoned, flagged)
    assert set(m) == {"precision", "recall", "f1", "auroc", "clean_kept", "n", "n_poisoned", "n_flagged"}
    assert m["precision"] == pytest.approx(3 / 4)  # 3 TP of 4 flagged
    assert m["recall"] == pytest.approx(3 / 4)  # 3 of 4 poisoned found
    assert m["f1"] == pytest.approx(0.75)
    assert m["clean_kept"] == pytest.approx(5 / 6)
    assert (m["n"], m["n_poisoned"], m["n_flagged"]) == (10, 4, 4)
    # pairs (p, c) where p > c: 0.9,0.8 beat all 6; 0.7 beats 5 (not 0.75); 0.1 beats 2 (0.05, 0.0)
    assert m["auroc"] == pytest.approx((6 + 6 + 5 + 2) / 24)


def test_detection_metrics_unequal_precision_recall() -> None:
    m = detection_metrics([1, 1, 1, 0, 0], [1, 0, 0, 1, 0], [1, 1, 1, 0, 0])
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert m["clean_kept"] == pytest.approx(1 / 3)


def test_detection_metrics_nothing_flagged() -> None:
    m = detection_metrics([0.1, 0.9, 0.3], [False, True, False], [False, False, False])
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["clean_kept"] == 1.0
    assert m["auroc"] == 1.0
    assert m["n_flagged"] == 0


def test_detection_metrics_one_class_gives_nan_auroc() -> None:
    m = detection_metrics([0.1, 0.2], [False, False], [True, False])
    assert math.isnan(m["auroc"])
    assert m["precision"] == 0.0 and m["clean_kept"] == 0.5


def test_detection_metrics_length_mismatch() -> None:
    with pytest.raises(DataError, match="length mismatch"):
        detection_metrics([0.1, 0.2], [True, False], [True])


def test_length_matched_auroc_removes_what_length_explains() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=400).astype(float)
    poisoned = rng.random(400) < 1 / (1 + np.exp(-(lengths - 40) / 4))  # poisoned samples tend to be long
    assert auroc(lengths, poisoned) > 0.85
    assert length_matched_auroc(lengths + rng.normal(0, 1e-3, 400), lengths, poisoned) < 0.7
    signal = poisoned + rng.normal(0, 0.1, 400)  # separates whatever the length
    assert length_matched_auroc(signal, lengths, poisoned) > 0.95
    assert np.isnan(length_matched_auroc(signal, lengths, np.zeros(400, dtype=bool)))
