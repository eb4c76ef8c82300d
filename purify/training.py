"""One training loop (AdamW, linear warm-up then decay, patience, the chosen epoch's weights kept) and the plain
classifier fine-tune on it, shared by the zoo, the teachers, the baselines and the strategies."""
from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from .device import seed_everything
from .inference import MAX_LENGTH, labelled_batch, predict
from .progress import track


@dataclass
class TrainConfig:
    """Knobs of a plain supervised fine-tune (AdamW, linear warm-up then decay)."""

    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    max_length: int = MAX_LENGTH
    grad_clip: float = 1.0
    seed: int = 0
    keep_best: bool = True  # restore the epoch with the best validation accuracy
    patience: int | None = None  # stop after this many epochs without improvement (None: run all epochs)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """Per-epoch history, the best-scoring epoch and the epoch whose weights were kept."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_accuracy: float = float("nan")  # the best epoch's score
    kept_epoch: int | None = None  # the epoch whose weights the model holds at the end (None: the last, unchosen)


def accuracy_on(model: nn.Module, tokenizer, texts: Sequence[str], labels: Sequence[int], *,
                batch_size: int = 64, max_length: int = MAX_LENGTH) -> float:
    """Share of `texts` the model labels correctly."""
    if len(texts) == 0:
        return float("nan")
    preds = predict(model, tokenizer, texts, batch_size=batch_size, max_length=max_length)
    return float((preds == np.asarray(labels)).mean())


BUCKET_BATCHES = 50  # batches per length-sorted bucket


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                            bucket_batches: int = BUCKET_BATCHES) -> list[np.ndarray]:
    """Shuffled batches of similar-length samples (less padding, same randomness given the generator)."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def linear_warmup_decay(optimizer: torch.optim.Optimizer, total: int,
                        warmup_fraction: float) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate rises linearly over the first `warmup_fraction` of `total` steps, then decays to 0."""
    warmup = int(total * warmup_fraction)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )


class EpochLoop(ABC):
    """The shared optimisation loop: AdamW over `params` on `config`'s schedule, epochs of steps, patience on the
    epoch's score, and the weights of the epoch chosen at the end restored.

    Subclasses say what differs: an epoch's batch order (`batches`), what one step does (`step`: gradients into
    .grad, clipping and the update are the loop's), the epoch's record (`record`), its score (`score`), which
    epochs' weights may still be kept (`candidates`) and which one is (`choose`).
    """

    def __init__(self, modules: Sequence[nn.Module], params: list[nn.Parameter], config: TrainConfig,
                 steps_per_epoch: int, description: str) -> None:
        self.modules, self.params, self.config = list(modules), params, config
        self.steps_per_epoch, self.description = steps_per_epoch, description

    @abstractmethod
    def batches(self, rng: np.random.Generator) -> Sequence[np.ndarray]:
        """The row indices of each step of one epoch."""

    @abstractmethod
    def step(self, idx: np.ndarray) -> Any:
        """Leave the step's gradients in .grad (they start cleared); whatever is returned goes to `record`."""

    @abstractmethod
    def record(self, epoch: int, steps: list[Any], seconds: float) -> dict:
        """The epoch's figures (modules in eval mode), from what its steps returned and their wall time."""

    def score(self, record: dict) -> float | None:
        """What patience and keep-best watch (higher is better); None: nothing watched."""
        return record.get("val_accuracy")

    def candidates(self, history: list[dict], best_epoch: int, best: float) -> list[int]:
        """Epochs whose weights may still be chosen, ascending: the best one (none without keep_best)."""
        return [best_epoch] if self.config.keep_best and best_epoch > 0 else []

    def choose(self, history: list[dict], candidates: list[int]) -> int | None:
        """The epoch whose weights are restored at the end (None: the last epoch's stay)."""
        return max(candidates) if candidates else None

    def _train_mode(self, on: bool) -> None:
        for module in self.modules:
            module.train(on)

    def run(self) -> TrainResult:
        """Train; the history, the best-scoring epoch and the epoch whose weights the parameters now hold."""
        cfg = self.config
        optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = linear_warmup_decay(optimizer, max(1, self.steps_per_epoch * cfg.epochs), cfg.warmup_fraction)
        rng = np.random.default_rng(cfg.seed)
        result = TrainResult()
        saved: dict[int, list[torch.Tensor]] = {}
        stale, keep = 0, []
        for epoch in range(1, cfg.epochs + 1):
            self._train_mode(True)
            batches = self.batches(rng)
            started = time.time()
            steps = []
            for idx in track(batches, description=f"{self.description} epoch {epoch}/{cfg.epochs}",
                             total=len(batches)):
                optimizer.zero_grad(set_to_none=True)
                steps.append(self.step(idx))
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
                optimizer.step()
                scheduler.step()
            seconds = time.time() - started
            self._train_mode(False)
            result.history.append(self.record(epoch, steps, seconds))
            score = self.score(result.history[-1])
            if score is not None and not (score <= result.best_val_accuracy):  # also true while best is NaN
                result.best_val_accuracy, result.best_epoch, stale = score, epoch, 0
            elif score is not None:
                stale += 1
            stop = cfg.patience is not None and stale >= cfg.patience
            keep = self.candidates(result.history, result.best_epoch, result.best_val_accuracy)
            if epoch in keep and not (stop or epoch == cfg.epochs):  # the last epoch's weights are the params'
                saved[epoch] = [p.detach().to("cpu", copy=True) for p in self.params]
            saved = {e: s for e, s in saved.items() if e in keep}
            if stop:
                break
        result.kept_epoch = self.choose(result.history, keep)
        if result.kept_epoch is not None and result.kept_epoch != len(result.history):
            with torch.no_grad():
                for p, s in zip(self.params, saved[result.kept_epoch]):
                    p.copy_(s)
        self._train_mode(False)
        return result


