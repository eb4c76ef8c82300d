"""w2s_distill: weak-to-strong unlearning (W2SDefense, arXiv 2410.14425) with a clean teacher and SafeGrad.

The suspicious model (the student) gets LoRA adapters on its attention projections plus a trainable copy of its
classification head, and is fine-tuned on clean data towards a small clean teacher: cross-entropy on the labels,
temperature-scaled KL to the teacher's label distribution, and a per-sample feature alignment between the
student's pooled feature (through a learned projector) and the teacher's pooled feature for the same text. Each
model tokenizes the raw text with its own tokenizer. With ``surgery="safegrad"`` the part of the task gradient
that conflicts with the alignment gradient is removed before each step (purify.surgery). The epoch kept is chosen
on clean validation data (accuracy, optionally the inverted-trigger flip rate), and the LoRA weights are merged, so
the result is an ordinary transformers model.
"""
from __future__ import annotations

import math
import random
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from purify.probe import TRIGGER_RATE, BackdoorProbe, probe_or_invert, without_carriers
from purify.checkpoint import LoadedModel
from purify.data import TaskData
from purify.device import model_device, seed_everything
from purify.errors import ConfigError, DataError
from purify.inference import MAX_LENGTH, labelled_batch, predict, predict_logits
from purify.inversion import insert_words, insertion_vocabulary, predict_inserted
from purify.losses import kd_loss
from purify.lora import lora_target_modules
from purify.progress import track
from purify.registry import Strategy, StrategyConfig, StrategyResult, option, register_strategy
from purify.surgery import accumulate, combine, safegrad
from purify.training import accuracy_on

SURGERIES = ("none", "safegrad")
SELECTIONS = ("accuracy", "inverted_flip")
PERTURBED_TARGETS = ("teacher", "self", "original")
AUTO_TEACHER = "auto"  # minilm-l3 for an encoder student, minilm-l6 for a decoder student
FLIP_PROBE_SAMPLES = 256  # validation texts used for the insertion-flip diagnostic


