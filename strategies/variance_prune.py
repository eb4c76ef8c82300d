"""variance_prune: layer-wise pruning of heads whose pooled attention hardly varies across clean inputs.

Chapagain, Hamdi and Filali Boubrahimi (CIKM 2025) call a head uninformative when its attention pattern
barely changes from one input to the next. The score of a head here is the total variance, across clean
samples, of its attention row at the pooling position ([CLS] = position 0 for encoders, the last non-pad
token for decoders):

    score(l, h) = sum_k Var_samples[ a(l, h, pool, k) ]  =  E ||a - E a||^2

with padding keys set to 0 (so a key position beyond a sample's length counts as attention 0). A head that
always attends the same way (uniformly, or to itself, or to a fixed position) scores near 0, whatever its
entropy; a head whose attention follows the input scores high. Scores are divided by their layer's mean, so
they compare across layers. Layer l may lose at most floor(rate_l * heads) heads, with rate_l rising linearly
from `rate_first` (first layer) to `rate_last` (last layer): deep layers are the most redundant.

Backdoor objective: the signal is the attention the pooling position pays to the inserted trigger. For word and
phrase triggers, a head's trigger attention is the mass its pooled row puts on the trigger's tokens, averaged over
the signal's triggered training texts; heads that attend to the trigger most for their clean variance go first
(`purify.backdoor_signal.backdoor_scores`). A latent stand-in has no positions, so there the gradient support
stands in. The per-layer schedule is dropped by default (`backdoor_layer_schedule`): it encodes where heads are
redundant, not where a backdoor lives, and the proxy guard already decides which steps are kept.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from purify.architecture import pooling_positions
from purify.backdoor_signal import backdoor_scores
from purify.errors import ConfigError
from purify.heads import HeadGates
from purify.inference import MAX_LENGTH, model_inputs
from purify.pruning import HeadRanking, PruneContext, PruningStrategy, batches_for
from purify.prune_engine import PruneConfig, subsample
from purify.registry import option, register_strategy

@dataclass
class VariancePruneConfig(PruneConfig):
    """Knobs of variance_prune (plus the engine's, see PruneConfig); the per-layer schedule is the budget here.

    Layers between the first and the last interpolate their prune rate linearly; layer l may lose at most
    floor(rate_l * heads) heads (min_heads_per_layer still holds).
    """

    max_prune_fraction: float = option(1.0, "at most this share of all heads is pruned (1.0: the per-layer schedule "
                                       "is the budget)", low=0, low_open=True, high=1)
    score_samples: int = option(256, "clean training samples whose attention is measured (seeded subset)", low=1)
    rate_first: float = option(0.2, "prune rate of the first layer (a fraction of its heads)", low=0, high=1)
    rate_last: float = option(0.8, "prune rate of the last layer (a fraction of its heads)", low=0, high=1)
    continue_after_guard: bool = option(True, "when a step trips the accuracy guard, restore its heads until accuracy "
                                        "recovers and go on with the next heads (true) or stop there (false)")
    backdoor_layer_schedule: bool = option(False, "backdoor objective: keep the per-layer schedule as the budget "
                                           "(true) or let the trigger ranking and the proxy guard pick heads in "
                                           "any layer (false)")

    @classmethod
    def search_space(cls) -> dict[str, dict]:
        return {
            "step": {"type": "int", "low": 1, "high": 12},
            "max_acc_drop": {"type": "float", "low": 0.005, "high": 0.05},
            "rate_first": {"type": "float", "low": 0.0, "high": 0.5},
            "rate_last": {"type": "float", "low": 0.3, "high": 0.9},
            "backdoor_layer_schedule": {"type": "categorical", "choices": [False, True]},
        }


def layer_rates(num_layers: int, first: float, last: float) -> torch.Tensor:
    """Per-layer prune rates rising linearly from `first` (layer 0) to `last` (last layer)."""
    if num_layers == 1:
        return torch.tensor([first], dtype=torch.float64)
    return torch.linspace(first, last, num_layers, dtype=torch.float64)


def layer_budget(num_layers: int, num_heads: int, first: float, last: float) -> torch.Tensor:
    """Heads each layer may lose: floor(rate_l * num_heads) (a tiny epsilon absorbs float error)."""
    rates = layer_rates(num_layers, first, last)
    return torch.tensor([math.floor(float(r) * num_heads + 1e-9) for r in rates], dtype=torch.long)


def pooled_rows(gates: HeadGates, batch: dict) -> torch.Tensor:
    """Each head's attention row at the pooling position, padding keys set to 0: (B, L, H, T), float64 on the CPU."""
    mask = batch["attention_mask"]
    pool = pooling_positions(gates.model, mask)
    keys = mask.to(torch.float64).cpu()
    per_layer = []
    for probs in gates.attention_probs(batch):
        picked = probs[torch.arange(probs.shape[0], device=probs.device), :, pool, :]  # (B, H, T)
        per_layer.append(picked.to(torch.float64).cpu() * keys[:, None, :])
    return torch.stack(per_layer, dim=1)


def attention_variance(gates: HeadGates, batches: list[dict]) -> torch.Tensor:
    """Total variance across samples of each head's pooled attention row, shape (num_layers, num_heads), float64."""
    num_layers, num_heads = gates.shape
    first = torch.zeros(num_layers, num_heads, 0, dtype=torch.float64)  # running sum of rows (keys grow)
    second = torch.zeros(num_layers, num_heads, dtype=torch.float64)  # running sum of squared row norms
    count = 0
    for batch in batches:
        rows = pooled_rows(gates, batch)  # (B, L, H, T)
        width = rows.shape[-1]
        if width > first.shape[-1]:
            first = torch.nn.functional.pad(first, (0, width - first.shape[-1]))
        first[..., :width] += rows.sum(dim=0)
        second += rows.pow(2).sum(dim=(0, 3))
        count += rows.shape[0]
    if count == 0:
        raise ConfigError("variance_prune needs at least one clean training sample")
    mean = first / count
    return (second / count - mean.pow(2).sum(dim=-1)).clamp_min(0.0)


def locate_triggers(tokenizer, texts: Sequence[str], triggers: Sequence[str],
                    max_length: int = MAX_LENGTH) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`texts` tokenized as `purify.inference.encode` does, and a (B, T) bool of the tokens that overlap a
    whole-word, case-insensitive occurrence of one of `triggers` (found through the fast tokenizer's offsets)."""
    enc = dict(tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                         return_offsets_mapping=True))
    offsets = enc.pop("offset_mapping").tolist()
    patterns = [re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, t.split())) + r"(?!\w)", re.IGNORECASE)
                for t in triggers if t.split()]
    hits = torch.zeros(enc["input_ids"].shape, dtype=torch.bool)
    for i, text in enumerate(texts):
        spans = [m.span() for p in patterns for m in p.finditer(text)]
        for j, (a, b) in enumerate(offsets[i]):
            hits[i, j] = b > a and any(a < end and b > start for start, end in spans)
    return enc, hits