def bucketed_steps(n: int, batch_size: int, bucket_batches: int = BUCKET_BATCHES) -> int:
    """How many batches `length_bucketed_batches` makes of `n` samples."""
    chunk = batch_size * bucket_batches
    return (n // chunk) * bucket_batches + math.ceil((n % chunk) / batch_size)


class _ClassifierLoop(EpochLoop):
    """The plain fine-tune: length-bucketed batches, the model's loss (or `loss_fn`) plus `extra_loss`."""

    def __init__(self, model: nn.Module, tokenizer, texts: Sequence[str], labels: Sequence[int], config: TrainConfig,
                 params: list[nn.Parameter], val: tuple[Sequence[str], Sequence[int]] | None,
                 extra_loss: Callable[[nn.Module], torch.Tensor] | None,
                 loss_fn: Callable[[nn.Module, np.ndarray], torch.Tensor] | None,
                 epoch_metrics: Callable[[nn.Module], dict] | None, description: str) -> None:
        super().__init__([model], params, config, bucketed_steps(len(texts), config.batch_size), description)
        self.model, self.tokenizer, self.texts, self.labels = model, tokenizer, texts, list(labels)
        self.lengths = np.array([len(t) for t in texts])
        self.val, self.extra_loss, self.loss_fn, self.epoch_metrics = val, extra_loss, loss_fn, epoch_metrics

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return length_bucketed_batches(self.lengths, self.config.batch_size, rng)

    def step(self, idx: np.ndarray) -> float:
        if self.loss_fn is not None:
            loss = self.loss_fn(self.model, idx)
        else:
            batch = labelled_batch(self.model, self.tokenizer, [self.texts[i] for i in idx],
                                   [self.labels[i] for i in idx], self.config.max_length)
            loss = self.model(**batch).loss
        if self.extra_loss is not None:
            loss = loss + self.extra_loss(self.model)
        loss.backward()
        return float(loss.detach())

    def score(self, record: dict) -> float | None:
        return record["val_accuracy"] if self.val is not None else None

    def record(self, epoch: int, steps: list[float], seconds: float) -> dict:
        record = {"epoch": epoch, "train_loss": float(np.mean(steps)) if steps else float("nan")}
        if self.epoch_metrics is not None:
            record.update(self.epoch_metrics(self.model))
        if self.val is not None:
            record["val_accuracy"] = accuracy_on(self.model, self.tokenizer, self.val[0], self.val[1],
                                                 max_length=self.config.max_length)
        return record


def train_classifier(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    labels: Sequence[int],
    config: TrainConfig,
    *,
    val: tuple[Sequence[str], Sequence[int]] | None = None,
    parameters: Iterable[nn.Parameter] | None = None,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    loss_fn: Callable[[nn.Module, np.ndarray], torch.Tensor] | None = None,
    epoch_metrics: Callable[[nn.Module], dict] | None = None,
    description: str = "fine-tuning",
) -> TrainResult:
    """Fine-tune `model` on (texts, labels); optionally only `parameters`, plus a regulariser `extra_loss(model)`.

    `loss_fn(model, indices)` replaces the cross-entropy of a batch (the rows `indices` of `texts`) for strategies
    whose objective is more than the labels; `epoch_metrics(model)` adds figures to each epoch's record. With `val`
    and ``config.keep_best`` the weights of the best validation epoch are restored at the end.
    """
    seed_everything(config.seed)
    params = [p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad]
    return _ClassifierLoop(model, tokenizer, texts, labels, config, params, val, extra_loss, loss_fn, epoch_metrics,
                           description).run()