@dataclass
class W2SDistillConfig(StrategyConfig):
    """Knobs of the weak-to-strong unlearner: the distillation run, its losses, the LoRA adapters, the epoch kept
    and the teacher-supervised input perturbation.

    perturbed_target: "teacher" pulls a perturbed text towards the teacher's distribution on it; "self" towards the
    student's own (no gradient) on the text before the words were inserted: the backdoor is dormant there, so the
    strong model learns to ignore inserted words without inheriting the weak teacher's errors on them (which bound
    the ASR a student imitating it can reach); "original" towards the suspicious model's eval-mode distribution on
    the unperturbed text, computed once before training (frozen, unlike "self"). Clean texts follow the teacher
    either way, and feature alignment always uses the teacher's feature of the text the student saw.
    """

    teacher: str = option(AUTO_TEACHER, "a teacher recipe (see teachers.RECIPES) or a clean model folder; auto = "
                          "minilm-l3 for an encoder student, minilm-l6 for a decoder student")
    epochs: int = option(5, "passes of the distillation run", low=1)
    lr: float = option(1e-3, "learning rate of the LoRA weights, the head copy and the projector", low=0,
                       low_open=True)
    batch_size: int = option(32, "texts per micro-batch", low=1)
    grad_accum: int = option(1, "micro-batches per optimizer step (gradients summed, surgery done once per step)",
                             low=1)
    alpha: float = option(1.0, "weight of cross-entropy on the labels", low=0)
    beta: float = option(1.0, "weight of the T^2-scaled KL to the teacher", low=0)
    gamma: float = option(1.0, "weight of the feature alignment to the teacher", low=0)
    temperature: float = option(2.0, "distillation temperature T", low=0, low_open=True)
    surgery: str = option("none", "none: one summed loss; safegrad: the task-gradient component conflicting with the "
                          "alignment gradient is removed each step", choices=SURGERIES)
    rho: float = option(1.0, "weight of the alignment gradient in the SafeGrad update g_task' + rho * g_align", low=0)
    lora_rank: int = option(8, "rank of the LoRA adapters on the attention projections", low=1)
    lora_alpha: float = option(16.0, "LoRA scaling alpha")
    lora_dropout: float = option(0.1, "LoRA dropout", low=0, high=1, high_open=True)
    weight_decay: float = option(0.01, "AdamW weight decay", low=0)
    warmup_fraction: float = option(0.06, "share of the steps with a linear learning-rate warm-up", low=0, high=1,
                                    high_open=True)
    grad_clip: float = option(1.0, "global gradient-norm clip", low=0)
    max_length: int = option(MAX_LENGTH, "tokens per text, for student and teacher alike", low=1)
    select_tolerance: float = option(0.0, "epochs whose clean validation accuracy is within this of the best can be "
                                     "kept", low=0)
    select_by: str = option("accuracy", "which of those is kept: accuracy (the latest) or inverted_flip (the one "
                            "whose inverted trigger words flip the fewest clean non-target validation texts, ties to "
                            "the latest; accuracy when there is no inversion); neither needs triggered data "
                            "(inverted_flip: benchmarks/experiments/w2s-select-by-inverted-flip)", choices=SELECTIONS)
    patience: int | None = option(None, "stop after this many epochs without a new best validation accuracy (none: "
                                  "run all epochs)", low=1)
    augment_prob: float = option(0.5, "share of the clean training texts that get random words of the student's "
                                 "vocabulary inserted and are supervised by the teacher, so the student unlearns "
                                 "reacting to stray words the teacher ignores (0, or no teacher: off)", low=0, high=1)
    augment_words: int = option(2, "at most this many words inserted into one perturbed text", low=0)
    augment_keeps_label: bool = option(False, "a perturbed text also keeps its label for cross-entropy "
                                       "(benchmarks/experiments/w2s-augment-keeps-label)")
    perturbed_target: str = option("teacher", "whose distribution KD pulls a perturbed text towards: teacher, self "
                                   "or original (benchmarks/experiments/w2s-perturbed-target-self)",
                                   choices=PERTURBED_TARGETS)
    inverted_share: float = option(0.5, "share of the inserted words drawn from trigger inversion (the words that "
                                   "flip the most clean samples of the other labels) instead of the whole "
                                   "vocabulary; 0 skips the inversion", low=0, high=1)
    inversion_candidates: int = option(48, "words measured exactly per label during inversion", low=1)
    inversion_words: int = option(8, "words kept per label by that inversion", low=1)
    drop_trigger_rate: float | None = option(0.9, "leave out target-label training samples holding an inverted word "
                                             "that flips at least this share of probe samples, as a poisoned sample "
                                             "the pre-filter missed would teach the backdoor again (none keeps all)",
                                             low=0, low_open=True, high=1)

    def validate(self) -> None:
        super().validate()
        if not self.teacher:
            raise ConfigError("W2SDistillConfig: teacher must name a recipe or a model folder")
        if self.alpha + self.beta + self.gamma <= 0:
            raise ConfigError("W2SDistillConfig: at least one of alpha, beta, gamma must be > 0")

    @property
    def uses_teacher(self) -> bool:
        return self.beta > 0 or self.gamma > 0

    @classmethod
    def search_space(cls) -> dict[str, dict]:
        return {
            "lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
            "epochs": {"type": "int", "low": 2, "high": 8},
            "beta": {"type": "float", "low": 0.0, "high": 4.0},
            "gamma": {"type": "float", "low": 0.0, "high": 4.0},
            "temperature": {"type": "float", "low": 1.0, "high": 4.0},
            "lora_rank": {"type": "categorical", "choices": [4, 8, 16, 32]},
            "surgery": {"type": "categorical", "choices": list(SURGERIES)},
            "augment_prob": {"type": "float", "low": 0.0, "high": 1.0},
            "augment_words": {"type": "int", "low": 0, "high": 4},
            "inverted_share": {"type": "float", "low": 0.0, "high": 1.0},
            "augment_keeps_label": {"type": "categorical", "choices": [True, False]},
            "perturbed_target": {"type": "categorical", "choices": list(PERTURBED_TARGETS)},
        }


# -- the student's head and pooled feature ------------------------------------------------------------------

