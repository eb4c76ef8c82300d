"""Teacher training and caching: fine-tune a clean recipe on the clean task data once per (recipe, data, seed).

The trained teacher is cached under ``cache_root()/teachers/<recipe>-<data hash>-s<seed>``, written to a
temporary sibling and renamed into place, so an interrupted run never leaves a half-written teacher behind.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

from purify.checkpoint import LoadedModel, load_checkpoint
from purify.data import TaskData
from purify.device import seed_everything, select_device
from purify.errors import DataError
from purify.training import TrainConfig, train_classifier
from purify.cachedir import publishing
from purify.cachedir import cache_root

from .recipes import TeacherRecipe, ensure_not_student, get_recipe

META_FILE = "teacher.json"


def data_hash(train: TaskData, validation: TaskData, config: TrainConfig) -> str:
    """Digest of everything a teacher depends on besides recipe and seed: the data, label names and train knobs."""
    digest = hashlib.sha256()
    payload = {"labels": train.label_names, "train": config.to_dict()}
    digest.update(json.dumps(payload, sort_keys=True).encode())
    for tag, data in (("train", train), ("validation", validation)):
        digest.update(tag.encode())
        for s in data.samples:
            digest.update(f"{s.label}\t{s.text}\n".encode())
    return digest.hexdigest()[:16]


def teacher_dir(recipe: TeacherRecipe, train: TaskData, validation: TaskData, seed: int,
                root: Path | None = None) -> Path:
    """Cache folder of the teacher trained from `recipe` on this data with this seed."""
    train_config = replace(recipe.train, seed=seed)
    base = root if root is not None else cache_root() / "teachers"
    return base / f"{recipe.name}-{data_hash(train, validation, train_config)}-s{seed}"


def train(recipe: str | Path | TeacherRecipe, clean_data: TaskData, validation: TaskData, seed: int = 0, *,
          student: LoadedModel | None = None, root: Path | None = None, log=None) -> LoadedModel:
    """A clean teacher fine-tuned on `clean_data` (early stopping on `validation` accuracy), cached on disk.

    `student`, when given, is the suspicious model: a teacher that is its folder or has its weights is refused.
    """
    recipe = recipe if isinstance(recipe, TeacherRecipe) else get_recipe(recipe)
    if len(clean_data) == 0:
        raise DataError("a teacher needs clean training data; got none")
    if len(validation) == 0:
        raise DataError("a teacher needs clean validation data for early stopping; got none")
    ensure_not_student(recipe, None, student)
    dest = teacher_dir(recipe, clean_data, validation, seed, root)
    if (dest / META_FILE).exists() and recipe.source is None:
        return load_checkpoint(dest)

    num_labels = len(clean_data.label_names)
    seed_everything(seed)
    built = recipe.build(num_labels, seed)
    ensure_not_student(recipe, built, student)
    if (dest / META_FILE).exists():  # a folder recipe: checked against the student above, then reused
        return load_checkpoint(dest)
    if log is not None:
        log(f"[teacher] training {recipe.name} on {len(clean_data)} clean samples -> {dest}")
    model = built.model.to(select_device())  # type: ignore[arg-type]  # @wraps(Module.to) in transformers hides self
    config = replace(recipe.train, seed=seed)
    started = time.time()
    result = train_classifier(model, built.tokenizer, clean_data.texts, clean_data.labels, config,
                              val=(validation.texts, validation.labels), description=f"teacher {recipe.name}")
    model.config.id2label = dict(enumerate(clean_data.label_names))
    model.config.label2id = {n: i for i, n in enumerate(clean_data.label_names)}
    meta = {
        "recipe": recipe.name,
        "description": recipe.description,
        "source": str(recipe.source) if recipe.source is not None else None,
        "seed": seed,
        "train_config": config.to_dict(),
        "num_train": len(clean_data),
        "num_validation": len(validation),
        "best_epoch": result.best_epoch,
        "val_accuracy": result.best_val_accuracy,
        "history": result.history,
        "train_seconds": round(time.time() - started, 1),
    }
    _write_atomically(dest, model, built.tokenizer, meta)
    return load_checkpoint(dest)


def _write_atomically(dest: Path, model, tokenizer, meta: dict) -> None:
    """Save the teacher beside `dest` and publish it; a copy another process finished first is kept."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with publishing(dest, lambda d: (d / META_FILE).exists()) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def teacher_metadata(folder: Path) -> dict:
    """The training record stored next to a cached teacher ({} when there is none)."""
    path = Path(folder) / META_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
