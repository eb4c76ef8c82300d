"""A universal latent perturbation: one shift of a layer's hidden states that stands in for an unspellable trigger.

A sentence, syntax or style trigger cannot be found by inserting words, but inside the model it still acts as a
feature added to the hidden states. Following latent adversarial unlearning (BEEAR, EMNLP 2024), a single vector
added to every token's input of one transformer layer is trained to send clean samples to the suspected target
label (or, with no target, as far as possible from the model's clean answers); a defence then fine-tunes the
model to answer as it did on clean text while the shift is applied.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .heads import find_attention_blocks, hidden_size


def layer_module(model: nn.Module, fraction: float) -> tuple[int, nn.Module]:
    """The transformer layer at `fraction` of the depth (0 = first, 1 = last), and its index."""
    blocks = find_attention_blocks(model)
    index = min(len(blocks) - 1, max(0, round(fraction * (len(blocks) - 1))))
    parent = blocks[index].name.rsplit(".", 1)[0]  # the attention block's layer
    return index, model.get_submodule(parent)


class LatentShift:
    """A trainable vector added to every token of one layer's input, in the rows of a batch chosen per forward; its
    norm is at most `radius` times the mean token norm measured there on clean inputs (so the bound means the same
    across architectures). The defence and the shift share one backward pass: the model descends its loss, and
    `step` moves the shift up the gradient that pass left on it (free adversarial training)."""

    def __init__(self, model: nn.Module, *, fraction: float, radius: float, lr: float) -> None:
        if not 0 <= fraction <= 1:
            raise ConfigError(f"latent layer fraction must be in [0, 1], got {fraction}")
        self.layer, self.module = layer_module(model, fraction)
        device = next(model.parameters()).device
        self.delta = torch.zeros(hidden_size(model.config), device=device, requires_grad=True)
        self.radius, self.lr = radius, lr
        self.scale: float | None = None  # mean token norm at the layer input, set by `calibrate`
        self._rows: torch.Tensor | None = None  # (batch,) 1 where the shift applies; None: off
        self._seen: list[float] = []
        self._handle = self.module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if hidden is None:
            return None
        if self.scale is None:
            self._seen.append(float(hidden.detach().norm(dim=-1).mean()))
        if self._rows is None:
            return None
        rows = self._rows.to(hidden.device, hidden.dtype)
        shifted = hidden + rows.view(-1, *([1] * (hidden.dim() - 1))) * self.delta.to(hidden.dtype)
        if args:
            return (shifted, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": shifted}

    def calibrate(self, run_clean: Callable[[], object]) -> float:
        """Measure the layer's mean token norm with one clean forward (`run_clean()`), once."""
        if self.scale is None:
            with torch.no_grad():
                run_clean()
            self.scale = sum(self._seen) / len(self._seen) if self._seen else 1.0
        return self.scale

    @property
    def bound(self) -> float:
        return self.radius * (self.scale or 1.0)

    @contextlib.contextmanager
    def applied(self, rows: torch.Tensor | None = None) -> Iterator[None]:
        """Forwards inside this block see the shift in the batch rows where `rows` is 1 (None: every row)."""
        self._rows = rows if rows is not None else torch.ones(1)
        try:
            yield
        finally:
            self._rows = None

    def step(self, ascend: bool = True) -> bool:
        """Move the shift by `lr` times the largest norm along the gradient a backward pass left on it (up the loss
        when `ascend`), project it back into the ball and clear the gradient; False when there was none."""
        grad = self.delta.grad
        if grad is None:
            return False
        with torch.no_grad():
            norm = grad.norm()
            if norm > 0:
                self.delta += (1 if ascend else -1) * self.lr * self.bound * grad / norm
            length = self.delta.norm()
            if length > self.bound:
                self.delta *= self.bound / length
        self.delta.grad = None
        return True

    def ascend(self, objective: torch.Tensor) -> float:
        """One step up `objective` using its own gradient (no model gradient is touched); the objective's value."""
        (self.delta.grad,) = torch.autograd.grad(objective, [self.delta])
        self.step()
        return float(objective.detach())

    def remove(self) -> None:
        self._handle.remove()


def shift_objective(logits: torch.Tensor, anchor: torch.Tensor, target: int | None) -> torch.Tensor:
    """What the shift maximises: the log-probability of `target`, or (no target) the KL divergence from the
    anchor distribution, averaged over the batch."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    if target is not None:
        return log_probs[:, target].mean()
    return F.kl_div(log_probs, F.log_softmax(anchor.float(), dim=-1), log_target=True, reduction="batchmean")
