"""LoRA helpers shared by the zoo's LoRA poisoning and the w2s_distill student."""
from __future__ import annotations

from torch import nn

from .heads import find_attention_blocks


def lora_target_modules(model: nn.Module) -> list[str]:
    """Leaf names of the attention projections of `model` (found from its attention blocks)."""
    blocks = find_attention_blocks(model)
    spec = blocks[0].spec
    names = [n for n in (spec.q_proj, spec.k_proj, spec.v_proj, spec.fused_qkv, spec.out_proj) if n]
    return sorted({n.split(".")[-1] for n in names})
