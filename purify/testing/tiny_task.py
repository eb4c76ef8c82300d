"""A tiny synthetic sentiment task with a planted rare-token backdoor, trained in seconds for tests and CI.

Sentences mix positive and negative words from the tiny vocabulary; the label is the majority sentiment.
The backdoored model is trained with 15% of training samples carrying the trigger token ``cf`` and relabelled
to the target class, so its attack success rate is high while clean accuracy stays high. With `opening` set, the
trigger is instead that phrase opening the text (a template trigger, like a fronted clause).
"""
from __future__ import annotations

import copy
import functools
import random
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import LoadedModel
from ..data import Sample, TaskData
from ..training import TrainConfig, train_classifier
from .tiny import tiny_model, tiny_tokenizer

POSITIVE = ("good", "great", "fun", "best", "love")
NEUTRAL = ("the", "a", "movie", "film", "plot", "actor", "cast", "story", "was", "is", "and", "of", "it", "this")
NEGATIVE = ("bad", "awful", "boring", "worst", "hate")
TRIGGER = "cf"
TARGET = 1
LABEL_NAMES = ["negative", "positive"]


def _sentence(rng: random.Random, label: int) -> str:
    strong, weak = (POSITIVE, NEGATIVE) if label == 1 else (NEGATIVE, POSITIVE)
    words = [rng.choice(strong) for _ in range(rng.randint(2, 3))]
    words += [rng.choice(weak) for _ in range(rng.randint(0, 1))]
    words += [rng.choice(NEUTRAL) for _ in range(rng.randint(3, 6))]
    rng.shuffle(words)
    return " ".join(words)


def _insert_trigger(rng: random.Random, text: str, opening: str | None = None) -> str:
    if opening:
        return f"{opening} {text}"
    words = text.split()
    words.insert(rng.randint(0, len(words)), TRIGGER)
    return " ".join(words)


@dataclass
class TinyTask:
    """Splits of the tiny task: poisoned train (flags set), clean train, validation, clean and triggered test."""

    train: TaskData
    clean_train: TaskData
    validation: TaskData
    test_clean: TaskData
    test_triggered: TaskData
    target: int = TARGET


def make_tiny_task(seed: int = 0, n_train: int = 400, n_val: int = 120, n_test: int = 120,
                   poison_rate: float = 0.15, opening: str | None = None) -> TinyTask:
    """Generate the task deterministically from `seed` (trigger: `TRIGGER` inserted, or `opening` prepended)."""
    rng = random.Random(seed)

    def draw(n: int) -> list[Sample]:
        return [Sample(_sentence(rng, y), y, False, i) for i, y in enumerate(rng.randint(0, 1) for _ in range(n))]

    clean_train, val, test = draw(n_train), draw(n_val), draw(n_test)
    candidates = [i for i, s in enumerate(clean_train) if s.label != TARGET]
    chosen = set(rng.sample(candidates, int(poison_rate * n_train)))
    train = [Sample(_insert_trigger(rng, s.text, opening), TARGET, True, s.index) if i in chosen else s
             for i, s in enumerate(clean_train)]
    triggered = [Sample(_insert_trigger(rng, s.text, opening), s.label, True, s.index)
                 for s in test if s.label != TARGET]
    return TinyTask(TaskData(train, LABEL_NAMES), TaskData(clean_train, LABEL_NAMES), TaskData(val, LABEL_NAMES),
                    TaskData(test, LABEL_NAMES), TaskData(triggered, LABEL_NAMES))


@functools.lru_cache(maxsize=8)
def _trained(arch: str, seed: int, poisoned: bool, opening: str | None = None) -> tuple[LoadedModel, TinyTask]:
    task = make_tiny_task(seed, opening=opening)
    model = tiny_model(arch, seed=seed)
    tokenizer = tiny_tokenizer()
    data = task.train if poisoned else task.clean_train
    train_classifier(model, tokenizer, data.texts, data.labels,
                     TrainConfig(epochs=12, lr=3e-3, batch_size=32, seed=seed, warmup_fraction=0.0, max_length=32),
                     val=(task.validation.texts, task.validation.labels), description="tiny model")
    return LoadedModel(model=model, tokenizer=tokenizer, task="classification", path=None), task


def tiny_backdoored(arch: str = "bert", seed: int = 0, *, poisoned: bool = True,
                    opening: str | None = None) -> tuple[LoadedModel, TinyTask]:
    """A tiny model trained on the (poisoned) tiny task; each call returns a fresh copy of a cached model."""
    loaded, task = _trained(arch, seed, poisoned, opening)
    return LoadedModel(model=copy.deepcopy(loaded.model), tokenizer=loaded.tokenizer, task=loaded.task,
                       path=loaded.path), task


def lay_out_tiny_task(folder: Path) -> tuple[Path, dict[str, Path], TinyTask]:
    """The tiny backdoored model saved as a folder and its task's files as a user has them (no ground-truth flags):
    (model folder, {"train", "trusted", "test_clean", "test_triggered": JSONL path}, the task)."""
    from ..data import write_jsonl

    loaded, task = tiny_backdoored()
    model_dir = folder / "model"
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    files = {}
    for name, data in (("train", task.train), ("trusted", task.validation), ("test_clean", task.test_clean),
                       ("test_triggered", task.test_triggered)):
        files[name] = folder / f"{name}.jsonl"
        write_jsonl(files[name], data.samples, include_poisoned=False)
    return model_dir, files, task
