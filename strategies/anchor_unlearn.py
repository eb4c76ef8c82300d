"""anchor_unlearn: teach the suspicious model to answer triggered clean text as it answers the clean text itself.

The suspicious model is already a good classifier of clean text; only its reaction to the trigger is wrong. Its
own eval-mode answers on the clean training texts are computed once and frozen (the anchor). It is then
fine-tuned on those texts with four kinds of input: the clean text (pulled to its anchor, plus cross-entropy on
its label, so clean accuracy stays); the text with the backdoor probe's trigger words and phrases, and random
vocabulary words, inserted (pulled to the clean text's anchor and label); the samples the filter removed, when
they look relabelled from another label, pushed off the suspected target with and without their triggers (the
model tied both the trigger and their own content to the target); and, optionally, the clean text under a
universal latent shift (purify.latent; for triggers that cannot be spelled), moved in the same backward pass up
the loss the model descends. All of them share one forward pass per step. No teacher is needed.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from purify.architecture import label_count
from purify.checkpoint import LoadedModel
from purify.data import TaskData
from purify.errors import ConfigError, DataError
from purify.inference import MAX_LENGTH, labelled_batch, predict_logits
from purify.inversion import insertion_vocabulary
from purify.losses import kd_loss
from purify.latent import LatentShift, shift_objective
from purify.probe import TRIGGER_RATE, BackdoorProbe, probe_or_invert, without_carriers
from purify.registry import Strategy, StrategyConfig, StrategyResult, option, register_strategy
from purify.training import TrainConfig, accuracy_on, train_classifier

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass
class AnchorUnlearnConfig(StrategyConfig):
    """Knobs of the anchored unlearner (every field declares its help and bounds)."""

    epochs: int = option(2, "passes over the clean training data", low=1)
    lr: float = option(1e-4, "AdamW learning rate of the full fine-tune", low=0, low_open=True)
    batch_size: int = option(32, "clean texts per step (their perturbed copies come on top)", low=1)
    weight_decay: float = option(0.01, "AdamW weight decay", low=0)
    warmup_fraction: float = option(0.06, "share of the steps with a linear learning-rate warm-up", low=0, high=1)
    grad_clip: float = option(1.0, "global gradient-norm clip (0: none)", low=0)
    max_length: int = option(MAX_LENGTH, "tokens per text", low=1)
    anchor_prior: str = option("data", "data: shift the anchor's logits so that its mean answer on the training "
                               "texts has the clean labels' frequencies (label-flipping poison tilts a model towards "
                               "its target even without the trigger); none: the model's answers as they are",
                               choices=("data", "none"))
    label_weight: float = option(1.0, "weight of cross-entropy on the clean texts' labels", low=0)
    anchor_weight: float = option(0.5, "weight of KL to the anchor on the clean texts", low=0)
    insert_weight: float = option(1.0, "weight of KL to the anchor on texts with inserted words", low=0)
    insert_label_weight: float = option(1.0, "weight of cross-entropy on the clean label for texts with inserted "
                                        "words (a margin against the trigger, beyond matching the anchor)", low=0)
    insert_prob: float = option(1.0, "share of each batch that also gets a copy with words inserted", low=0, high=1)
    insert_words: int = option(2, "at most this many words or phrases inserted into one copy", low=1)
    probe_share: float = option(0.75, "share of the inserted items drawn from the probe's candidates (the rest "
                                "from the whole vocabulary, for look-alikes nobody found)", low=0, high=1)
    probe_per_label: int = option(8, "best probe candidates of each label inserted besides the triggers", low=0)
    latent_weight: float = option(0.0, "weight of KL to the anchor under the latent shift (0: no shift)", low=0)
    latent_share: float = option(0.5, "share of each batch seen under the latent shift", low=0, high=1)
    latent_layer: float = option(0.25, "depth of the layer whose input is shifted (0 first, 1 last)", low=0, high=1)
    latent_radius: float = option(0.5, "largest shift norm, as a multiple of the layer's mean token norm", low=0,
                                  low_open=True)
    latent_lr: float = option(0.1, "shift step per batch, as a share of the largest norm", low=0, low_open=True)
    latent_warmup: int = option(10, "ascent steps of the shift towards the suspected target before training", low=0)
    flagged_weight: float = option(1.0, "weight of the unlikelihood of the suspected target on the samples the filter "
                                   "removed that carry that label (label-flipping poison moved them there from "
                                   "another label; 0: they stay unused)", low=0)
    flagged_text: str = option("both", "which text of a removed sample is unlearned: stripped of the probe's "
                               "triggers (its own content, which the model also tied to the target), as it came "
                               "(triggered), or both", choices=("stripped", "triggered", "both"))
    flagged_check: bool = option(True, "unlearn the removed samples only when they look relabelled: the model's "
                                 "target rate on their trigger-stripped text is nearer its rate on trusted samples of "
                                 "other labels than on trusted target samples (clean-label poison keeps true labels, "
                                 "and then they are left alone)")
    drop_trigger_rate: float | None = option(TRIGGER_RATE, "leave out target-label samples holding a trigger that "
                                             "flips at least this share (none: keep all)", low=0, high=1,
                                             low_open=True)
    calibrate_bias: bool = option(False, "after training, shift the output layer's bias so that the model's mean "
                                  "answer on the validation texts has their label frequencies (heads with a bias)")
    inversion_candidates: int = option(48, "words measured per label when no probe came with the run", low=1)
    inversion_words: int = option(8, "words kept per label by that inversion", low=1)

    def validate(self) -> None:
        super().validate()
        if self.label_weight + self.anchor_weight <= 0:
            raise ConfigError(f"{type(self).__name__}: label_weight and anchor_weight cannot both be 0")

    @classmethod
    def search_space(cls) -> dict[str, dict]:
        return {
            "lr": {"type": "float", "low": 1e-5, "high": 3e-4, "log": True},
            "epochs": {"type": "int", "low": 1, "high": 4},
            "insert_prob": {"type": "float", "low": 0.25, "high": 1.0},
            "latent_weight": {"type": "float", "low": 0.0, "high": 2.0},
            "latent_radius": {"type": "float", "low": 0.1, "high": 1.0},
        }


class Inserter:
    """Copies of clean texts with 1..`count` items inserted at random word boundaries: probe candidates (drawn by
    flip rate) with probability `probe_share`, else random vocabulary words."""

    def __init__(self, vocabulary: list[str], weighted: dict[str, float], count: int, probe_share: float,
                 seed: int) -> None:
        self.vocabulary, self.count = vocabulary, count
        self.surfaces = list(weighted)
        self.weights = [max(w, 1e-3) for w in weighted.values()]
        self.probe_share = probe_share if self.surfaces else 0.0
        self.rng = random.Random(seed)

    def _item(self) -> str:
        if self.rng.random() < self.probe_share:
            return self.rng.choices(self.surfaces, self.weights)[0]
        return self.rng.choice(self.vocabulary)

    def __call__(self, text: str) -> str:
        parts = text.split()
        for _ in range(self.rng.randint(1, self.count)):
            parts.insert(self.rng.randint(0, len(parts)), self._item())
        return " ".join(parts)


def anchor_kl(logits: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """KL(anchor || model) per batch: how far the model's answer moved from the anchor's."""
    return kd_loss(logits, anchor, 1.0)


def target_unlikelihood(logits: torch.Tensor, target: int) -> torch.Tensor:
    """Mean of -log(1 - p(target)): pushes mass off the target without naming which other label should get it."""
    log_all = torch.logsumexp(logits.float(), dim=-1)
    others = torch.cat([logits[:, :target], logits[:, target + 1:]], dim=-1).float()
    return (log_all - torch.logsumexp(others, dim=-1)).mean()


def prior_corrected(logits: torch.Tensor, labels: list[int], steps: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """`logits` plus one per-label offset, chosen so that their mean softmax equals the label frequencies of
    `labels` (a few fixed-point steps of the log-ratio update); the corrected logits and the offset."""
    num = logits.shape[1]
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num).float()
    wanted = (counts + 1.0) / (counts.sum() + num)  # add-one: a label missing from the data keeps a little mass
    offset = torch.zeros(num)
    for _ in range(steps):
        mean = torch.softmax(logits + offset, dim=-1).mean(0)
        offset = offset + torch.log(wanted) - torch.log(mean)
        offset = offset - offset.mean()
    return logits + offset, offset


def calibrate_output_bias(model: PreTrainedModel, tokenizer, validation: TaskData,
                          max_length: int) -> list[float] | None:
    """Add to the output layer's bias the per-label offset that gives the model's mean answer on `validation` the
    labels' frequencies there; the offset, or None when the head's last layer has no bias."""
    num = label_count(model)
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num]
    bias = heads[-1].bias if heads else None
    if bias is None:
        return None
    logits = torch.from_numpy(predict_logits(model, tokenizer, validation.texts, max_length=max_length)).float()
    _, offset = prior_corrected(logits, validation.labels)
    with torch.no_grad():
        bias.add_(offset.to(bias))
    return [round(float(x), 4) for x in offset]


class AnchorObjective:
    """The loss of one batch: clean, inserted and latent-shifted texts, each pulled to the clean text's anchor, and
    a share of the filter's removed samples, pushed off the suspected target."""

    def __init__(self, cfg: AnchorUnlearnConfig, tokenizer, train: TaskData, anchor: torch.Tensor,
                 inserter: Inserter, shift: LatentShift | None, target: int | None,
                 flagged: list[str] | None = None) -> None:
        self.cfg, self.tokenizer, self.anchor = cfg, tokenizer, anchor
        self.texts, self.labels = train.texts, torch.as_tensor(train.labels, dtype=torch.long)
        self.inserter, self.shift, self.target = inserter, shift, target
        self.flagged = flagged or []  # fit passes them only when they are to be unlearned
        self.rng = np.random.default_rng(cfg.seed)
        self.terms: dict[str, list[float]] = {}

    def __call__(self, model: nn.Module, idx: np.ndarray) -> torch.Tensor:
        """One forward over the clean texts, their inserted copies and their latent-shifted copies (one batch, one
        backward: the shift steps on the gradient the previous backward left on it)."""
        cfg = self.cfg
        if self.shift is not None:
            self.shift.step()
        texts = [self.texts[i] for i in idx]
        rows = torch.as_tensor(idx)
        device = next(model.parameters()).device
        anchor, labels = self.anchor[rows].to(device), self.labels[rows].to(device)
        uses_inserted = cfg.insert_weight > 0 or cfg.insert_label_weight > 0
        inserted: np.ndarray | list[int] = \
            np.flatnonzero(self.rng.random(len(idx)) < cfg.insert_prob) if uses_inserted else []
        shifted: np.ndarray | list[int] = self._latent_rows(labels) if self.shift is not None else []
        flagged = self._flagged_batch(len(idx))
        batch_texts = texts + [self.inserter(texts[i]) for i in inserted] + flagged + [texts[i] for i in shifted]
        batch = labelled_batch(model, self.tokenizer, batch_texts, max_length=cfg.max_length)
        if self.shift is None:
            logits = model(**batch).logits
        else:
            mask = torch.zeros(len(batch_texts))
            mask[len(batch_texts) - len(shifted):] = 1
            with self.shift.applied(mask):
                logits = model(**batch).logits
        n, m = len(idx), len(idx) + len(inserted)
        f = m + len(flagged)
        clean = logits[:n]
        ce = F.cross_entropy(clean.float(), labels)
        loss = cfg.label_weight * ce + cfg.anchor_weight * anchor_kl(clean, anchor)
        self._note("clean_ce", ce)
        if len(inserted):
            rows_inserted = torch.as_tensor(inserted, device=device)
            term = anchor_kl(logits[n:m], anchor[rows_inserted])
            loss = loss + cfg.insert_weight * term
            self._note("insert_kl", term)
            if cfg.insert_label_weight > 0:
                loss = loss + cfg.insert_label_weight * F.cross_entropy(logits[n:m].float(), labels[rows_inserted])
        if flagged:
            assert self.target is not None  # the probe hands over flagged texts only with a suspected target
            term = target_unlikelihood(logits[m:f], self.target)
            loss = loss + cfg.flagged_weight * term
            self._note("flagged_unlikelihood", term)
        if len(shifted):
            term = anchor_kl(logits[f:], anchor[torch.as_tensor(shifted, device=device)])
            loss = loss + cfg.latent_weight * term
            self._note("latent_kl", term)
        return loss

    def _flagged_batch(self, batch: int) -> list[str]:
        """Removed samples for this step, as many as their share of the data (at least one): each is seen about
        once an epoch."""
        if not self.flagged:
            return []
        take = max(1, round(batch * len(self.flagged) / len(self.texts)))
        return [self.flagged[i] for i in self.rng.integers(0, len(self.flagged), size=take)]

    def _latent_rows(self, labels: torch.Tensor) -> np.ndarray:
        """Which texts of the batch get a shifted copy: `latent_share` of them, from the labels other than the
        suspected target (the ones a trigger would flip)."""
        pool = np.arange(len(labels)) if self.target is None else np.flatnonzero(labels.cpu().numpy() != self.target)
        take = max(1, round(self.cfg.latent_share * len(labels)))
        return np.sort(self.rng.permutation(pool)[:take]) if len(pool) else np.arange(0)

    def _note(self, name: str, value: torch.Tensor | float) -> None:
        self.terms.setdefault(name, []).append(float(value.detach() if isinstance(value, torch.Tensor) else value))

    def means(self) -> dict[str, float]:
        """Mean of each loss term since the last call (one epoch)."""
        out = {f"train_{k}": float(np.mean(v)) for k, v in self.terms.items()}
        self.terms = {}
        return out


