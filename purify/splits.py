"""Seeded, label-stratified splits and batches of task samples (reproducible for a given seed)."""
from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence

from purify.data import Sample, TaskData
from purify.errors import DataError



def _as_sample_list(samples_or_data: TaskData | Iterable[Sample]) -> list[Sample]:
    """Accept either TaskData or any iterable of Sample."""
    if isinstance(samples_or_data, TaskData):
        return list(samples_or_data.samples)
    return list(samples_or_data)


def _validate_fractions(fractions: Sequence[float]) -> list[float]:
    """Fractions must be finite, non-negative and sum to 1."""
    fr = [float(f) for f in fractions]
    if not fr:
        raise DataError("split fractions are empty")
    if any(not math.isfinite(f) or f < 0 for f in fr):
        raise DataError(f"split fractions must be finite and non-negative, got {list(fractions)}")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise DataError(f"split fractions must sum to 1, got {list(fractions)} (sum {sum(fr):g})")
    return fr


def _largest_remainder(n: int, fractions: list[float]) -> list[int]:
    """Integer part sizes summing to n, as close to n*fraction as possible."""
    exact = [n * f for f in fractions]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(fractions)), key=lambda p: (-(exact[p] - counts[p]), p))
    for p in order[: n - sum(counts)]:
        counts[p] += 1
    return counts


def split_samples(
    samples: TaskData | Sequence[Sample], fractions: Sequence[float], seed: int, stratify: bool = True
) -> list[list[Sample]]:
    """Split samples into disjoint parts of the given fractions, seeded and label-stratified, so splits are
    reproducible."""
    fr = _validate_fractions(fractions)
    items = _as_sample_list(samples)
    rng = random.Random(seed)
    targets = _largest_remainder(len(items), fr)

    groups: dict[int, list[int]] = {}
    for pos, s in enumerate(items):
        groups.setdefault(s.label if stratify else 0, []).append(pos)
    keys = sorted(groups)
    for k in keys:
        rng.shuffle(groups[k])

    # Controlled rounding: each label gets floor(n_g * f) per part, then the leftovers go where the
    # fractional parts are largest while keeping the overall part sizes at their targets.
    alloc = {k: [math.floor(len(groups[k]) * f) for f in fr] for k in keys}
    left = {k: len(groups[k]) - sum(alloc[k]) for k in keys}
    deficit = [targets[p] - sum(alloc[k][p] for k in keys) for p in range(len(fr))]
    cells = [
        (-(len(groups[k]) * fr[p] - alloc[k][p]), rng.random(), k, p) for k in keys for p in range(len(fr)) if fr[p] > 0
    ]
    cells.sort()
    for _, _, k, p in cells:
        if left[k] > 0 and deficit[p] > 0:
            alloc[k][p] += 1
            left[k] -= 1
            deficit[p] -= 1
    for k in keys:  # whatever the greedy pass could not place (rare), in part order
        for p in range(len(fr)):
            while left[k] > 0 and deficit[p] > 0:
                alloc[k][p] += 1
                left[k] -= 1
                deficit[p] -= 1

    part_of = [0] * len(items)
    for k in keys:
        start = 0
        for p, count in enumerate(alloc[k]):
            for pos in groups[k][start : start + count]:
                part_of[pos] = p
            start += count
    parts: list[list[Sample]] = [[] for _ in fr]
    for pos, s in enumerate(items):  # keep source order inside each part
        parts[part_of[pos]].append(s)
    return parts


def iter_batches(
    samples_or_data: TaskData | Iterable[Sample], batch_size: int, *, shuffle: bool = False, seed: int = 0
) -> Iterator[list[Sample]]:
    """Yield lists of at most batch_size samples, in order or in a seeded shuffle, the last one possibly short."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    items = _as_sample_list(samples_or_data)
    if shuffle:
        random.Random(seed).shuffle(items)

    def _gen() -> Iterator[list[Sample]]:
        for start in range(0, len(items), batch_size):
            yield items[start : start + batch_size]

    return _gen()
