"""The clean teacher of the distillation: trained (or loaded from the cache), frozen, with a tap on its feature."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from purify.checkpoint import LoadedModel
from purify.data import TaskData
from purify.errors import ConfigError
from purify.inference import labelled_batch
from purify.training import accuracy_on

from .config import AUTO_TEACHER, W2SDistillConfig
from .features import FeatureTap


@dataclass
class Teacher:
    """The clean teacher during distillation: model, tokenizer and a tap on its pooled feature."""

    model: nn.Module
    tokenizer: object
    tap: FeatureTap

    @torch.no_grad()
    def outputs(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = labelled_batch(self.model, self.tokenizer, texts, max_length=max_length)
        logits = self.model(**batch).logits.float()
        return logits, self.tap.pooled(batch["attention_mask"]).float()


def load_teacher(cfg: W2SDistillConfig, loaded: LoadedModel, train: TaskData, validation: TaskData,
                 student_is_decoder: bool) -> tuple[Teacher, dict]:
    """Train (or load from the cache) the clean teacher; refuses the suspicious checkpoint itself."""
    from teachers.training import train as train_teacher  # submodule import: works however teachers is installed

    name = cfg.teacher
    if name == AUTO_TEACHER:
        name = "minilm-l6" if student_is_decoder else "minilm-l3"
    loaded_teacher = train_teacher(name, train, validation, cfg.seed, student=loaded)
    model = loaded_teacher.model.eval()
    if model.config.num_labels != len(train.label_names):
        raise ConfigError(f"teacher {name!r} predicts {model.config.num_labels} labels; the task has "
                          f"{len(train.label_names)}")
    for p in model.parameters():
        p.requires_grad_(False)
    info = {
        "teacher": name,
        "teacher_path": str(loaded_teacher.path),
        "teacher_val_accuracy": accuracy_on(model, loaded_teacher.tokenizer, validation.texts,
                                            validation.labels, max_length=cfg.max_length),
    }
    return Teacher(model, loaded_teacher.tokenizer, FeatureTap.on_head(model)), info
