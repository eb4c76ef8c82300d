"""gradient_prune: prune the heads whose gates matter least to the clean loss (Michel et al. 2019 importance)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from purify.checkpoint import LoadedModel
from purify.data import TaskData
from purify.heads import HeadGates
from purify.pruning import MaskEvaluator, PruneConfig, PruningStrategy, batches_for, subsample
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
    """Prune heads with the smallest accumulated |dL/d gate| on clean data, normalised per layer (L2)."""

    config: GradientPruneConfig

    def head_scores(self, loaded: LoadedModel, gates: HeadGates, train: TaskData,
                    evaluate: MaskEvaluator) -> torch.Tensor:
        data = subsample(train, self.config.score_samples, self.config.seed)
        batches = batches_for(loaded.model, loaded.tokenizer, data, self.config.batch_size)
        importance = gates.importance(batches)
        # per-head scores, comparable across layers: each layer's vector has unit L2 norm
        return importance / importance.norm(dim=1, keepdim=True).clamp_min(1e-12)


register_strategy("gradient_prune", GradientPruneConfig, GradientPrune)
