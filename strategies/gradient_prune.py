"""gradient_prune: prune heads by the gradient of their gates (Michel et al. 2019 importance).

Informative objective: the heads whose gates matter least to the clean loss go first. Backdoor objective: the
heads whose closing would most raise the target's loss on triggered inputs, relative to their clean importance
(the ratio of the two gradients, `purify.backdoor_signal.backdoor_scores`), go first.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from purify.backdoor_signal import backdoor_scores, backdoor_support
from purify.pruning import HeadRanking, PruneContext, PruningStrategy, batches_for
from purify.prune_engine import PruneConfig, subsample
from purify.registry import option, register_strategy


@dataclass
class GradientPruneConfig(PruneConfig):
    """Knobs of gradient_prune (plus the engine's, see PruneConfig)."""

    score_samples: int = option(512, "clean training samples whose gate gradients are accumulated (seeded subset)",
                                low=1)

    @classmethod
    def search_space(cls) -> dict[str, dict]:
        return {
            "step": {"type": "int", "low": 1, "high": 12},
            "max_acc_drop": {"type": "float", "low": 0.005, "high": 0.05},
            "max_prune_fraction": {"type": "float", "low": 0.1, "high": 0.8},
        }


class GradientPrune(PruningStrategy):
    """Prune heads with the smallest accumulated |dL/d gate| on clean data, normalised per layer (L2), or (backdoor
    objective) with the largest backdoor support for their clean importance."""

    config: GradientPruneConfig

    def head_scores(self, ctx: PruneContext) -> HeadRanking:
        data = subsample(ctx.train, self.config.score_samples, self.config.seed)
        batches = batches_for(ctx.loaded.model, ctx.loaded.tokenizer, data, self.config.batch_size)
        importance = ctx.gates.importance(batches)
        # per-head scores, comparable across layers: each layer's vector has unit L2 norm
        clean = importance / importance.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if not ctx.backdoor:
            return HeadRanking(clean)
        support = ctx.support(self.config.batch_size)
        few = subsample(ctx.signal.score_data, self.config.rescore_samples, self.config.seed) if ctx.signal else None
        few_batches = batches_for(ctx.loaded.model, ctx.loaded.tokenizer, few, self.config.batch_size) if few else []

        def rescore(mask: torch.Tensor) -> torch.Tensor:
            """The support in the pruned model (on fewer texts), against the clean importance measured at the start."""
            assert ctx.signal is not None
            with ctx.gates.masked(mask):
                return backdoor_scores(backdoor_support(ctx.gates, few_batches, ctx.signal.applied), clean)

        return HeadRanking(backdoor_scores(support, clean), rescore=rescore,
                           facts={"backdoor_support": support.tolist(), "clean_importance": clean.tolist()})


register_strategy("gradient_prune", GradientPruneConfig, GradientPrune)