def head_module_names(model: nn.Module) -> list[str]:
    """Top-level modules with weights outside the backbone: the classification head ("classifier", "score", ...)."""
    prefix = getattr(model, "base_model_prefix", "")
    backbone = getattr(model, prefix, None) if prefix else None
    names = [name for name, child in model.named_children()
             if child is not backbone and any(True for _ in child.parameters())]
    if not names:
        raise ConfigError(f"cannot find a classification head on this {type(model).__name__}")
    return names


class FeatureTap:
    """Captures, on every forward, the per-sample pooled feature the classification head reads.

    A hook on the head's first module sees its input: a (batch, dim) pooled vector for BERT-style heads
    ([CLS] / pooler output), or (batch, tokens, dim) hidden states. A plain linear head over all tokens (decoder
    classifiers: "score") pools at the last non-pad token; a head module over all tokens (RoBERTa/ELECTRA) reads
    the first token.
    """

    def __init__(self, module: nn.Module, last_token: bool) -> None:
        self.last_token = last_token
        self.value: torch.Tensor | None = None
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, _module: nn.Module, args: tuple) -> None:
        self.value = args[0]

    def pooled(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, dim) feature of the last forward."""
        if self.value is None:
            raise RuntimeError("no forward has run since the tap was attached")
        return pool_hidden(self.value, attention_mask, self.last_token)

    def remove(self) -> None:
        self._handle.remove()


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, last_token: bool) -> torch.Tensor:
    """One vector per sample: as is when already pooled, else the last non-pad or the first token."""
    if hidden.dim() == 2:
        return hidden
    if not last_token:
        return hidden[:, 0]
    mask = attention_mask.to(hidden.device).long()
    positions = torch.arange(mask.shape[1], device=hidden.device)
    last = (positions * mask).argmax(-1)  # rightmost real token, whichever side the padding is on
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def pools_last_token(model: nn.Module) -> bool:
    """Whether the head is a plain linear layer scoring every token (decoder classifiers pool the last one)."""
    return isinstance(model.get_submodule(head_module_names(model)[0]), nn.Linear)


@torch.no_grad()
def is_decoder_classifier(model: nn.Module, tokenizer) -> bool:
    """Whether the classifier scores every token and pools the last one (decoder LMs), found by one probe forward.

    A BERT head is also a plain linear layer, but it reads an already pooled (batch, dim) vector.
    """
    if not pools_last_token(model):
        return False
    tap = FeatureTap(model.get_submodule(head_module_names(model)[0]), True)
    was_training = model.training
    model.eval()
    try:
        model(**labelled_batch(model, tokenizer, ["a short probe"], max_length=8))
        return tap.value is not None and tap.value.dim() == 3
    finally:
        tap.remove()
        model.train(was_training)


@torch.no_grad()
def pooled_outputs(model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 64,
                   max_length: int = MAX_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (n, labels), pooled features (n, dim)) of a classifier over `texts`, in eval mode, on its device."""
    was_training = model.training
    model.eval()
    tap = FeatureTap(model.get_submodule(head_module_names(model)[0]), pools_last_token(model))
    logits, feats = [], []
    try:
        for start in range(0, len(texts), batch_size):
            batch = labelled_batch(model, tokenizer, texts[start:start + batch_size], max_length=max_length)
            logits.append(model(**batch).logits.float())
            feats.append(tap.pooled(batch["attention_mask"]).float())
    finally:
        tap.remove()
        model.train(was_training)
    return torch.cat(logits), torch.cat(feats)


# -- the loss ------------------------------------------------------------------------------------------------

def alignment_loss(student_feats: torch.Tensor, teacher_feats: torch.Tensor, projector: nn.Module) -> torch.Tensor:
    """Mean over samples of the mean squared distance between projector(student_i) and teacher_i (row i to row i)."""
    if student_feats.shape[0] != teacher_feats.shape[0]:
        raise ValueError(f"{student_feats.shape[0]} student features vs {teacher_feats.shape[0]} teacher features")
    diff = projector(student_feats) - teacher_feats.to(student_feats.dtype)
    return diff.pow(2).mean(dim=-1).mean()


