"""teachers.train: fine-tunes a clean teacher once, caches it atomically keyed by (recipe, data hash, seed)."""
from __future__ import annotations

import pytest

import teachers
import teachers.training as training_mod
from purify.checkpoint import load_checkpoint
from purify.errors import CheckpointError, DataError
from purify.inference import predict_logits
from purify.testing.tiny import save_tiny_checkpoint
from purify.testing.tiny_task import make_tiny_task
from purify.training import accuracy_on


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PURIFY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def task():
    return make_tiny_task(seed=0)


def test_trains_a_clean_teacher_and_caches_it(cache, task, monkeypatch):
    teacher = teachers.train("tiny", task.clean_train, task.validation, seed=0)
    folder = teacher.path
    assert folder.parent == cache / "teachers"
    assert folder.name.startswith("tiny-") and folder.name.endswith("-s0")
    meta = teachers.teacher_metadata(folder)
    assert meta["recipe"] == "tiny" and meta["num_train"] == len(task.clean_train)
    assert meta["val_accuracy"] >= 0.9 and meta["best_epoch"] >= 1
    assert accuracy_on(teacher.model, teacher.tokenizer, task.test_clean.texts, task.test_clean.labels) >= 0.9
    # nothing half-written is left next to it
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]

    # the second call loads the cache: no training at all, identical function
    def refuse(*_a, **_k):
        raise AssertionError("the cached teacher was retrained")

    monkeypatch.setattr(training_mod, "train_classifier", refuse)
    again = teachers.train("tiny", task.clean_train, task.validation, seed=0)
    assert again.path == folder
    texts = task.test_clean.texts[:8]
    assert abs(predict_logits(teacher.model, teacher.tokenizer, texts)
               - predict_logits(again.model, again.tokenizer, texts)).max() < 1e-6


def test_cache_key_covers_recipe_data_and_seed(task):
    recipe = teachers.RECIPES["tiny"]
    base = teachers.teacher_dir(recipe, task.clean_train, task.validation, 0)
    assert teachers.teacher_dir(recipe, task.clean_train, task.validation, 0) == base
    assert teachers.teacher_dir(recipe, task.clean_train, task.validation, 1) != base
    assert teachers.teacher_dir(recipe, task.clean_train.subset(range(100)), task.validation, 0) != base
    assert teachers.teacher_dir(recipe, task.clean_train, task.validation.subset(range(50)), 0) != base
    assert teachers.teacher_dir(teachers.RECIPES["minilm-l3"], task.clean_train, task.validation, 0).name \
        .startswith("minilm-l3-")


def test_a_folder_teacher_is_fine_tuned_and_cached(cache, task, tmp_path):
    folder = save_tiny_checkpoint("bert", tmp_path / "clean", seed=5)
    teacher = teachers.train(str(folder), task.clean_train, task.validation, seed=0)
    assert teacher.path.name.startswith("path-clean-")
    assert accuracy_on(teacher.model, teacher.tokenizer, task.validation.texts, task.validation.labels) > 0.5
    load_checkpoint(teacher.path)  # an ordinary safetensors folder


def test_refuses_the_students_folder(cache, task, tmp_path):
    folder = save_tiny_checkpoint("bert", tmp_path / "student")
    student = load_checkpoint(folder)
    with pytest.raises(CheckpointError):
        teachers.train(str(folder), task.clean_train, task.validation, seed=0, student=student)
    assert not (cache / "teachers").exists() or not any((cache / "teachers").iterdir())


def test_needs_data(cache, task):
    empty = task.clean_train.subset([])
    with pytest.raises(DataError):
        teachers.train("tiny", empty, task.validation)
    with pytest.raises(DataError):
        teachers.train("tiny", task.clean_train, empty)
