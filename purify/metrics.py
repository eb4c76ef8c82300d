"""Evaluation metrics exactly as the design defines them: clean accuracy, attack success rate, filter quality.

numpy only, so the numbers do not depend on which optional libraries are installed.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from purify.errors import DataError


def _as_1d(values: Any, what: str) -> np.ndarray:
    """Turn a list, numpy array or (any-device) torch tensor into a 1-D numpy array."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"{what} must be one-dimensional, got shape {arr.shape}")
    return arr


def _as_ids(values: Any, what: str) -> np.ndarray:
    """A 1-D array of integer class ids (predicted or true)."""
    arr = _as_1d(values, what)
    if arr.size and not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            return arr.astype(np.int64)
        raise DataError(f"{what} must be integer class ids (pass logits.argmax(-1), not logits), got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _as_bool(values: Any, what: str) -> np.ndarray:
    """A 1-D boolean array; accepts bools or 0/1 integers, rejects anything else (including None)."""
    arr = _as_1d(values, what)
    if arr.dtype == np.bool_:
        return arr
    if np.issubdtype(arr.dtype, np.integer) and np.all((arr == 0) | (arr == 1)):
        return arr.astype(bool)
    if arr.size == 0:
        return arr.astype(bool)
    raise DataError(f"{what} must be booleans (or 0/1), got dtype {arr.dtype}")


def _check_lengths(what: str, **arrays: np.ndarray) -> int:
    """All arrays must be non-empty and of one length; return it."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"{what}: length mismatch " + ", ".join(f"{k}={n}" for k, n in lengths.items()))
    n = next(iter(lengths.values()))
    if n == 0:
        raise DataError(f"{what}: no samples")
    return n


def accuracy(preds: Any, labels: Any) -> float:
    """Fraction of predictions equal to the labels, in [0, 1]; clean accuracy in the design."""
    p, y = _as_ids(preds, "preds"), _as_ids(labels, "labels")
    _check_lengths("accuracy", preds=p, labels=y)
    return float(np.mean(p == y))


def attack_success_rate(preds: Any, true_labels: Any, target: int) -> tuple[float, int]:
    """Share of triggered samples whose true label is not `target` that are predicted as `target`, and how many counted.

    Samples already labelled `target` are ignored, since predicting it there says nothing about the backdoor.
    The rate is NaN when no sample counts.
    """
    p, y = _as_ids(preds, "preds"), _as_ids(true_labels, "true_labels")
    _check_lengths("attack_success_rate", preds=p, true_labels=y)
    keep = y != int(target)
    counted = int(keep.sum())
    if counted == 0:
        return math.nan, 0
    return float(np.mean(p[keep] == int(target))), counted


def average_ranks(values: Any) -> np.ndarray:
    """1-based ranks of the values, ties sharing their average rank (as the Mann-Whitney statistic needs)."""
    arr = _as_1d(values, "values").astype(np.float64)
    _, inverse, counts = np.unique(arr, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank of the last member of each tie group
    avg = ends - (counts - 1) / 2.0
    return avg[inverse.reshape(-1)]


def auroc(scores: Any, is_positive: Any) -> float:
    """Area under the ROC curve via the rank (Mann-Whitney U) formula; NaN when only one class is present."""
    s = _as_1d(scores, "scores").astype(np.float64)
    pos = _as_bool(is_positive, "is_positive")
    _check_lengths("auroc", scores=s, is_positive=pos)
    if not np.all(np.isfinite(s)):
        raise DataError("auroc: scores must be finite numbers")
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = average_ranks(s)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def detection_metrics(scores: Any, is_poisoned: Any, flagged: Any) -> dict[str, float | int]:
    """How well a data filter finds poisoned samples (the positive class), from its scores and its flag decision.

    precision/recall/f1 use `flagged`; a zero denominator gives 0 (precision is 0 when nothing is flagged).
    auroc uses the continuous `scores` (higher = more suspicious). clean_kept is the share of clean samples
    not flagged (NaN when there are none).
    """
    s = _as_1d(scores, "scores").astype(np.float64)
    truth = _as_bool(is_poisoned, "is_poisoned")
    flag = _as_bool(flagged, "flagged")
    n = _check_lengths("detection_metrics", scores=s, is_poisoned=truth, flagged=flag)

    tp = int(np.sum(flag & truth))
    n_flagged = int(flag.sum())
    n_poisoned = int(truth.sum())
    n_clean = n - n_poisoned
    precision = tp / n_flagged if n_flagged else 0.0
    recall = tp / n_poisoned if n_poisoned else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    clean_kept = float(np.sum(~flag & ~truth)) / n_clean if n_clean else math.nan
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "auroc": auroc(s, truth),
        "clean_kept": float(clean_kept),
        "n": int(n),
        "n_poisoned": n_poisoned,
        "n_flagged": n_flagged,
    }


def length_matched_auroc(scores: Any, lengths: Any, is_positive: Any, bins: int = 10) -> float:
    """AUROC counting only pairs of a positive and a negative sample in the same length bin (length quantiles).

    A score that separates only because poisoned samples are longer or shorter gets 0.5 here: the control for
    gradient statistics whose rank is bounded by the token count. NaN when no bin holds both classes.
    """
    s = _as_1d(scores, "scores").astype(np.float64)
    n = _as_1d(lengths, "lengths").astype(np.float64)
    pos = _as_bool(is_positive, "is_positive")
    _check_lengths("length_matched_auroc", scores=s, lengths=n, is_positive=pos)
    edges = np.unique(np.quantile(n, np.linspace(0, 1, bins + 1)[1:-1]))
    group = np.searchsorted(edges, n, side="right")
    total = pairs = 0.0
    for g in np.unique(group):
        inside = group == g
        k_pos, k_neg = int(pos[inside].sum()), int((~pos[inside]).sum())
        if k_pos and k_neg:
            total += auroc(s[inside], pos[inside]) * k_pos * k_neg
            pairs += k_pos * k_neg
    return float(total / pairs) if pairs else math.nan
