"""SafeGrad gradient surgery: drop the part of the task gradient that fights the alignment gradient.

Gradients are lists of tensors, one per trainable parameter (``None`` = no gradient, read as zero), as
``torch.autograd.grad`` returns them. Where the task and alignment gradients conflict (negative dot product over
all parameters), the task gradient is projected onto the normal plane of the alignment gradient,

    g_task <- g_task - (<g_task, g_align> / ||g_align||^2) g_align,

so the step never undoes alignment; the update is then g_task + rho * g_align. Every function here is pure: it
returns new tensors and leaves its inputs untouched. With gradient accumulation, sum each gradient over the
micro-batches separately (`accumulate`) and project once per optimizer step.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

Grads = Sequence[torch.Tensor | None]


@dataclass(frozen=True)
class SurgeryStats:
    """What one projection did: the raw dot product and cosine, whether they conflicted, and the norms."""

    dot: float
    cosine: float
    conflict: bool
    task_norm: float
    align_norm: float

    def to_dict(self) -> dict:
        return asdict(self)


def _check(a: Grads, b: Grads) -> None:
    if len(a) != len(b):
        raise ValueError(f"gradient lists differ in length ({len(a)} vs {len(b)})")
    for x, y in zip(a, b):
        if x is not None and y is not None and x.shape != y.shape:
            raise ValueError(f"gradient shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")


def dot(a: Grads, b: Grads) -> torch.Tensor:
    """<a, b> summed over every parameter (float64 scalar; None entries count as zero)."""
    _check(a, b)
    parts = [(x.double() * y.double()).sum() for x, y in zip(a, b) if x is not None and y is not None]
    if not parts:
        return torch.zeros((), dtype=torch.float64)
    device = parts[0].device
    return torch.stack([p.to(device) for p in parts]).sum().cpu()  # one transfer, not one per parameter


def squared_norm(a: Grads) -> torch.Tensor:
    """||a||^2 over every parameter (float64 scalar)."""
    return dot(a, a)


def accumulate(total: Grads | None, grads: Grads) -> list[torch.Tensor | None]:
    """total + grads, element-wise (None + g = g); `total` None starts a new sum."""
    if total is None:
        return [None if g is None else g.detach().clone() for g in grads]
    _check(total, grads)
    out: list[torch.Tensor | None] = []
    for t, g in zip(total, grads):
        if g is None:
            out.append(t)
        elif t is None:
            out.append(g.detach().clone())
        else:
            out.append(t + g.detach())
    return out


def project_conflicting(task: Grads, align: Grads, eps: float = 1e-20) -> tuple[list[torch.Tensor | None],
                                                                                SurgeryStats]:
    """The task gradient with its component along `align` removed when <task, align> < 0 (else unchanged)."""
    d = dot(task, align)
    a2 = squared_norm(align)
    t2 = squared_norm(task)
    cosine = float(d / (t2.sqrt() * a2.sqrt()).clamp_min(1e-30))
    conflict = bool(d < 0) and float(a2) > eps
    stats = SurgeryStats(dot=float(d), cosine=cosine, conflict=conflict, task_norm=float(t2.sqrt()),
                         align_norm=float(a2.sqrt()))
    if not conflict:
        return [None if g is None else g.clone() for g in task], stats
    coef = float(d / a2)
    out: list[torch.Tensor | None] = []
    for g, a in zip(task, align):
        if a is None:
            out.append(None if g is None else g.clone())
        elif g is None:
            out.append(-coef * a)
        else:
            out.append(g - coef * a.to(g.dtype))
    return out, stats


def combine(task: Grads, align: Grads, rho: float = 1.0) -> list[torch.Tensor | None]:
    """task + rho * align, element-wise (None where both are None)."""
    _check(task, align)
    out: list[torch.Tensor | None] = []
    for g, a in zip(task, align):
        if g is None:
            out.append(None if a is None else rho * a)
        elif a is None:
            out.append(g.clone())
        else:
            out.append(g + rho * a)
    return out


def safegrad(task: Grads, align: Grads, rho: float = 1.0) -> tuple[list[torch.Tensor | None], SurgeryStats]:
    """The SafeGrad update direction: project_conflicting(task, align) + rho * align, with the projection's stats."""
    projected, stats = project_conflicting(task, align)
    return combine(projected, align, rho), stats
