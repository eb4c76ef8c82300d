"""The trusted split of a zoo entry: 200 clean samples a defender is assumed to hold (the realistic setting).

They are a seeded, label-stratified draw from the entry's clean validation split, which was cut from the dataset
before poisoning and is disjoint from the train and test splits. The attacker's training used that split only to
choose its kept epoch, never as training data. Older entries get the file derived on first use, without a rebuild.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import TaskData, load_task_data, write_jsonl

TRUSTED_SAMPLES = 200
TRUSTED_SPLIT = "trusted"


def stratified_subset(data: TaskData, n: int, seed: int) -> TaskData:
    """`n` samples of `data` (all when it holds fewer) with each label's share kept, largest remainders first."""
    labels = np.asarray(data.labels)
    if n >= len(data):
        return data
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / len(data)
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take), kind="stable")[: n - int(take.sum())]:
        take[i] += 1
    chosen: list[int] = []
    for label, k in zip(classes, take):
        pool = np.flatnonzero(labels == label)
        chosen += sorted(rng.choice(pool, size=int(k), replace=False).tolist())
    return data.subset(sorted(chosen))


def trusted_file(data_dir: Path, label_names: list[str], seed: int) -> Path:
    """`data_dir/trusted.jsonl`, written atomically from `validation.jsonl` when it is not there yet."""
    path = data_dir / f"{TRUSTED_SPLIT}.jsonl"
    if not path.exists():
        validation = load_task_data(data_dir / "validation.jsonl", label_names=label_names)
        write_jsonl(path, stratified_subset(validation, TRUSTED_SAMPLES, seed).samples)
    return path
