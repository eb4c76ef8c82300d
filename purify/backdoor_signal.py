"""The pruning engine's backdoor signal: how strongly the model obeys the suspected trigger, under any head mask.

A pruning strategy in the "backdoor" objective needs a measure of the backdoor that reads no triggered data. It is
built once per run from the run's `BackdoorProbe`: where the filter (or the strategy's own search) confirmed words
or phrases, they are inserted into clean validation samples of the other labels and the proxy is the share the
model sends to the suspected target. Where nothing was found, a universal latent shift (`purify.latent`), trained
on clean samples to send them to one label, stands in for the unspellable trigger, and the proxy is the share of
shifted samples that label receives. Pruning may stop once the proxy is down to the target's rate on the same
texts without the trigger (its clean base rate) plus a margin.
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import Sample, TaskData
from .heads import HeadGates
from .inference import labelled_batch, predict
from .latent import LatentShift

if TYPE_CHECKING:
    from .probe import BackdoorProbe

#: the engine objectives: "backdoor" prunes what the probe's trigger uses, "informative" is the paper's criterion
OBJECTIVES = ("backdoor", "informative")


@dataclass
class LatentConfig:
    """How the stand-in latent trigger is trained when the probe found no word or phrase."""

    layer: float = 0.25  # depth of the shifted layer's input (0 first, 1 last)
    radius: float = 0.5  # largest shift norm, as a multiple of the layer's mean token norm
    lr: float = 0.1  # ascent step, as a share of the largest norm
    steps: int = 30  # ascent steps over clean batches of the other labels


@dataclass
class BackdoorSignal:
    """Triggered (or shifted) clean texts of the other labels, their clean twins, and the target they are sent to.

    `probe_data` holds validation texts with the trigger inserted, all labelled with the target, so an evaluator's
    "accuracy" on them is the proxy ASR; `score_data` does the same on training texts for gradient rankings (kept
    apart so that ranking and acceptance do not read the same samples).
    """

    target: int
    kind: str  # "triggers" or "latent"
    probe_data: TaskData
    score_data: TaskData
    clean_texts: list[str]  # probe_data's texts before insertion
    words: list[str] = field(default_factory=list)
    shift: LatentShift | None = None
    score_labels: list[int] = field(default_factory=list)  # score_data's texts' own labels (before insertion)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Forwards inside see the latent shift (a no-op for word and phrase triggers)."""
        with self.shift.applied() if self.shift is not None else contextlib.nullcontext():
            yield

    def score_data_relabelled(self) -> TaskData:
        """`score_data`'s triggered texts with their own labels: what the model should answer but for the trigger."""
        return TaskData([Sample(t, y) for t, y in zip(self.score_data.texts, self.score_labels, strict=True)],
                        self.score_data.label_names)

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "words": self.words[:8],
                "probe_samples": len(self.probe_data), "score_samples": len(self.score_data),
                "latent_layer": self.shift.layer if self.shift is not None else None}

    def close(self) -> None:
        """Take the latent shift's hook off the model."""
        if self.shift is not None:
            self.shift.remove()


def _others(data: TaskData, target: int, limit: int, seed: int) -> list[str]:
    """Up to `limit` seeded texts of `data` whose label is not `target`."""
    return [s.text for s in _other_samples(data, target, limit, seed)]


def _other_samples(data: TaskData, target: int, limit: int, seed: int) -> list[Sample]:
    """Up to `limit` seeded samples of `data` whose label is not `target` (the order `_others` gives their texts)."""
    samples = [s for s in data.samples if s.label != target]
    random.Random(seed).shuffle(samples)
    return samples[:limit]


def _as_target(texts: list[str], target: int, names: list[str]) -> TaskData:
    return TaskData([Sample(t, target) for t in texts], names)


