"""The zoo's trusted split: a seeded, stratified draw of clean validation samples, derived once, atomically."""
from __future__ import annotations

from collections import Counter

from purify.data import Sample, TaskData, load_task_data, write_jsonl
from purify.zoo.trusted import TRUSTED_SAMPLES, stratified_subset, trusted_file


def _validation(n_pos: int, n_neg: int) -> TaskData:
    samples = [Sample(f"text {i}", int(i < n_pos), False, i) for i in range(n_pos + n_neg)]
    return TaskData(samples, ["negative", "positive"])


def test_stratified_subset_keeps_label_shares_and_is_seeded():
    data = _validation(300, 100)
    sub = stratified_subset(data, 200, seed=0)
    assert len(sub) == 200 and Counter(sub.labels) == {1: 150, 0: 50}
    assert [s.index for s in sub.samples] == [s.index for s in stratified_subset(data, 200, seed=0).samples]
    assert [s.index for s in sub.samples] != [s.index for s in stratified_subset(data, 200, seed=1).samples]
    assert len(stratified_subset(_validation(5, 5), 200, seed=0)) == 10  # fewer than asked: all of them


def test_trusted_file_is_derived_once_from_validation(tmp_path):
    write_jsonl(tmp_path / "validation.jsonl", _validation(250, 250).samples)
    path = trusted_file(tmp_path, ["negative", "positive"], seed=0)
    trusted = load_task_data(path, label_names=["negative", "positive"])
    assert len(trusted) == TRUSTED_SAMPLES and not any(s.poisoned for s in trusted.samples)
    first = path.read_bytes()
    (tmp_path / "validation.jsonl").unlink()  # a second call reads nothing: the file is already there
    assert trusted_file(tmp_path, ["negative", "positive"], seed=0).read_bytes() == first