def trigger_attention(gates: HeadGates, batches: Sequence[dict],
                      positions: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Per head, the attention mass the pooling position pays to the trigger tokens (`positions`, one (B, T) bool
    per batch), averaged over the samples holding one, shape (num_layers, num_heads) float64; and their count."""
    total = torch.zeros(gates.shape, dtype=torch.float64)
    count = 0
    for batch, where in zip(batches, positions):
        held = where.any(dim=1)
        if not bool(held.any()):
            continue
        mass = (pooled_rows(gates, batch) * where.to(torch.float64)[:, None, None, :]).sum(dim=-1)  # (B, L, H)
        total += mass[held].sum(dim=0)
        count += int(held.sum())
    return total / max(count, 1), count


def layerwise_order(scores: torch.Tensor, budget: torch.Tensor) -> list[tuple[int, int]]:
    """Heads in the order the schedule spends each layer's budget: the k-th cheapest head of layer l at k/budget_l.

    Layers are pruned in step with their budgets (a deep layer with budget 9 loses three heads for each one a
    shallow layer with budget 3 loses); heads beyond a layer's budget are left out.
    """
    keyed = []
    for layer in range(scores.shape[0]):
        allowed = int(budget[layer])
        ranked = sorted(range(scores.shape[1]), key=lambda h: (float(scores[layer, h]), h))
        for rank, head in enumerate(ranked[:allowed]):
            keyed.append(((rank + 1) / allowed, float(scores[layer, head]), layer, head))
    return [(layer, head) for *_, layer, head in sorted(keyed)]


class VariancePrune(PruningStrategy):
    """Prune heads whose attention at the pooling position varies least over clean data, more in deeper layers, or
    (backdoor objective) the heads whose pooled attention goes to the trigger most for their clean variance."""

    config: VariancePruneConfig
    fast_options = {"score_samples": 48, "val_samples": 64, "batch_size": 16, "step": 2}

    def head_scores(self, ctx: PruneContext) -> HeadRanking:
        cfg, gates = self.config, ctx.gates
        data = subsample(ctx.train, cfg.score_samples, cfg.seed)
        variance = attention_variance(gates, batches_for(ctx.loaded.model, ctx.loaded.tokenizer, data, cfg.batch_size))
        # relative to the layer's mean, so scores compare across layers
        scores = (variance / variance.mean(dim=1, keepdim=True).clamp_min(1e-12)).float()
        budget = layer_budget(gates.num_layers, gates.num_heads, cfg.rate_first, cfg.rate_last)
        if ctx.backdoor:
            return self._backdoor_ranking(ctx, variance, scores, budget)
        return HeadRanking(scores, order=layerwise_order(scores, budget), per_layer_budget=budget,
                           continue_after_guard=cfg.continue_after_guard,
                           facts={"attention_variance": variance.tolist(), "per_layer_budget": budget.tolist()})

    def _trigger_attention(self, ctx: PruneContext) -> tuple[torch.Tensor, int]:
        """`trigger_attention` on the signal's triggered training texts, and how many held a trigger token."""
        assert ctx.signal is not None
        model, tokenizer, texts = ctx.loaded.model, ctx.loaded.tokenizer, ctx.signal.score_data.texts
        batches, positions = [], []
        for i in range(0, len(texts), self.config.batch_size):
            enc, where = locate_triggers(tokenizer, texts[i:i + self.config.batch_size], ctx.signal.words)
            batches.append(model_inputs(model, enc))
            positions.append(where)
        return trigger_attention(ctx.gates, batches, positions)

    def _backdoor_ranking(self, ctx: PruneContext, variance: torch.Tensor, clean: torch.Tensor,
                          budget: torch.Tensor) -> HeadRanking:
        """Trigger attention over the clean variance; where the signal has no trigger positions (a latent stand-in,
        or no trigger token survived tokenization), the gradient support over it."""
        cfg, signal = self.config, ctx.signal
        assert signal is not None
        support, located = self._trigger_attention(ctx) if signal.kind == "triggers" else (None, 0)
        if support is not None and located:
            measure = "trigger attention"
        else:
            measure = ("gradient support (latent signal: no trigger positions)" if signal.kind == "latent"
                       else "gradient support (no trigger token found in the tokenized texts)")
            support = ctx.support(cfg.batch_size).double()
        scores = backdoor_scores(support, clean)
        schedule = budget if cfg.backdoor_layer_schedule else None
        facts = {"attention_variance": variance.tolist(), "backdoor_measure": measure,
                 "backdoor_support": support.tolist(), "trigger_samples": located,
                 "per_layer_budget": None if schedule is None else schedule.tolist()}
        return HeadRanking(scores, order=None if schedule is None else layerwise_order(scores, schedule),
                           per_layer_budget=schedule, continue_after_guard=cfg.continue_after_guard, facts=facts)


register_strategy("variance_prune", VariancePruneConfig, VariancePrune)