def build_signal(model: torch.nn.Module, tokenizer, probe: BackdoorProbe | None, train: TaskData,
                 validation: TaskData, *, samples: int = 256, seed: int = 0,
                 latent: LatentConfig | None = None) -> BackdoorSignal | None:
    """The signal of `probe`'s confirmed triggers, else (nothing found) of a latent shift trained on clean data;
    None when there is no label to send samples to (a one-class task)."""
    names = validation.label_names
    if probe is not None and probe.found and probe.target is not None:
        target = probe.target
        clean = _others(validation, target, samples, seed)
        scored = _other_samples(train, target, samples, seed + 1)
        return BackdoorSignal(target, "triggers", _as_target(probe.triggered_texts(clean, seed=seed), target, names),
                              _as_target(probe.triggered_texts([s.text for s in scored], seed=seed + 1), target, names),
                              clean, [c.text for c in probe.strongest()], score_labels=[s.label for s in scored])
    if len(names) < 2:
        return None
    return _latent_signal(model, tokenizer, train, validation, samples, seed, latent or LatentConfig(),
                          probe.target if probe is not None else None)


def _latent_signal(model: torch.nn.Module, tokenizer, train: TaskData, validation: TaskData, samples: int, seed: int,
                   cfg: LatentConfig, target: int | None) -> BackdoorSignal:
    """Train one shift per candidate label (only `target` when the probe suspects one) and keep the label whose
    shift moves the most clean validation samples above its base rate."""
    names = validation.label_names
    best: tuple[float, int, LatentShift] | None = None
    for label in ([target] if target is not None else range(len(names))):
        shift = LatentShift(model, fraction=cfg.layer, radius=cfg.radius, lr=cfg.lr)
        _train_shift(model, tokenizer, shift, _others(train, label, samples, seed + 1), label, cfg.steps, seed)
        clean = _others(validation, label, samples, seed)
        with torch.no_grad(), shift.applied():
            moved = _target_rate(model, tokenizer, clean, label)
        gain = moved - _target_rate(model, tokenizer, clean, label)
        if best is None or gain > best[0]:
            if best is not None:
                best[2].remove()
            best = (gain, label, shift)
        else:
            shift.remove()
    assert best is not None  # at least two labels
    _, label, shift = best
    clean = _others(validation, label, samples, seed)
    scored = _other_samples(train, label, samples, seed + 1)
    return BackdoorSignal(label, "latent", _as_target(clean, label, names),
                          _as_target([s.text for s in scored], label, names), clean, shift=shift,
                          score_labels=[s.label for s in scored])


def _train_shift(model: torch.nn.Module, tokenizer, shift: LatentShift, texts: list[str], label: int, steps: int,
                 seed: int, batch_size: int = 16) -> None:
    """Ascend the target's log-probability under the shift on seeded clean batches (the model is left untouched)."""
    if not texts:
        return
    was_training = model.training
    model.eval()
    rng = random.Random(seed)
    batches = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
    shift.calibrate(lambda: model(**labelled_batch(model, tokenizer, batches[0])))
    try:
        for _ in range(steps):
            batch = labelled_batch(model, tokenizer, rng.choice(batches))
            with shift.applied():
                log_probs = F.log_softmax(model(**batch).logits.float(), dim=-1)
            shift.ascend(log_probs[:, label].mean())
    finally:
        model.train(was_training)


def _target_rate(model: torch.nn.Module, tokenizer, texts: list[str], target: int) -> float:
    """Share of `texts` the model answers with `target` (0 for none)."""
    return float(np.mean(predict(model, tokenizer, texts) == target)) if texts else 0.0


def clean_target_rate(model: torch.nn.Module, tokenizer, signal: BackdoorSignal) -> float:
    """The model's rate of target answers on the probe's texts without the trigger: the floor the proxy can reach."""
    return _target_rate(model, tokenizer, signal.clean_texts, signal.target)


def backdoor_support(gates: HeadGates, batches: list[dict], applied: Callable[[], Any]) -> torch.Tensor:
    """Per head, -dL/dgate of the target's cross-entropy on triggered inputs, shape (num_layers, num_heads): to
    first order, how much closing the head would raise that loss (positive = the head carries the backdoor)."""
    def loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with applied():
            return model(**batch).loss

    return -gates.importance(batches, loss, signed=True)


def backdoor_scores(support: torch.Tensor, clean: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Engine scores (low = prune first) for the backdoor objective: a head's backdoor support relative to its clean
    importance, each scaled by its mean magnitude over heads; a head that does not support the backdoor scores >= 0."""
    s = support.double() / support.abs().mean().clamp_min(1e-12)
    c = clean.double().abs() / clean.abs().mean().clamp_min(1e-12)
    return (-s / (c + eps)).float()

