"""Per-head gates on every self-attention block, built from forward pre-hooks on the output projection.

transformers 5 removed ``head_mask`` and ``prune_heads``; purify gates heads itself. A gate multiplies one
head's slice of the input of the attention output projection, so gate 1 is the identity (bit-identical
output) and gate 0 is exactly the function of a checkpoint whose projection columns for that head are zero.
The gradient of the loss with respect to a gate is the head's importance (Michel et al., 2019).
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .architecture import SUPPORTED_ARCHITECTURES, ArchSpec, attention_spec
from .errors import UnsupportedArchitectureError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class AttentionBlock:
    """One self-attention block: its projections and head geometry."""

    layer: int
    name: str
    out_proj_name: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    spec: ArchSpec

    @property
    def group_size(self) -> int:
        """Query heads that share one key/value head (1 without grouped-query attention)."""
        return self.num_heads // self.num_kv_heads


def _text_config(config):
    sub = getattr(config, "text_config", None)
    return sub if sub is not None and getattr(config, "model_type", "") == "gemma3" else config


def hidden_size(config) -> int:
    """The width of the residual stream, whatever the architecture calls it."""
    cfg = _text_config(config)
    return int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or getattr(cfg, "dim"))


def _head_geometry(config) -> tuple[int, int, int]:
    cfg = _text_config(config)
    n_heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None) or getattr(cfg, "n_heads")
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    hidden = hidden_size(config)
    head_dim = getattr(cfg, "head_dim", None) or hidden // n_heads
    return int(n_heads), int(n_kv), int(head_dim)


def find_attention_blocks(model: nn.Module) -> list[AttentionBlock]:
    """List the self-attention blocks of a supported model, ordered by layer; a clear error otherwise."""
    model_type = getattr(model.config, "model_type", None)
    spec = attention_spec(model)
    if spec is None:
        raise UnsupportedArchitectureError(
            f"head gates do not support architecture {model_type!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    n_heads, n_kv, head_dim = _head_geometry(model.config)
    pattern = re.compile(spec.block_pattern)
    blocks: dict[int, AttentionBlock] = {}
    for name, _module in model.named_modules():
        match = pattern.search(name)
        if match is None or "crossattention" in name:
            continue
        layer = int(match.group(1))
        blocks[layer] = AttentionBlock(layer, name, f"{name}.{spec.out_proj}", n_heads, n_kv, head_dim, spec)
    if not blocks:
        raise UnsupportedArchitectureError(f"found no self-attention blocks in this {model_type!r} model")
    ordered = [blocks[i] for i in sorted(blocks)]
    if [b.layer for b in ordered] != list(range(len(ordered))):
        raise UnsupportedArchitectureError(f"attention layers of this {model_type!r} model are not contiguous")
    return ordered


Mask = torch.Tensor  # (num_layers, num_heads) float tensor, 1 = keep, 0 = pruned


class HeadGates:
    """One gate per (layer, head) on a model, applied by forward pre-hooks on each attention output projection.

    Use as ``gates = HeadGates(model)``; ``gates.remove()`` (or a ``with`` block) takes the hooks off again.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.blocks = find_attention_blocks(model)
        self.num_layers = len(self.blocks)
        self.num_heads = self.blocks[0].num_heads
        self.head_dim = self.blocks[0].head_dim
        device = next(model.parameters()).device
        self._gates = torch.ones(self.num_layers, self.num_heads, device=device)
        self._differentiable: torch.Tensor | None = None
        modules = dict(model.named_modules())
        self._handles = [
            modules[b.out_proj_name].register_forward_pre_hook(self._make_hook(b.layer)) for b in self.blocks
        ]

    # -- hooks -----------------------------------------------------------------------------------------
    def _make_hook(self, layer: int) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> tuple | None:
            gates = self._differentiable if self._differentiable is not None else self._gates
            if self._differentiable is None and bool((gates[layer] == 1).all()):
                return None  # identity: leave the input untouched so outputs stay bit-identical
            x = args[0]
            shape = x.shape
            g = gates[layer].to(dtype=x.dtype, device=x.device)
            x = (x.reshape(*shape[:-1], self.num_heads, self.head_dim) * g[:, None]).reshape(shape)
            return (x, *args[1:])

        return hook

    def remove(self) -> None:
        """Detach every hook; the model is left exactly as it was before the gates were attached."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> HeadGates:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    # -- reading and writing ------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_layers, self.num_heads)

    def get(self) -> Mask:
        """A copy of the current gate values, shape (num_layers, num_heads), on the CPU."""
        return self._gates.detach().cpu().clone()

    def set(self, mask: Mask | Iterable) -> None:
        """Replace every gate; `mask` has shape (num_layers, num_heads)."""
        mask = torch.as_tensor(mask, dtype=torch.float32)
        if tuple(mask.shape) != self.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match gates {self.shape}")
        self._gates.copy_(mask.to(self._gates.device))

    def set_head(self, layer: int, head: int, value: float) -> None:
        """Set one gate."""
        self._gates[layer, head] = float(value)

    def reset(self) -> None:
        """All gates back to 1 (the unpruned model)."""
        self._gates.fill_(1.0)

    @contextlib.contextmanager
    def masked(self, mask: Mask) -> Iterator[HeadGates]:
        """Apply `mask` for the duration of a ``with`` block, then restore the previous gates."""
        saved = self.get()
        self.set(mask)
        try:
            yield self
        finally:
            self.set(saved)

    def pruned_heads(self, mask: Mask | None = None) -> dict[int, list[int]]:
        """Heads whose gate is 0, as {layer: [head, ...]} (layers with none are left out)."""
        mask = self.get() if mask is None else torch.as_tensor(mask)
        return mask_to_pruned(mask)

    # -- importance and attention --------------------------------------------------------------------------
    def importance(
        self,
        batches: Iterable[Mapping[str, torch.Tensor]],
        loss_fn: Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor] | None = None,
        *,
        signed: bool = False,
    ) -> torch.Tensor:
        """Accumulated |dL/d gate| over `batches` (Michel et al. 2019), shape (num_layers, num_heads), on the CPU
        (with `signed`, the plain sum of dL/d gate: which way closing a head would move the loss).

        Gradients are taken with respect to the gates only (model parameters get no .grad), at the current
        gate values (so with some heads pruned it measures the others' importance in the pruned model).
        """
        loss_fn = loss_fn or default_loss
        total = torch.zeros(self.shape)
        was_training = self.model.training
        self.model.eval()
        try:
            for batch in batches:
                gates = self._gates.clone().requires_grad_(True)
                self._differentiable = gates
                try:
                    loss = loss_fn(self.model, batch)
                    (grad,) = torch.autograd.grad(loss, gates)
                finally:
                    self._differentiable = None
                total += (grad if signed else grad.abs()).detach().cpu()
        finally:
            self.model.train(was_training)
        return total

    @contextlib.contextmanager
    def differentiable(self, gates: torch.Tensor) -> Iterator[torch.Tensor]:
        """Use a caller-owned tensor (e.g. sampled or learned gates) as the gate values inside the block."""
        if tuple(gates.shape) != self.shape:
            raise ValueError(f"gate tensor shape {tuple(gates.shape)} does not match {self.shape}")
        self._differentiable = gates
        try:
            yield gates
        finally:
            self._differentiable = None

    @torch.no_grad()
    def attention_probs(self, batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per-layer attention probabilities (batch, heads, query, key) for one batch, computed with eager attention."""
        previous = getattr(self.model.config, "_attn_implementation", None)
        self.model.set_attn_implementation("eager")
        try:
            inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            out = self.model(**inputs, output_attentions=True)
        finally:
            if previous and previous != "eager":
                self.model.set_attn_implementation(previous)
        attentions = out.attentions
        if attentions is None or len(attentions) != self.num_layers:
            raise UnsupportedArchitectureError("this model did not return per-layer attention probabilities")
        return [a.detach() for a in attentions]


def default_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The model's own loss: cross-entropy on `labels` for classifiers, next-token loss for causal LMs."""
    inputs = dict(batch)
    if "labels" not in inputs:
        labels = inputs["input_ids"].clone()
        if "attention_mask" in inputs:
            labels[inputs["attention_mask"] == 0] = -100
        inputs["labels"] = labels
    return model(**inputs).loss


def mask_to_pruned(mask: Mask) -> dict[int, list[int]]:
    """{layer: [heads with gate 0]} for a (num_layers, num_heads) mask."""
    pruned: dict[int, list[int]] = {}
    for layer, head in (torch.as_tensor(mask) == 0).nonzero().tolist():
        pruned.setdefault(int(layer), []).append(int(head))
    return pruned


def pruned_to_mask(pruned: Mapping[int | str, Iterable[int]], shape: tuple[int, int]) -> Mask:
    """The mask with gate 0 at every listed head (layer keys may be strings, as JSON stores them)."""
    mask = torch.ones(shape)
    for layer, heads in pruned.items():
        for head in heads:
            mask[int(layer), int(head)] = 0.0
    return mask


#: one tensor region a pruned head zeroes: (parameter name, dimension, slices along it)
Region = tuple[str, int, list[slice]]


def pruned_regions(block: AttentionBlock, heads: Iterable[int]) -> list[Region]:
    """Every weight/bias region that pruning `heads` of `block` zeroes; the first is the output projection's.

    Output projection: the heads' input columns (GPT-2's Conv1D stores (in, out), so rows there). Query rows too,
    and key/value rows of a KV head only when its whole query group is pruned; GPT-2's fused c_attn holds all three.
    """
    heads = sorted(set(heads))
    d, spec, prefix = block.head_dim, block.spec, block.name
    q_slices = [slice(h * d, (h + 1) * d) for h in heads]
    regions: list[Region] = [(f"{block.out_proj_name}.weight", 0 if spec.conv1d else 1, q_slices)]
    kv_heads = [kv for kv in range(block.num_kv_heads)
                if all(h in heads for h in range(kv * block.group_size, (kv + 1) * block.group_size))]
    kv_slices = [slice(h * d, (h + 1) * d) for h in kv_heads]
    if spec.fused_qkv:  # GPT-2: c_attn output columns are [q | k | v]
        hidden = block.num_heads * d
        fused = [slice(s.start + off, s.stop + off) for off in (0, hidden, 2 * hidden) for s in q_slices]
        regions += [(f"{prefix}.{spec.fused_qkv}.weight", 1, fused), (f"{prefix}.{spec.fused_qkv}.bias", 0, fused)]
        return regions
    for proj, slices in ((spec.q_proj, q_slices), (spec.k_proj, kv_slices), (spec.v_proj, kv_slices)):
        if proj and slices:
            regions += [(f"{prefix}.{proj}.weight", 0, slices), (f"{prefix}.{proj}.bias", 0, slices)]
    return regions
