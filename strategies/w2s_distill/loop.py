"""The distillation run on purify's shared training loop: its batches, its step (with SafeGrad surgery) and its
per-epoch validation, and the epoch it keeps."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from purify.data import TaskData
from purify.inference import labelled_batch
from purify.surgery import accumulate, combine, safegrad
from purify.training import EpochLoop, TrainConfig, accuracy_on

from .augment import Augmenter, insertion_flip_rate
from .config import W2SDistillConfig
from .features import FeatureTap
from .losses import distill_losses
from .teacher import Teacher

if TYPE_CHECKING:
    from peft import PeftModel


class DistillLoop(EpochLoop):
    """The distillation loop over clean (optionally perturbed) texts, with per-epoch validation.

    `inverted_flip` measures a model's inverted-trigger flip rate on clean validation texts (None without an
    inversion); it is recorded per epoch and can choose the kept epoch (select_by="inverted_flip").
    """

    def __init__(self, cfg: W2SDistillConfig, model: PeftModel, tokenizer, tap: FeatureTap,
                 params: list[nn.Parameter], projector: nn.Module | None, proj_params: list[nn.Parameter],
                 teacher: Teacher | None, augmenter: Augmenter | None, train: TaskData, validation: TaskData,
                 probe: list[str], inverted_flip: Callable[[nn.Module], float | None],
                 original_logits: torch.Tensor | None = None) -> None:
        per_step = cfg.batch_size * cfg.grad_accum
        config = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay,
                             warmup_fraction=cfg.warmup_fraction, max_length=cfg.max_length, grad_clip=cfg.grad_clip,
                             seed=cfg.seed, patience=cfg.patience)
        modules = [model] + ([projector] if projector is not None else [])
        super().__init__(modules, params + proj_params, config, math.ceil(len(train) / per_step), "w2s_distill")
        self.cfg, self.model, self.tokenizer, self.tap, self.per_step = cfg, model, tokenizer, tap, per_step
        self.shared, self.projector, self.proj_params = params, projector, proj_params
        self.teacher, self.augmenter = teacher, augmenter
        self.train_data, self.validation, self.probe, self.inverted_flip = train, validation, probe, inverted_flip
        self.original_logits = original_logits  # (n_train, labels): the suspicious model on each clean text

    # -- what the shared loop asks ---------------------------------------------------------------------------
    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        order = rng.permutation(len(self.train_data))
        return [order[start:start + self.per_step] for start in range(0, len(order), self.per_step)]

    def step(self, chunk: np.ndarray) -> tuple[dict[str, float], bool]:
        """Accumulate one optimizer step's gradients into .grad over its micro-batches; (mean terms, conflict)."""
        cfg = self.cfg
        surgery = cfg.surgery == "safegrad"
        g_task = g_align = None
        terms: dict[str, float] = {}
        for mstart in range(0, len(chunk), cfg.batch_size):
            idx = chunk[mstart:mstart + cfg.batch_size]
            weight = len(idx) / len(chunk)  # micro-batch share, so the sum is the mean over the whole step
            losses = self._losses(idx)
            for k, v in losses.items():
                terms[k] = terms.get(k, 0.0) + float(v.detach()) * weight
            task = cfg.alpha * losses["ce"] * weight
            align = (cfg.beta * losses.get("kd", 0.0) + cfg.gamma * losses.get("feat", 0.0)) * weight
            if not surgery:
                (task + align).backward()
                continue
            g_task = accumulate(g_task, _grads(task, self.shared, retain=True))
            g_align = accumulate(g_align, _grads(align, self.shared + self.proj_params, retain=False))
        if not surgery:
            return terms, False
        assert g_task is not None and g_align is not None  # a step has at least one micro-batch
        return terms, self._surgery(g_task, g_align)

    def record(self, epoch: int, steps: list[tuple[dict[str, float], bool]], seconds: float) -> dict:
        cfg, model = self.cfg, self.model
        started = time.time()
        sums: dict[str, float] = {}
        for terms, _ in steps:
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
        acc = accuracy_on(model, self.tokenizer, self.validation.texts, self.validation.labels,
                          max_length=cfg.max_length)
        flip = insertion_flip_rate(model, self.tokenizer, self.probe, self.augmenter.words if self.augmenter else [],
                                   max(1, cfg.augment_words), seed=cfg.seed, max_length=cfg.max_length)
        record = {"epoch": epoch, "val_accuracy": acc, "val_insert_flip": flip,
                  "val_inverted_flip": self.inverted_flip(model),
                  **{f"train_{k}": v / len(steps) for k, v in sums.items()},
                  "training_seconds": round(seconds, 1),
                  "validation_seconds": round(time.time() - started, 1)}
        if cfg.surgery == "safegrad":
            record["conflict_fraction"] = sum(int(conflict) for _, conflict in steps) / len(steps)
        return record

    def candidates(self, history: list[dict], best_epoch: int, best: float) -> list[int]:
        """The epochs whose clean validation accuracy is within select_tolerance of the best."""
        return [r["epoch"] for r in history if r["val_accuracy"] >= best - self.cfg.select_tolerance]

    def choose(self, history: list[dict], candidates: list[int]) -> int:
        return kept_epoch(history, candidates, self.cfg.select_by)

    # -- one micro-batch --------------------------------------------------------------------------------------
    def _losses(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """The loss terms of one micro-batch (rows `idx` of the training data), perturbed by the augmenter."""
        cfg, model = self.cfg, self.model
        texts, labels = self.train_data.texts, self.train_data.labels
        originals = [texts[i] for i in idx]
        batch_texts, perturbed = (originals, None) if self.augmenter is None else self.augmenter(originals)
        labelled = self.augmenter.labelled(perturbed) if self.augmenter is not None else None
        batch = labelled_batch(model, self.tokenizer, batch_texts, [labels[i] for i in idx], cfg.max_length)
        y = batch.pop("labels")
        t_logits = t_feats = feats = None
        if self.teacher is not None:
            t_logits, t_feats = self.teacher.outputs(batch_texts, cfg.max_length)
            if perturbed is not None and bool(perturbed.any()):
                t_logits = self._perturbed_targets(t_logits, originals, perturbed, idx)
        logits = model(**batch).logits  # after the no-grad passes: the tap keeps this forward's feature
        if self.projector is not None:
            feats = self.tap.pooled(batch["attention_mask"])
        return distill_losses(logits, feats, y, t_logits if cfg.beta > 0 else None,
                              t_feats if self.projector is not None else None, self.projector,
                              cfg.temperature, labelled)

    def _perturbed_targets(self, t_logits: torch.Tensor, originals: list[str], perturbed: torch.Tensor,
                           idx: np.ndarray) -> torch.Tensor:
        """The KD targets of the perturbed rows for perturbed_target "self" or "original" (else the teacher's)."""
        if self.cfg.perturbed_target == "self":
            return own_targets(self.model, self.tokenizer, t_logits, originals, perturbed, self.cfg.max_length)
        if self.original_logits is None:
            return t_logits
        out = t_logits.clone()
        out[perturbed.to(out.device)] = self.original_logits[torch.as_tensor(idx)][perturbed].to(out.device)
        return out

    def _surgery(self, g_task: list[torch.Tensor | None], g_align: list[torch.Tensor | None]) -> bool:
        """SafeGrad: write the surgically combined step into .grad; whether the two gradients conflicted."""
        shared, own = g_align[:len(self.shared)], g_align[len(self.shared):]
        update, stats = safegrad(g_task, shared, self.cfg.rho)
        # the projector only serves the alignment term: it steps on rho * its alignment gradient
        for p, g in zip(self.shared + self.proj_params, update + combine([None] * len(own), own, self.cfg.rho)):
            p.grad = None if g is None else g.to(p.dtype)
        return stats.conflict


@torch.no_grad()
def own_targets(model: nn.Module, tokenizer, t_logits: torch.Tensor, originals: list[str], perturbed: torch.Tensor,
                max_length: int) -> torch.Tensor:
    """The KD targets with each perturbed row replaced by the student's eval-mode logits on its original text."""
    rows = perturbed.nonzero().flatten().tolist()
    batch = labelled_batch(model, tokenizer, [originals[i] for i in rows], max_length=max_length)
    model.eval()
    try:
        own = model(**batch).logits.float()
    finally:
        model.train()
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