def distill_losses(student_logits: torch.Tensor, student_feats: torch.Tensor | None, labels: torch.Tensor,
                   teacher_logits: torch.Tensor | None, teacher_feats: torch.Tensor | None,
                   projector: nn.Module | None, temperature: float,
                   labelled: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The three terms for one batch: ce, kd and feat (kd / feat omitted when their inputs are None).

    `labelled` (bool per sample) limits cross-entropy to the samples whose label still holds (the unperturbed
    ones); they are averaged over the whole batch, so a perturbed sample contributes only through the teacher.
    """
    ce = F.cross_entropy(student_logits, labels.to(student_logits.device), reduction="none")
    if labelled is not None:
        ce = ce * labelled.to(ce.device, ce.dtype)
    out = {"ce": ce.mean()}
    if teacher_logits is not None:
        out["kd"] = kd_loss(student_logits, teacher_logits, temperature)
    if teacher_feats is not None and projector is not None and student_feats is not None:
        out["feat"] = alignment_loss(student_feats, teacher_feats, projector)
    return out


# -- teacher-supervised input perturbation ------------------------------------------------------------------

def insertion_flip_rate(model: nn.Module, tokenizer, texts: Sequence[str], words: Sequence[str], count: int, *,
                        seed: int = 0, max_length: int = MAX_LENGTH) -> float:
    """Share of `texts` whose predicted label changes when `count` random vocabulary words are inserted.

    A clean model barely reacts to a few inserted random words; a model with an insertion backdoor reacts far
    more, because its trigger detector also fires on look-alike rare words. Needs no trigger and no triggered data.
    """
    if not texts or not words or count < 1:
        return float("nan")
    before = predict(model, tokenizer, list(texts), max_length=max_length)
    after = predict_inserted(model, tokenizer, texts, words, count, seed=seed, max_length=max_length)
    return float((before != after).mean())


# -- the strategy --------------------------------------------------------------------------------------------

@dataclass
class _Teacher:
    """The clean teacher during distillation: model, tokenizer and a tap on its pooled feature."""

    model: nn.Module
    tokenizer: object
    tap: FeatureTap

    @torch.no_grad()
    def outputs(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = labelled_batch(self.model, self.tokenizer, texts, max_length=max_length)
        logits = self.model(**batch).logits.float()
        return logits, self.tap.pooled(batch["attention_mask"]).float()


class Augmenter:
    """Teacher-supervised perturbation: some texts get words inserted (and keep or lose their label).

    Each inserted word comes from the inverted-trigger words with probability `inverted_share` (drawn in proportion
    to the share of samples each flips), else from the whole vocabulary; the choice of texts and words is seeded.
    """

    def __init__(self, cfg: W2SDistillConfig, vocabulary: list[str], inverted: dict[str, float]) -> None:
        self.cfg, self.words, self.inverted = cfg, vocabulary, inverted
        self._inverted_words = list(inverted)
        self._weights = [max(w, 1e-6) for w in inverted.values()]
        self.rng = random.Random(cfg.seed)

    def _word(self) -> str:
        if self.inverted and self.rng.random() < self.cfg.inverted_share:
            return self.rng.choices(self._inverted_words, weights=self._weights)[0]
        return self.rng.choice(self.words)

    def __call__(self, batch_texts: list[str]) -> tuple[list[str], torch.Tensor | None]:
        """(texts, which were perturbed); unchanged texts and None when augmentation is off."""
        cfg = self.cfg
        if cfg.augment_prob <= 0 or cfg.augment_words < 1 or not (self.words or self.inverted):
            return batch_texts, None
        out, perturbed = [], []
        for text in batch_texts:
            perturb = self.rng.random() < cfg.augment_prob
            if perturb:
                for _ in range(self.rng.randint(1, cfg.augment_words)):
                    text = insert_words(text, [self._word()], 1, self.rng)
            out.append(text)
            perturbed.append(perturb)
        return out, torch.tensor(perturbed, dtype=torch.bool)

    def labelled(self, perturbed: torch.Tensor | None) -> torch.Tensor | None:
        """Which samples keep their label for cross-entropy: the unperturbed ones (all with augment_keeps_label)."""
        if perturbed is None or self.cfg.augment_keeps_label:
            return None
        return ~perturbed


def _inverted_flip(model: nn.Module, tokenizer, validation: TaskData, backdoor: BackdoorProbe | None,
                   cfg: W2SDistillConfig) -> float | None:
    """Share of non-target validation texts sent to the suspected target by one inserted trigger candidate."""
    if backdoor is None:
        return None
    return backdoor.proxy_asr(model, tokenizer, validation, seed=cfg.seed, limit=FLIP_PROBE_SAMPLES,
                              max_length=cfg.max_length)


class W2SDistill(Strategy):
    """Unlearn a backdoor by LoRA-distilling the suspicious model towards a small clean teacher on clean data."""

    config: W2SDistillConfig
    fast_options = {"teacher": "tiny", "epochs": 8, "lr": 3e-3, "max_length": 32}

    def fit(self, loaded: LoadedModel, train: TaskData, validation: TaskData, *,
            probe: BackdoorProbe | None = None) -> StrategyResult:
        cfg = self.config
        if loaded.task != "classification":
            raise ConfigError("w2s_distill unlearns sequence classifiers; this checkpoint has a "
                              f"{loaded.task!r} head")
        if len(train) == 0 or len(validation) == 0:
            raise DataError("w2s_distill needs clean training and validation samples")
        started = time.time()
        student, tokenizer = loaded.model, loaded.tokenizer
        device = model_device(student)
        head_names = head_module_names(student)
        last_token = pools_last_token(student)
        words = insertion_vocabulary(tokenizer)
        backdoor = self._backdoor_probe(student, tokenizer, train, probe)
        inversion_seconds = time.time() - started
        train, dropped = without_carriers(train, backdoor, cfg.drop_trigger_rate)
        validation, dropped_val = without_carriers(validation, backdoor, cfg.drop_trigger_rate)
        dropped["validation_samples"] = dropped_val["samples"]
        flip_texts = validation.subset(range(min(len(validation), FLIP_PROBE_SAMPLES))).texts
        flip_words = max(1, cfg.augment_words)
        baseline = accuracy_on(student, tokenizer, validation.texts, validation.labels, max_length=cfg.max_length)
        baseline_flip = insertion_flip_rate(student, tokenizer, flip_texts, words, flip_words, seed=cfg.seed,
                                            max_length=cfg.max_length)
        inverted = backdoor.weighted(cfg.inversion_words) if backdoor is not None else {}
        inverted_flip_before = _inverted_flip(student, tokenizer, validation, backdoor, cfg)

        teacher, teacher_info = None, {"teacher": None}
        teacher_started = time.time()
        if cfg.uses_teacher:
            teacher, teacher_info = self._load_teacher(loaded, train, validation,
                                                       is_decoder_classifier(student, tokenizer))
            teacher.model.to(device).eval()

        teacher_seconds = time.time() - teacher_started
        seed_everything(cfg.seed)
        projector = None
        if cfg.gamma > 0:
            _, s_feats = pooled_outputs(student, tokenizer, train.texts[:2], max_length=cfg.max_length)
            _, t_feats = teacher.outputs(train.texts[:2], cfg.max_length)
            projector = nn.Linear(s_feats.shape[1], t_feats.shape[1]).to(device)
        original_logits = None
        if cfg.perturbed_target == "original" and cfg.uses_teacher:  # before LoRA: the suspicious model itself
            original_logits = torch.from_numpy(predict_logits(student, tokenizer, train.texts,
                                                              max_length=cfg.max_length)).float()
        peft_model = self._with_lora(student, head_names)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        proj_params = list(projector.parameters()) if projector is not None else []
        tap = FeatureTap(peft_model.base_model.model.get_submodule(head_names[0]), last_token)
        augmenter = Augmenter(cfg, words, inverted) if teacher is not None else None
        loop = _Loop(cfg, peft_model, tokenizer, tap, params, projector, proj_params, teacher, augmenter,
                     original_logits)
        try:
            history, best = loop.run(train, validation, flip_texts,
                                     lambda model: _inverted_flip(model, tokenizer, validation, backdoor, cfg))
        finally:
            tap.remove()
            if teacher is not None:
                teacher.tap.remove()
        scratch = tempfile.TemporaryDirectory(prefix="purify-w2s-lora-")  # handed to the result, which deletes it
        try:
            adapter_dir = scratch.name
            peft_model.save_pretrained(adapter_dir)
            merged = peft_model.merge_and_unload().eval()
            final = accuracy_on(merged, tokenizer, validation.texts, validation.labels, max_length=cfg.max_length)
        except BaseException:
            scratch.cleanup()
            raise
        conflicts = [h["conflict_fraction"] for h in history if "conflict_fraction" in h]
        kept = next(h for h in history if h["epoch"] == best)  # its flip rates were measured on these weights
        extras = {
            **teacher_info,
            "best_epoch": best,
            "surgery": cfg.surgery,
            "conflict_fraction": float(np.mean(conflicts)) if conflicts else None,
            "insertion_flip": {"words": flip_words, "probe_samples": len(flip_texts), "before": baseline_flip,
                               "after": kept["val_insert_flip"]},
            "augmentation": {"prob": cfg.augment_prob, "words": cfg.augment_words, "vocabulary": len(words),
                             "inverted_share": cfg.inverted_share, "inverted_words": inverted},
            "inversion": backdoor.summary() if backdoor is not None else None,
            "dropped_by_inversion": dropped,
            "inverted_flip": {"target": backdoor.target if backdoor is not None else None,
                              "before": inverted_flip_before,
                              "after": kept["val_inverted_flip"]},
            "lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                     "target_modules": lora_target_modules(merged), "modules_to_save": head_names,
                     "trainable_parameters": int(sum(p.numel() for p in params))},
            "loss_weights": {"alpha": cfg.alpha, "beta": cfg.beta, "gamma": cfg.gamma,
                             "temperature": cfg.temperature, "rho": cfg.rho},
            "seconds": round(time.time() - started, 1),
            # where the time goes: trigger inversion, teacher (trained or loaded from the cache), the epochs'
            # training steps and their validation passes (per epoch in the trajectory)
            "phase_seconds": {"inversion": round(inversion_seconds, 1), "teacher": round(teacher_seconds, 1),
                              "training": round(sum(h["training_seconds"] for h in history), 1),
                              "validation": round(sum(h["validation_seconds"] for h in history), 1)},
        }
        return StrategyResult(model=merged, trajectory=history, baseline_val_accuracy=baseline,
                              final_val_accuracy=final, extras=extras, files={"lora_adapter": adapter_dir},
                              scratch=[scratch])

    def _backdoor_probe(self, student: nn.Module, tokenizer, train: TaskData,
                        probe: BackdoorProbe | None) -> BackdoorProbe | None:
        """The run's probe, else a trigger inversion on the clean training data; None when the augmentation
        uses no inverted words."""
        cfg = self.config
        if not cfg.uses_teacher or cfg.augment_prob <= 0 or cfg.augment_words < 1 or cfg.inverted_share <= 0:
            return None
        return probe_or_invert(student, tokenizer, train, probe, source="w2s_distill:inversion",
                               candidates=cfg.inversion_candidates, keep=cfg.inversion_words, seed=cfg.seed,
                               max_length=cfg.max_length, min_rate=cfg.drop_trigger_rate or TRIGGER_RATE)

    def _load_teacher(self, loaded: LoadedModel, train: TaskData, validation: TaskData,
                      student_is_decoder: bool) -> tuple[_Teacher, dict]:
        """Train (or load from the cache) the clean teacher; refuses the suspicious checkpoint itself."""
        from teachers.training import train as train_teacher  # submodule import: works however teachers is installed

        cfg = self.config
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
        tap = FeatureTap(model.get_submodule(head_module_names(model)[0]), pools_last_token(model))
        info = {
            "teacher": name,
            "teacher_path": str(loaded_teacher.path),
            "teacher_val_accuracy": accuracy_on(model, loaded_teacher.tokenizer, validation.texts,
                                                validation.labels, max_length=cfg.max_length),
        }
        return _Teacher(model, loaded_teacher.tokenizer, tap), info

    def _with_lora(self, model: nn.Module, head_names: list[str]) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        cfg = self.config
        peft_config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=lora_target_modules(model), modules_to_save=list(head_names),
                                 task_type="SEQ_CLS")
        with warnings.catch_warnings():  # peft calls a transformers API that transformers 5 marks deprecated
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(model, peft_config)


class _Loop:
    """The distillation loop over clean (optionally perturbed) texts, with per-epoch validation."""

    def __init__(self, cfg: W2SDistillConfig, model: nn.Module, tokenizer, tap: FeatureTap,
                 params: list[nn.Parameter], projector: nn.Module | None, proj_params: list[nn.Parameter],
                 teacher: _Teacher | None, augmenter: Augmenter | None,
                 original_logits: torch.Tensor | None = None) -> None:
        self.cfg, self.model, self.tokenizer, self.tap = cfg, model, tokenizer, tap
        self.params, self.projector, self.proj_params = params, projector, proj_params
        self.teacher, self.augmenter = teacher, augmenter
        self.original_logits = original_logits  # (n_train, labels): the suspicious model on each clean text

    def run(self, train: TaskData, validation: TaskData, probe: list[str],
            inverted_flip: Callable[[nn.Module], float | None]) -> tuple[list[dict], int]:
        """Train for the configured epochs; restore the kept epoch's trainable weights; (history, kept epoch).

        `inverted_flip` measures a model's inverted-trigger flip rate on clean validation texts (None without an
        inversion); it is recorded per epoch and can choose the kept epoch (select_by="inverted_flip").
        """
        cfg, model = self.cfg, self.model
        texts, labels = train.texts, train.labels
        n = len(texts)
        per_step = cfg.batch_size * cfg.grad_accum
        total = max(1, math.ceil(n / per_step) * cfg.epochs)
        warmup = int(total * cfg.warmup_fraction)
        optimizer = torch.optim.AdamW(self.params + self.proj_params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
        order_rng = np.random.default_rng(cfg.seed)
        history: list[dict] = []
        snapshots: dict[int, dict[str, torch.Tensor]] = {}
        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        best_acc, stale = -1.0, 0
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            if self.projector is not None:
                self.projector.train()
            order = order_rng.permutation(n)
            sums: dict[str, float] = {}
            conflicts, steps = 0, 0
            epoch_started = time.time()
            starts = range(0, n, per_step)
            for start in track(starts, description=f"w2s_distill epoch {epoch}/{cfg.epochs}", total=len(starts)):
                terms, conflict = self._step(texts, labels, order[start:start + per_step])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                conflicts += int(conflict)
                steps += 1
            train_seconds = time.time() - epoch_started
            model.eval()
            acc = accuracy_on(model, self.tokenizer, validation.texts, validation.labels, max_length=cfg.max_length)
            flip = insertion_flip_rate(model, self.tokenizer, probe, self.augmenter.words if self.augmenter else [],
                                       max(1, cfg.augment_words),
                                       seed=cfg.seed, max_length=cfg.max_length)
            record = {"epoch": epoch, "val_accuracy": acc, "val_insert_flip": flip,
                      "val_inverted_flip": inverted_flip(model),
                      **{f"train_{k}": v / steps for k, v in sums.items()},
                      "training_seconds": round(train_seconds, 1),
                      "validation_seconds": round(time.time() - epoch_started - train_seconds, 1)}
            if cfg.surgery == "safegrad":
                record["conflict_fraction"] = conflicts / steps
            history.append(record)
            snapshots[epoch] = {k: p.detach().clone() for k, p in trainable.items()}
            if acc > best_acc:
                best_acc, stale = acc, 0
            else:
                stale += 1
            # only epochs that can still be kept need their weights
            snapshots = {e: s for e, s in snapshots.items()
                         if history[e - 1]["val_accuracy"] >= best_acc - cfg.select_tolerance}
            if cfg.patience is not None and stale >= cfg.patience:
                break
        kept = kept_epoch(history, list(snapshots), cfg.select_by)
        with torch.no_grad():
            for k, p in trainable.items():
                p.copy_(snapshots[kept][k])
        for record in history:
            record["kept"] = record["epoch"] == kept
        model.eval()
        return history, kept

    def _step(self, texts: list[str], labels: list[int], chunk: np.ndarray) -> tuple[dict[str, float], bool]:
        """Accumulate one optimizer step's gradients into .grad over its micro-batches; (mean terms, conflict)."""
        cfg, model = self.cfg, self.model
        params, proj_params = self.params, self.proj_params
        surgery = cfg.surgery == "safegrad"
        g_task = g_align = None
        terms: dict[str, float] = {}
        for mstart in range(0, len(chunk), cfg.batch_size):
            idx = chunk[mstart:mstart + cfg.batch_size]
            weight = len(idx) / len(chunk)  # micro-batch share, so the sum is the mean over the whole step
            originals = [texts[i] for i in idx]
            batch_texts, perturbed = (originals, None) if self.augmenter is None else self.augmenter(originals)
            labelled = self.augmenter.labelled(perturbed) if self.augmenter is not None else None
            batch = labelled_batch(model, self.tokenizer, batch_texts, [labels[i] for i in idx], cfg.max_length)
            y = batch.pop("labels")
            t_logits = t_feats = feats = None
            if self.teacher is not None:
                t_logits, t_feats = self.teacher.outputs(batch_texts, cfg.max_length)
                if cfg.perturbed_target == "self" and perturbed is not None and bool(perturbed.any()):
                    t_logits = self._own_targets(t_logits, originals, perturbed)
                elif self.original_logits is not None and perturbed is not None and bool(perturbed.any()):
                    t_logits = t_logits.clone()
                    rows = perturbed.to(t_logits.device)
                    t_logits[rows] = self.original_logits[torch.as_tensor(idx)][perturbed].to(t_logits.device)
            logits = model(**batch).logits  # after the no-grad passes: the tap keeps this forward's feature
            if self.projector is not None:
                feats = self.tap.pooled(batch["attention_mask"])
            losses = distill_losses(logits, feats, y, t_logits if cfg.beta > 0 else None,
                                    t_feats if self.projector is not None else None, self.projector,
                                    cfg.temperature, labelled)
            for k, v in losses.items():
                terms[k] = terms.get(k, 0.0) + float(v.detach()) * weight
            task = cfg.alpha * losses["ce"] * weight
            align = (cfg.beta * losses.get("kd", 0.0) + cfg.gamma * losses.get("feat", 0.0)) * weight
            if not surgery:
                (task + align).backward()
                continue
            g_task = accumulate(g_task, _grads(task, params, retain=True))
            g_align = accumulate(g_align, _grads(align, params + proj_params, retain=False))
        conflict = False
        if surgery:
            shared, own = g_align[:len(params)], g_align[len(params):]
            update, stats = safegrad(g_task, shared, cfg.rho)
            conflict = stats.conflict
            # the projector only serves the alignment term: it steps on rho * its alignment gradient
            for p, g in zip(params + proj_params, update + combine([None] * len(own), own, cfg.rho)):
                p.grad = None if g is None else g.to(p.dtype)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params + proj_params, cfg.grad_clip)
        return terms, conflict

    @torch.no_grad()
    def _own_targets(self, t_logits: torch.Tensor, originals: list[str], perturbed: torch.Tensor) -> torch.Tensor:
        """The KD targets with each perturbed row replaced by the student's eval-mode logits on its original text."""
        rows = perturbed.nonzero().flatten().tolist()
        batch = labelled_batch(self.model, self.tokenizer, [originals[i] for i in rows],
                               max_length=self.cfg.max_length)
        self.model.eval()
        try:
            own = self.model(**batch).logits.float()
        finally:
            self.model.train()
        out = t_logits.clone()
        out[rows] = own.to(out.device)
        return out


def kept_epoch(history: list[dict], candidates: list[int], select_by: str) -> int:
    """The epoch to keep among `candidates` (those within select_tolerance of the best validation accuracy).

    "accuracy": the latest; "inverted_flip": the lowest per-epoch inverted-trigger flip rate, ties to the latest
    (the latest too when an epoch has no flip rate, i.e. there was no inversion).
    """
    if select_by == "inverted_flip":
        flips = {e: history[e - 1].get("val_inverted_flip") for e in candidates}
        if all(f is not None and math.isfinite(f) for f in flips.values()):
            return min(candidates, key=lambda e: (flips[e], -e))
    return max(candidates)


def _grads(loss: torch.Tensor | float, params: list[nn.Parameter], retain: bool) -> list[torch.Tensor | None]:
    """d loss / d params (None for a parameter the loss does not reach, or for a constant loss)."""
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        return [None] * len(params)
    return list(torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True))


register_strategy("w2s_distill", W2SDistillConfig, W2SDistill)
