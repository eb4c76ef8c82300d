"""The three distillation terms: cross-entropy on the labels, temperature-scaled KL to the teacher, and the
per-sample alignment of the student's projected feature with the teacher's."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from purify.losses import kd_loss


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
