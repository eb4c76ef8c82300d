"""One fine-tuning loop for classifiers, shared by the zoo, the teachers, the baselines and the strategies."""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
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
    """Per-epoch history and the epoch that was kept."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_accuracy: float = float("nan")


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
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    n = len(texts)
    chunk = config.batch_size * BUCKET_BATCHES
    steps_per_epoch = (n // chunk) * BUCKET_BATCHES + math.ceil((n % chunk) / config.batch_size)
    total = max(1, steps_per_epoch * config.epochs)
    warmup = int(total * config.warmup_fraction)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    rng = np.random.default_rng(config.seed)
    result = TrainResult()
    best_state = None
    stale = 0
    labels = list(labels)
    lengths = np.array([len(t) for t in texts])
    for epoch in range(config.epochs):
        model.train()
        losses = []
        batches = length_bucketed_batches(lengths, config.batch_size, rng)
        for idx in track(batches, description=f"{description} epoch {epoch + 1}/{config.epochs}", total=len(batches)):
            if loss_fn is not None:
                loss = loss_fn(model, idx)
            else:
                batch = labelled_batch(model, tokenizer, [texts[i] for i in idx], [labels[i] for i in idx],
                                       config.max_length)
                loss = model(**batch).loss
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        model.eval()
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan")}
        if epoch_metrics is not None:
            record.update(epoch_metrics(model))
        if val is not None:
            record["val_accuracy"] = accuracy_on(model, tokenizer, val[0], val[1], max_length=config.max_length)
            if not (record["val_accuracy"] <= result.best_val_accuracy):  # also true while best is NaN
                result.best_val_accuracy, result.best_epoch, stale = record["val_accuracy"], epoch + 1, 0
                if config.keep_best and epoch + 1 < config.epochs:
                    best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
                elif config.keep_best:
                    best_state = None  # the last epoch is the best: nothing to restore
            else:
                stale += 1
        result.history.append(record)
        if config.patience is not None and stale >= config.patience:
            break
    if best_state is not None and result.best_epoch != len(result.history):
        model.load_state_dict(best_state)
    model.eval()
    return result
