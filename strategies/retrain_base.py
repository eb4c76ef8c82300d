"""retrain_base: fine-tune the pretrained base from scratch on the filtered data (a reference row, not the product).

A user who has the pretrained base the suspicious checkpoint came from can throw the checkpoint away and train a
new classifier on the filtered data: whatever the filter missed is all the backdoor it can learn. It is the bar
the other strategies are measured against; it needs the base, which a user often does not have.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from purify.architecture import label_count
from purify.checkpoint import LoadedModel, load_checkpoint
from purify.data import TaskData
from purify.errors import ConfigError, DataError
from purify.probe import BackdoorProbe
from purify.registry import Strategy, StrategyConfig, StrategyResult, option, register_strategy
from purify.training import TrainConfig, accuracy_on, train_classifier

if TYPE_CHECKING:
    from transformers import PreTrainedModel

AUTO = "auto"
SCRATCH = "scratch"  # the checkpoint's architecture, randomly re-initialised: no pretrained knowledge at all
#: config fields that must agree for a packaged base to be the checkpoint's base
_SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


@dataclass
class RetrainBaseConfig(StrategyConfig):
    """Where the base is, and the fine-tune (the zoo's MiniLM recipe by default)."""

    base: str = option(AUTO, "the pretrained base: a model folder, a packaged base name (minilm, smollm2), auto "
                             "(the packaged base whose architecture and size match the checkpoint), or scratch "
                             "(the same architecture, randomly initialised)")
    epochs: int = option(2, "passes over the filtered data", low=1)
    lr: float = option(1e-4, "AdamW learning rate", low=0, low_open=True)
    batch_size: int = option(32, "texts per step", low=1)
    max_length: int = option(64, "tokens per text", low=1)
    patience: int | None = option(None, "stop after this many epochs without a better validation accuracy", low=1)

    @classmethod
    def search_space(cls) -> dict[str, dict]:
        return {"lr": {"type": "float", "low": 2e-5, "high": 3e-4, "log": True},
                "epochs": {"type": "int", "low": 1, "high": 4}}


def _shape(config) -> tuple:
    return tuple(getattr(config, name, None) for name in _SHAPE_FIELDS)


def find_base(model: PreTrainedModel, base: str) -> Path:
    """The folder of the pretrained base: `base` itself, a packaged base by name, or (auto) the packaged base of the
    same architecture and size; a one-line error naming the option otherwise."""
    from purify.zoo import bases

    packaged = {"minilm": bases.minilm_path, "smollm2": bases.smollm2_path}
    if base not in (AUTO, *packaged):  # scratch never reaches here
        path = Path(base)
        if not (path / "config.json").is_file():
            raise ConfigError(f"retrain_base: base={base!r} is neither a packaged base ({', '.join(packaged)}) nor a "
                              "model folder with a config.json")
        return path
    if base != AUTO:
        return packaged[base]()
    from transformers import AutoConfig

    wanted = _shape(model.config)
    kind = {"bert": "minilm", "llama": "smollm2"}.get(model.config.model_type)
    if kind is not None:
        path = packaged[kind]()
        if _shape(AutoConfig.from_pretrained(str(path), local_files_only=True)) == wanted:
            return path
    raise ConfigError("retrain_base: no packaged base matches this checkpoint's architecture "
                      f"({model.config.model_type}, hidden {getattr(model.config, 'hidden_size', '?')}); "
                      "pass base=DIR with the pretrained base")


class RetrainBase(Strategy):
    """Discard the suspicious weights and fine-tune the pretrained base on the filtered data."""

    config: RetrainBaseConfig
    fast_options = {"base": SCRATCH, "epochs": 12, "lr": 3e-3, "max_length": 32}

    def fit(self, loaded: LoadedModel, train: TaskData, validation: TaskData, *,
            probe: BackdoorProbe | None = None) -> StrategyResult:
        cfg = self.config
        if loaded.task != "classification":
            raise ConfigError(f"retrain_base trains sequence classifiers; this checkpoint has a {loaded.task!r} head")
        if len(train) == 0:
            raise DataError("retrain_base needs training samples")
        started = time.time()
        fresh, base_name = self._fresh_model(loaded)
        baseline = accuracy_on(loaded.model, loaded.tokenizer, validation.texts, validation.labels,
                               max_length=cfg.max_length) if len(validation) else None
        result = train_classifier(
            fresh, loaded.tokenizer, train.texts, train.labels,
            TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, max_length=cfg.max_length,
                        seed=cfg.seed, patience=cfg.patience),
            val=(validation.texts, validation.labels) if len(validation) else None, description="retrain_base")
        fresh.eval()
        return StrategyResult(model=fresh, trajectory=result.history, baseline_val_accuracy=baseline,
                              final_val_accuracy=result.best_val_accuracy if len(validation) else None,
                              extras={"base": base_name, "best_epoch": result.best_epoch,
                                      "seconds": round(time.time() - started, 1)})

    def _fresh_model(self, loaded: LoadedModel) -> tuple[PreTrainedModel, str]:
        """The base with a new head of the checkpoint's labels, on the checkpoint's device; and which base it is."""
        model = loaded.model
        num_labels = label_count(model)
        if self.config.base == SCRATCH:
            torch.manual_seed(self.config.seed)
            fresh = type(model)(model.config)
            base_name = SCRATCH
        else:
            path = find_base(model, self.config.base)
            torch.manual_seed(self.config.seed)  # the new head is drawn from the seed
            fresh = load_checkpoint(path, task="classification", num_labels=num_labels).model
            if fresh.config.vocab_size != model.config.vocab_size:
                raise ConfigError(f"retrain_base: the base in {path} has {fresh.config.vocab_size} token rows, the "
                                  f"checkpoint {model.config.vocab_size}; it is not this checkpoint's base")
            base_name = str(path)
        fresh.config.id2label, fresh.config.label2id = model.config.id2label, model.config.label2id
        fresh.to(next(model.parameters()).device)  # type: ignore[arg-type]  # @wraps(Module.to) in transformers hides self
        return fresh, base_name


register_strategy("retrain_base", RetrainBaseConfig, RetrainBase)
