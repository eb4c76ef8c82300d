"""ensemble_prune: many random head masks biased towards unimportant heads; prune what the good ones agree on.

Chapagain, Hamdi and Filali Boubrahimi (CIKM 2025): draw N random candidate masks, keep the candidates whose
clean validation accuracy passes the guard, and prune the heads that at least a `vote` share of the kept
candidates prune. Candidates are biased: a head's chance of being drawn falls with its clean importance
(|dL/d gate|, Michel et al. 2019, normalised per layer), through its importance rank r in [0, 1]
(0 = least important) and the weight exp(-bias * r); each candidate draws its heads without replacement
(Gumbel top-k, a seeded numpy Generator). Each candidate passing the guard says nothing about their union, so
the voted heads are re-validated: they go to the shared engine in descending vote share and every step is
guarded (a step that trips the guard is rolled back head by head, least-voted first).

Backdoor objective: candidates are judged on both signals. They are drawn biased towards heads with high backdoor
support for their clean importance (the rank of `purify.backdoor_signal.backdoor_scores` replaces the importance
rank); a candidate is kept only when it passes the accuracy guard and lowers the proxy ASR by more than
`min_proxy_fall`, and its vote is weighted by that fall. The voted heads go to the engine, whose proxy guard keeps
a step only when the proxy falls.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from purify.backdoor_signal import backdoor_scores
from purify.pruning import HeadRanking, PruneContext, PruningStrategy, batches_for
from purify.prune_engine import PruneConfig, subsample
from purify.registry import option, register_strategy


@dataclass
class EnsemblePruneConfig(PruneConfig):
    """Knobs of ensemble_prune (plus the engine's, see PruneConfig): random candidate masks biased towards
    unimportant heads, and a vote over the candidates that keep clean accuracy."""

    score_samples: int = option(256, "clean training samples whose gate gradients give the importance (seeded "
                                "subset)", low=1)
    num_candidates: int = option(16, "random candidate masks drawn", low=1)
    candidate_fraction: float = option(0.3, "share of all heads each candidate prunes (capped by max_prune_fraction "
                                       "and min_heads_per_layer)", low=0, low_open=True, high=1)
    bias: float = option(3.0, "how strongly candidates prefer unimportant heads, or (backdoor objective) heads with "
                         "high backdoor support for their clean importance (0 draws heads uniformly; the first-ranked "
                         "head is exp(bias) times as likely as the last)", low=0)
    vote: float = option(0.5, "share of the kept candidates that must prune a head for it to be voted", low=0,
                         low_open=True, high=1)
    continue_after_guard: bool = option(True, "when a step of the voted heads trips the guard, roll it back and go on "
                                        "with the next voted heads (true) or stop (false)")
    min_proxy_fall: float = option(0.0, "backdoor objective: a candidate votes only when it lowers the proxy ASR by "
                                   "more than this (fraction); its vote is weighted by the fall", low=0, high=1)

    @classmethod
    def search_space(cls) -> dict[str, dict]:
        return {
            "num_candidates": {"type": "int", "low": 8, "high": 48},
            "candidate_fraction": {"type": "float", "low": 0.1, "high": 0.6},
            "bias": {"type": "float", "low": 0.0, "high": 6.0},
            "vote": {"type": "float", "low": 0.3, "high": 0.9},
            "max_acc_drop": {"type": "float", "low": 0.005, "high": 0.05},
            "min_proxy_fall": {"type": "float", "low": 0.0, "high": 0.1},
        }


def importance_ranks(importance: torch.Tensor) -> np.ndarray:
    """Each head's importance rank scaled to [0, 1] (0 = least important; ties broken by position), shape (L, H)."""
    flat = importance.detach().double().flatten().numpy()
    order = np.lexsort((np.arange(flat.size), flat))
    ranks = np.empty(flat.size, dtype=np.float64)
    ranks[order] = np.arange(flat.size) / max(1, flat.size - 1)
    return ranks.reshape(tuple(importance.shape))


def draw_candidates(ranks: np.ndarray, num: int, size: int, bias: float, min_heads_per_layer: int,
                    rng: np.random.Generator) -> list[torch.Tensor]:
    """`num` masks, each pruning up to `size` heads drawn without replacement with weight exp(-bias * rank).

    A head is skipped when its layer would keep fewer than `min_heads_per_layer` heads.
    """
    num_layers, num_heads = ranks.shape
    log_weight = (-bias * ranks).flatten()
    masks = []
    for _ in range(num):
        keys = log_weight + rng.gumbel(size=log_weight.size)  # Gumbel top-k = weighted sampling w/o replacement
        mask = torch.ones(num_layers, num_heads)
        taken = 0
        for index in np.argsort(-keys, kind="stable"):
            if taken >= size:
                break
            layer, head = divmod(int(index), num_heads)
            if int(mask[layer].sum()) - 1 < min_heads_per_layer:
                continue
            mask[layer, head] = 0.0
            taken += 1
        masks.append(mask)
    return masks


def vote_shares(masks: list[torch.Tensor], shape: tuple[int, int],
                weights: Sequence[float] | None = None) -> torch.Tensor:
    """Share of `masks` that prune each head, shape `shape` (zeros when there is no mask); with `weights`, each mask's
    vote counts in proportion to its weight."""
    if not masks:
        return torch.zeros(shape)
    pruned = torch.stack([(m == 0).float() for m in masks])
    if weights is None:
        return pruned.mean(dim=0)
    w = torch.as_tensor(list(weights), dtype=torch.float64)
    return ((pruned.double() * w[:, None, None]).sum(dim=0) / w.sum().clamp_min(1e-12)).float()


def judge_candidates(candidates: list[torch.Tensor], evaluate: Callable[[torch.Tensor], float], floor: float,
                     proxy: Callable[[torch.Tensor], float], min_fall: float = 0.0) -> tuple[list[float], list[dict]]:
    """Each candidate's vote weight on both signals, and its record: its fall in the proxy ASR when it keeps accuracy
    at `floor` and lowers the proxy by more than `min_fall`, else 0 (the proxy is read only for passing ones)."""
    base = proxy(torch.ones_like(candidates[0])) if candidates else 0.0
    weights, records = [], []
    for mask in candidates:
        acc = evaluate(mask)
        asr = proxy(mask) if acc >= floor else None
        fall = base - asr if asr is not None else 0.0
        weight = fall if fall > min_fall else 0.0
        weights.append(weight)
        records.append({"pruned": int((mask == 0).sum()), "val_accuracy": acc, "proxy_asr": asr,
                        "proxy_fall": fall if asr is not None else None, "kept": weight > 0})
    return weights, records

class EnsemblePrune(PruningStrategy):
    """Prune the heads a vote of guard-passing random masks (biased to unimportant heads, or to backdoor-supporting
    ones whose votes count by how far they lower the proxy) agrees on, re-validated."""

    config: EnsemblePruneConfig
    fast_options = {"score_samples": 48, "num_candidates": 8, "val_samples": 64, "batch_size": 16, "step": 2}

    def head_scores(self, ctx: PruneContext) -> HeadRanking:
        """1 - vote share of each head among the kept candidates (low = prune first)."""
        cfg, gates, evaluate = self.config, ctx.gates, ctx.evaluate
        data = subsample(ctx.train, cfg.score_samples, cfg.seed)
        importance = gates.importance(batches_for(ctx.loaded.model, ctx.loaded.tokenizer, data, cfg.batch_size))
        importance = importance / importance.norm(dim=1, keepdim=True).clamp_min(1e-12)
        facts: dict = {"importance": importance.tolist()}
        ranking = importance  # what candidates are biased by (low = drawn more often)
        if ctx.backdoor:
            support = ctx.support(cfg.batch_size)
            ranking = backdoor_scores(support, importance)
            facts.update(backdoor_support=support.tolist(), backdoor_scores=ranking.tolist())
        total = gates.num_layers * gates.num_heads
        size = min(max(1, round(cfg.candidate_fraction * total)), int(cfg.max_prune_fraction * total))
        rng = np.random.default_rng(cfg.seed)
        candidates = draw_candidates(importance_ranks(ranking), cfg.num_candidates, size, cfg.bias,
                                     cfg.min_heads_per_layer, rng)
        floor = evaluate(torch.ones(gates.shape)) - cfg.max_acc_drop
        if ctx.proxy is not None:
            weights, records = judge_candidates(candidates, evaluate, floor, ctx.proxy, cfg.min_proxy_fall)
            kept = [mask for mask, w in zip(candidates, weights) if w > 0]
            shares = vote_shares(kept, gates.shape, [w for w in weights if w > 0])
        else:
            accuracies = [evaluate(mask) for mask in candidates]
            kept = [mask for mask, acc in zip(candidates, accuracies) if acc >= floor]
            shares = vote_shares(kept, gates.shape)
            records = [{"pruned": int((m == 0).sum()), "val_accuracy": a, "kept": a >= floor}
                       for m, a in zip(candidates, accuracies)]
        voted = [(layer, head) for layer, head in (shares >= cfg.vote).nonzero().tolist()
                 if shares[layer, head] > 0]
        order = sorted(voted, key=lambda lh: (-float(shares[lh]), float(ranking[lh]), lh))
        facts.update({"vote_share": shares.tolist(), "candidate_size": size, "candidates": records,
                      "candidates_kept": len(kept), "voted_heads": [list(lh) for lh in order]})
        return HeadRanking(1.0 - shares, order=order, continue_after_guard=cfg.continue_after_guard, facts=facts)


register_strategy("ensemble_prune", EnsemblePruneConfig, EnsemblePrune)