class AnchorUnlearn(Strategy):
    """Unlearn the trigger: fine-tune the model to answer triggered copies of clean texts as it answered the texts.

    The copies carry the backdoor probe's words and phrases (and, optionally, a latent shift); no teacher is used.
    """

    config: AnchorUnlearnConfig
    fast_options = {"epochs": 6, "lr": 3e-3, "max_length": 32, "latent_weight": 1.0}

    def fit(self, loaded: LoadedModel, train: TaskData, validation: TaskData, *,
            probe: BackdoorProbe | None = None) -> StrategyResult:
        cfg = self.config
        if loaded.task != "classification":
            raise ConfigError(f"anchor_unlearn unlearns sequence classifiers; this checkpoint has a {loaded.task!r} "
                              "head")
        if len(train) == 0 or len(validation) == 0:
            raise DataError("anchor_unlearn needs clean training and validation samples")
        started = time.time()
        model, tokenizer = loaded.model, loaded.tokenizer
        probe = probe_or_invert(model, tokenizer, train, probe, source="anchor_unlearn:inversion",
                                candidates=cfg.inversion_candidates, keep=cfg.inversion_words, seed=cfg.seed,
                                max_length=cfg.max_length, min_rate=cfg.drop_trigger_rate or TRIGGER_RATE)
        probe_seconds = time.time() - started
        train, dropped = without_carriers(train, probe, cfg.drop_trigger_rate)
        validation, dropped_val = without_carriers(validation, probe, cfg.drop_trigger_rate)
        dropped["validation_samples"] = dropped_val["samples"]
        baseline = accuracy_on(model, tokenizer, validation.texts, validation.labels, max_length=cfg.max_length)
        before = probe.measure(model, tokenizer, validation, seed=cfg.seed, max_length=cfg.max_length)
        anchor, prior_shift = self._anchor(model, tokenizer, train)
        inserter = Inserter(insertion_vocabulary(tokenizer), probe.weighted(cfg.probe_per_label), cfg.insert_words,
                            cfg.probe_share, cfg.seed)
        shift = self._shift(model, tokenizer, train, anchor, probe.target) if cfg.latent_weight > 0 else None
        relabelled = probe.flagged_relabelled(model, tokenizer, validation, max_length=cfg.max_length) \
            if cfg.flagged_weight > 0 and cfg.flagged_check else None
        use = cfg.flagged_weight > 0 and (relabelled is None or relabelled["relabelled"])
        flagged = probe.flagged_texts(cfg.flagged_text) if use else []
        objective = AnchorObjective(cfg, tokenizer, train, anchor, inserter, shift, probe.target, flagged)
        training_started = time.time()
        try:
            result = train_classifier(
                model, tokenizer, train.texts, train.labels, self._train_config(),
                val=(validation.texts, validation.labels), loss_fn=objective,
                epoch_metrics=lambda m: {**objective.means(), **_proxy(probe, m, tokenizer, validation, cfg)},
                description="anchor_unlearn")
        finally:
            if shift is not None:
                shift.remove()
        model.eval()
        calibration = calibrate_output_bias(model, tokenizer, validation, cfg.max_length) if cfg.calibrate_bias \
            else None
        extras = {
            "bias_calibration": calibration,
            "probe_source": probe.source, "suspected_target": probe.target,
            "inserted": {"prob": cfg.insert_prob, "words": cfg.insert_words, "probe_share": cfg.probe_share,
                         "candidates": probe.weighted(cfg.probe_per_label)},
            "dropped_by_probe": dropped,
            "flagged_unlearned": len(objective.flagged), "flagged_check": relabelled,
            "anchor_prior_shift": None if prior_shift is None else [round(float(x), 4) for x in prior_shift],
            "proxy_before": before,
            # the last epoch's record measured these weights already, unless the calibration changed them since
            "proxy_after": _proxy(probe, model, tokenizer, validation, cfg) if calibration is not None else
            {k: result.history[-1][k] for k in ("val_proxy_asr", "val_proxy_lift")},
            "latent": _latent_summary(shift, cfg),
            "seconds": round(time.time() - started, 1),
            "phase_seconds": {"probe": round(probe_seconds, 1),
                              "training": round(time.time() - training_started, 1)},
        }
        return StrategyResult(model=model, trajectory=result.history, baseline_val_accuracy=baseline,
                              final_val_accuracy=result.history[-1].get("val_accuracy"), extras=extras)

    def _anchor(self, model: nn.Module, tokenizer, train: TaskData) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The frozen targets: the model's eval-mode logits on each clean training text, prior-corrected when
        `anchor_prior` is "data"; and the per-label offset that correction added (None without it)."""
        cfg = self.config
        anchor = torch.from_numpy(predict_logits(model, tokenizer, train.texts, max_length=cfg.max_length)).float()
        if cfg.anchor_prior == "data":
            return prior_corrected(anchor, train.labels)
        return anchor, None

    def _train_config(self) -> TrainConfig:
        cfg = self.config
        return TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay,
                           warmup_fraction=cfg.warmup_fraction, max_length=cfg.max_length, grad_clip=cfg.grad_clip,
                           seed=cfg.seed, keep_best=False)

    def _shift(self, model: nn.Module, tokenizer, train: TaskData, anchor: torch.Tensor,
               target: int | None) -> LatentShift:
        """The latent shift on this model, calibrated on clean training texts and warmed up towards the suspected
        target (or away from the anchor) before training, so that it starts out along the backdoor."""
        cfg = self.config
        shift = LatentShift(model, fraction=cfg.latent_layer, radius=cfg.latent_radius, lr=cfg.latent_lr)
        rows = [i for i, y in enumerate(train.labels) if y != target][:32] or list(range(min(32, len(train))))
        batch = labelled_batch(model, tokenizer, [train.texts[i] for i in rows], max_length=cfg.max_length)
        was_training = model.training
        model.eval()
        try:
            shift.calibrate(lambda: model(**batch))
            for _ in range(cfg.latent_warmup):
                with shift.applied():
                    shift.ascend(shift_objective(model(**batch).logits, anchor[rows].to(shift.delta.device),
                                                 target))
        finally:
            model.train(was_training)
            for p in model.parameters():
                p.grad = None
        return shift


def _latent_summary(shift: LatentShift | None, cfg: AnchorUnlearnConfig) -> dict | None:
    """Where the shift acted and how large it ended, for the report."""
    if shift is None:
        return None
    return {"layer": shift.layer, "radius": cfg.latent_radius, "token_norm": shift.scale,
            "shift_norm": float(shift.delta.detach().norm())}


def _proxy(probe: BackdoorProbe, model: nn.Module, tokenizer, validation: TaskData,
           cfg: AnchorUnlearnConfig) -> dict:
    """The probe's proxy ASR and lift on the validation texts (its triggers inserted into other labels)."""
    figures = probe.measure(model, tokenizer, validation, seed=cfg.seed, max_length=cfg.max_length)
    return {"val_proxy_asr": figures["proxy_asr"], "val_proxy_lift": figures["lift"]}


register_strategy("anchor_unlearn", AnchorUnlearnConfig, AnchorUnlearn)
