"""baseline_finetune: the plain clean fine-tune, as a registered strategy the bench and users can run."""
from __future__ import annotations

import importlib

import pytest
import torch

from purify.errors import ConfigError
from purify.testing.tiny_task import tiny_backdoored
from purify.training import TrainConfig, train_classifier


def _strategy(options: dict):
    module = importlib.import_module("strategies.baseline_finetune")
    return module.BaselineFinetune(module.BaselineFinetuneConfig.from_dict(options))


def test_it_is_exactly_the_shared_supervised_loop():
    loaded, task = tiny_backdoored()
    options = {"epochs": 2, "lr": 3e-3, "max_length": 32, "seed": 3}
    result = _strategy(options).run(loaded, task.clean_train, task.validation)
    reference, _ = tiny_backdoored()
    train_classifier(reference.model, reference.tokenizer, task.clean_train.texts, task.clean_train.labels,
                     TrainConfig(epochs=2, lr=3e-3, max_length=32, seed=3),
                     val=(task.validation.texts, task.validation.labels))
    for (name, a), b in zip(result.model.state_dict().items(), reference.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert result.extras["best_epoch"] in (1, 2) and len(result.trajectory) == 2


def test_refuses_a_generative_checkpoint():
    loaded, task = tiny_backdoored()
    loaded.task = "causal_lm"
    with pytest.raises(ConfigError, match="baseline_finetune trains sequence classifiers"):
        _strategy({}).run(loaded, task.clean_train, task.validation)
