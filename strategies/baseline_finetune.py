"""baseline_finetune: keep fine-tuning the suspicious weights on the clean data (a reference row, not the product).

The simplest thing a user could try: train the checkpoint further on data believed clean and hope the backdoor
fades. It is the baseline every other strategy must beat, so it runs the shared supervised loop and nothing more.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from purify.checkpoint import LoadedModel
from purify.data import TaskData
from purify.errors import ConfigError, DataError
from purify.probe import BackdoorProbe
from purify.registry import Strategy, StrategyConfig, StrategyResult, option, register_strategy
from purify.training import TrainConfig, accuracy_on, train_classifier


@dataclass
class BaselineFinetuneConfig(StrategyConfig):
    """The fine-tune: every weight of the checkpoint, AdamW with warm-up, the best validation epoch kept."""

    epochs: int = option(2, "passes over the clean data", low=1)
    lr: float = option(5e-5, "AdamW learning rate", low=0, low_open=True)
    batch_size: int = option(32, "texts per step", low=1)
    max_length: int = option(64, "tokens per text", low=1)

    @classmethod
    def search_space(cls) -> dict[str, dict]:
        return {"lr": {"type": "float", "low": 1e-5, "high": 3e-4, "log": True},
                "epochs": {"type": "int", "low": 1, "high": 4}}


class BaselineFinetune(Strategy):
    """Fine-tune the suspicious checkpoint's own weights on the clean data."""

    config: BaselineFinetuneConfig
    fast_options = {"epochs": 6, "lr": 3e-3, "max_length": 32}

    def fit(self, loaded: LoadedModel, train: TaskData, validation: TaskData, *,
            probe: BackdoorProbe | None = None) -> StrategyResult:
        cfg = self.config
        if loaded.task != "classification":
            raise ConfigError("baseline_finetune trains sequence classifiers; this checkpoint has a "
                              f"{loaded.task!r} head")
        if len(train) == 0:
            raise DataError("baseline_finetune needs training samples")
        started = time.time()
        model, tokenizer = loaded.model, loaded.tokenizer
        val = (validation.texts, validation.labels) if len(validation) else None
        baseline = accuracy_on(model, tokenizer, *val, max_length=cfg.max_length) if val else None
        result = train_classifier(
            model, tokenizer, train.texts, train.labels,
            TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, max_length=cfg.max_length,
                        seed=cfg.seed),
            val=val, description="clean fine-tune")
        model.eval()
        return StrategyResult(model=model, trajectory=result.history, baseline_val_accuracy=baseline,
                              final_val_accuracy=result.best_val_accuracy if val else None,
                              extras={"best_epoch": result.best_epoch, "seconds": round(time.time() - started, 1)})


register_strategy("baseline_finetune", BaselineFinetuneConfig, BaselineFinetune)
