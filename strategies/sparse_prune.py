"""sparse_prune: structured (group-lasso) fine-tuning on clean data, then pruning of the heads it shrank most.

Chapagain, Hamdi and Filali Boubrahimi (CIKM 2025): a group penalty on each head's parameter block, an L1 sum
over heads of per-head L2 norms, drives whole heads towards zero during a short clean fine-tune; the heads with
the smallest group norm carry the least and are pruned first, through the shared engine and its accuracy guard.

A head's block is its query rows, its output-projection columns and a share of its key/value rows (biases of
those rows included). Without grouped-query attention the share is the whole K/V rows of the head; with it the
K/V rows of a key/value group belong to its `group_size` query heads, and each carries 1/group_size of their
squared norm, so every weight is counted once and the group sizes stay balanced. GPT-2's fused, transposed
Conv1D `c_attn` is split into its q | k | v column blocks.

The fine-tuned weights are the result (with pruned heads), but the guard's promise is about the model the user
gave: its floor is the *original* model's clean validation accuracy minus `max_acc_drop`. Should the fine-tune
itself already fall below that floor, the original weights are restored and pruned in the fine-tune's order.

Backdoor objective (group lasso while resisting the probe): each head's group penalty is weighted by its backdoor
support on the user's model (an adaptive group lasso: heads that make the signal's trigger work shrink harder and
so come first), and each fine-tune step may also descend the cross-entropy of the signal's triggered training texts
towards their own labels, with as many triggered texts of the target kept on the target (the trigger should change
no answer, not flip to another label); the engine then prunes under the proxy guard (`PruneContext.guard`).
"""
from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from purify.checkpoint import LoadedModel
from purify.data import Sample, TaskData
from purify.device import seed_everything
from purify.errors import UnsupportedArchitectureError
from purify.heads import AttentionBlock, HeadGates
from purify.probe import BackdoorProbe
from purify.pruning import HeadRanking, PruneContext, PruningResult, PruningStrategy, batches_for, objective_facts
from purify.prune_engine import PruneConfig, prune_by_scores, subsample
from purify.registry import option, register_strategy
from purify.training import TrainConfig, train_classifier

EPS = 1e-12  # inside the square root, so the gradient of a zero block stays finite


@dataclass
class SparsePruneConfig(PruneConfig):
    """Knobs of sparse_prune (plus the engine's, see PruneConfig): a clean fine-tune (AdamW, linear warm-up then
    decay, no weight decay beyond the penalty) under a group-lasso penalty on each head's block."""

    lam: float = option(1e-3, "weight lambda of the group penalty lambda * sum_heads ||block||_2, added to the "
                        "cross-entropy loss", low=0)
    epochs: int = option(1, "passes of the clean fine-tune", low=1)
    lr: float = option(5e-5, "AdamW learning rate of the fine-tune", low=0, low_open=True)
    train_samples: int | None = option(1000, "clean training samples the fine-tune uses (seeded subset; none = all)",
                                       low=1)
    finetune_batch_size: int = option(32, "batch size of the fine-tune", low=1)
    max_length: int = option(128, "token cap of the fine-tune batches", low=8)
    support_weight: float = option(4.0, "backdoor objective: adaptive group lasso, each head's penalty is weighted "
                                   "1 + this x its backdoor support scaled to [0, 1] (heads that carry the trigger "
                                   "shrink harder); 0 = the plain penalty", low=0)
    resist_weight: float = option(0.1, "backdoor objective: weight of the cross-entropy of the signal's triggered "
                                  "training texts towards their own labels, added to every fine-tune step (resists "
                                  "the probe); 0 = none", low=0)

    @classmethod
    def search_space(cls) -> dict[str, dict]:
        return {
            "lam": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
            "epochs": {"type": "int", "low": 1, "high": 3},
            "lr": {"type": "float", "low": 1e-5, "high": 5e-4, "log": True},
            "max_acc_drop": {"type": "float", "low": 0.005, "high": 0.05},
            "max_prune_fraction": {"type": "float", "low": 0.1, "high": 0.8},
            "support_weight": {"type": "float", "low": 0.0, "high": 16.0},
            "resist_weight": {"type": "float", "low": 0.0, "high": 4.0},
        }


def _weight(modules: dict[str, nn.Module], name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    module = modules.get(name)
    weight = getattr(module, "weight", None)
    if module is None or not isinstance(weight, torch.Tensor):
        raise UnsupportedArchitectureError(f"sparse_prune: no projection weight at {name!r}")
    bias = getattr(module, "bias", None)
    return weight, bias if isinstance(bias, torch.Tensor) else None


def _rows_sq(weight: torch.Tensor, bias: torch.Tensor | None, groups: int, dim: int, name: str) -> torch.Tensor:
    """Squared L2 norm of each of `groups` equal row blocks of a Linear weight (+ its bias), shape (groups,)."""
    if weight.shape[0] != groups * dim:
        raise UnsupportedArchitectureError(
            f"sparse_prune: {name} has {weight.shape[0]} output rows, expected {groups} x head_dim {dim}")
    sq = weight.reshape(groups, -1).pow(2).sum(dim=1)
    if bias is not None:
        sq = sq + bias.reshape(groups, dim).pow(2).sum(dim=1)
    return sq


def _columns_sq(weight: torch.Tensor, groups: int, dim: int, name: str) -> torch.Tensor:
    """Squared L2 norm of each of `groups` equal input-column blocks of a Linear weight (out, in), shape (groups,)."""
    if weight.shape[1] != groups * dim:
        raise UnsupportedArchitectureError(
            f"sparse_prune: {name} has {weight.shape[1]} input columns, expected {groups} x head_dim {dim}")
    return weight.reshape(weight.shape[0], groups, dim).pow(2).sum(dim=(0, 2))


def block_sq_norms(block: AttentionBlock, modules: dict[str, nn.Module]) -> torch.Tensor:
    """Squared L2 norm of every head's parameter block in one attention layer, shape (num_heads,), differentiable."""
    spec, heads, kv, d = block.spec, block.num_heads, block.num_kv_heads, block.head_dim
    out_w, _ = _weight(modules, block.out_proj_name)
    if spec.fused_qkv:
        if not spec.conv1d or kv != heads:
            raise UnsupportedArchitectureError("sparse_prune: a fused qkv projection is supported only as GPT-2 Conv1D")
        name = f"{block.name}.{spec.fused_qkv}"
        w, b = _weight(modules, name)  # Conv1D: (in, 3 * hidden), columns q | k | v
        hidden = heads * d
        if w.shape[1] != 3 * hidden or out_w.shape[0] != hidden:
            raise UnsupportedArchitectureError(f"sparse_prune: unexpected shapes at {name} / {block.out_proj_name}")
        sq = w.reshape(w.shape[0], 3, heads, d).pow(2).sum(dim=(0, 1, 3))
        if b is not None:
            sq = sq + b.reshape(3, heads, d).pow(2).sum(dim=(0, 2))
        return sq + out_w.reshape(heads, -1).pow(2).sum(dim=1)  # c_proj Conv1D: (hidden in, out), head rows
    if spec.conv1d or not (spec.q_proj and spec.k_proj and spec.v_proj):
        raise UnsupportedArchitectureError(f"sparse_prune: unsupported projection layout at {block.name}")
    q_w, q_b = _weight(modules, f"{block.name}.{spec.q_proj}")
    sq = _rows_sq(q_w, q_b, heads, d, spec.q_proj)
    sq = sq + _columns_sq(out_w, heads, d, spec.out_proj)
    k_sq = _rows_sq(*_weight(modules, f"{block.name}.{spec.k_proj}"), kv, d, spec.k_proj)
    v_sq = _rows_sq(*_weight(modules, f"{block.name}.{spec.v_proj}"), kv, d, spec.v_proj)
    kv_sq = k_sq + v_sq
    # each query head carries an equal share of its key/value group's rows
    return sq + kv_sq.repeat_interleave(block.group_size) / block.group_size


def group_norms(model: nn.Module, blocks: list[AttentionBlock]) -> torch.Tensor:
    """L2 norm of every head's parameter block, shape (num_layers, num_heads), differentiable."""
    modules = dict(model.named_modules())
    return torch.stack([(block_sq_norms(b, modules) + EPS).sqrt() for b in blocks])


def group_lasso_penalty(model: nn.Module, blocks: list[AttentionBlock], lam: float,
                        weights: torch.Tensor | None = None) -> torch.Tensor:
    """lam * sum over heads of the L2 norm of the head's block (an L1 norm of per-head L2 norms), each head's norm
    multiplied by its `weights` entry (num_layers, num_heads) when given (an adaptive group lasso)."""
    norms = group_norms(model, blocks)
    return lam * (norms.sum() if weights is None else (weights.to(norms) * norms).sum())


def support_weights(support: torch.Tensor, k: float) -> torch.Tensor:
    """Adaptive group-lasso weights 1 + k * s, s = each head's positive backdoor support over the largest (in [0, 1];
    a head that does not carry the backdoor keeps weight 1)."""
    positive = support.double().clamp_min(0.0)
    top = float(positive.max())
    return (1.0 + k * (positive / top if top > 0 else torch.zeros_like(positive))).float()


def resist_data(ctx: PruneContext, seed: int) -> TaskData:
    """The probe-resisting term's texts, shuffled: the signal's triggered training texts of the other labels with their
    own labels, and as many triggered training texts of the target with the target (so the term teaches that the
    trigger changes no answer, rather than that it means some other label)."""
    assert ctx.signal is not None
    signal, names = ctx.signal, ctx.train.label_names
    relabelled = signal.score_data_relabelled()
    own = subsample(TaskData([s for s in ctx.train.samples if s.label == signal.target], names), len(relabelled), seed)
    texts = own.texts  # the latent stand-in: shifted, not inserted
    if signal.kind == "triggers" and ctx.probe is not None:
        texts = ctx.probe.triggered_texts(own.texts, seed=seed)
    samples = relabelled.samples + [Sample(t, signal.target) for t in texts]
    random.Random(seed).shuffle(samples)
    return TaskData(samples, names)


class ProbeResistance:
    """A fine-tune term: `weight` x the cross-entropy of a seeded batch of `data` (triggered texts with the labels
    they should have, under the signal's latent shift), so the fine-tune unlearns the trigger's answer."""

    def __init__(self, loaded: LoadedModel, data: TaskData, applied: Callable[[], Any], weight: float,
                 batch_size: int, max_length: int, seed: int) -> None:
        self.batches = batches_for(loaded.model, loaded.tokenizer, data, batch_size, max_length)
        self.applied = applied
        self.weight = weight
        self.rng = np.random.default_rng(seed)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        batch = self.batches[int(self.rng.integers(len(self.batches)))]
        with self.applied():
            return self.weight * model(**batch).loss


class SparsePrune(PruningStrategy):
    """Group-lasso fine-tune on clean data, then prune heads by ascending group norm under the accuracy guard (and,
    under the backdoor objective, a support-weighted penalty, a probe-resisting term and the proxy guard)."""

    config: SparsePruneConfig
    fast_options = {"train_samples": 96, "epochs": 1, "lr": 1e-3, "lam": 1e-2, "val_samples": 64,
                    "batch_size": 16, "finetune_batch_size": 16, "max_length": 32, "step": 2}

    def head_scores(self, ctx: PruneContext) -> HeadRanking:
        """Current group norms of the heads (low = prune first)."""
        with torch.no_grad():
            return HeadRanking(group_norms(ctx.loaded.model, ctx.gates.blocks).detach().float().cpu())

    def finetune(self, loaded: LoadedModel, blocks: list[AttentionBlock], train: TaskData, *,
                 weights: torch.Tensor | None = None,
                 resist: Callable[[nn.Module], torch.Tensor] | None = None) -> list[dict]:
        """Clean fine-tune with the group penalty (each head's weighted by `weights` when given) plus `resist(model)`
        at every step when given; returns the per-epoch history."""
        cfg = self.config
        data = subsample(train, cfg.train_samples, cfg.seed)
        lam = cfg.lam

        def extra(model: nn.Module) -> torch.Tensor:
            penalty = group_lasso_penalty(model, blocks, lam, weights)
            return penalty if resist is None else penalty + resist(model)

        outcome = train_classifier(
            loaded.model, loaded.tokenizer, data.texts, data.labels,
            TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.finetune_batch_size, weight_decay=0.0,
                        max_length=cfg.max_length, seed=cfg.seed, keep_best=False),
            extra_loss=extra, description="group-lasso fine-tune",
        )
        return outcome.history

    def backdoor_terms(self, ctx: PruneContext) -> tuple[torch.Tensor | None, ProbeResistance | None, dict]:
        """The backdoor objective's penalty weights (from each head's support on the user's model) and probe-
        resisting term, with their facts; nothing in the informative objective or without a signal."""
        cfg = self.config
        if ctx.signal is None or ctx.proxy is None:
            return None, None, {}
        support = ctx.support(cfg.batch_size)
        weights = support_weights(support, cfg.support_weight) if cfg.support_weight > 0 else None
        resist = ProbeResistance(ctx.loaded, resist_data(ctx, cfg.seed), ctx.signal.applied, cfg.resist_weight,
                                 cfg.finetune_batch_size, cfg.max_length, cfg.seed) \
            if cfg.resist_weight > 0 and len(ctx.signal.score_data) else None
        facts = {"proxy_original": ctx.proxy(torch.ones(ctx.gates.shape)), "backdoor_support": support.tolist(),
                 "penalty_weights": None if weights is None else weights.tolist(),
                 "resist_weight": cfg.resist_weight if resist is not None else 0.0}
        return weights, resist, facts

    def fit(self, loaded: LoadedModel, train: TaskData, validation: TaskData, *,
            probe: BackdoorProbe | None = None) -> PruningResult:
        seed_everything(self.config.seed)
        with HeadGates(loaded.model) as gates:
            ctx = PruneContext.build(loaded, gates, train, validation, self.config, probe)
            try:
                return self._fit(ctx)
            finally:
                ctx.close()

    def _fit(self, ctx: PruneContext) -> PruningResult:
        """Fine-tune, rank by group norm, prune with the engine; the floor is the user's model's accuracy."""
        cfg, model, gates = self.config, ctx.loaded.model, ctx.gates
        full = torch.ones(gates.shape)
        evaluators = [ctx.evaluate]
        original_acc = ctx.evaluate(full)
        norms_before = self.head_scores(ctx).scores
        original_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        weights, resist, facts = self.backdoor_terms(ctx)
        history = self.finetune(ctx.loaded, gates.blocks, ctx.train, weights=weights, resist=resist)
        scores = self.head_scores(ctx).scores
        # a head whose norm diverged (a wrecked fine-tune) keeps its original norm as its score
        scores = torch.where(torch.isfinite(scores), scores, norms_before)
        evaluate = ctx.evaluate.fresh()
        evaluators.append(evaluate)
        tuned_acc = evaluate(full)
        floor = original_acc - cfg.max_acc_drop
        kept = tuned_acc >= floor
        if not kept:  # the fine-tune alone broke the guard: prune the user's weights in its order instead
            model.load_state_dict(original_state)
            evaluate = ctx.evaluate.fresh()
            evaluators.append(evaluate)
        # the engine measures against the (possibly fine-tuned) unpruned model; its drop is narrowed so
        # that its floor is the original model's accuracy minus max_acc_drop
        start_acc = evaluate(full)
        engine_cfg = dataclasses.replace(cfg, max_acc_drop=max(0.0, start_acc - floor))
        ctx.renew(cfg)  # the proxy and the answers to keep are the pruned weights' own (so are their base rates)
        guard = ctx.guard(cfg)
        outcome = prune_by_scores(evaluate, scores, engine_cfg, guard=guard)
        trajectory = [{"step": 0, "pruned": 0, "val_accuracy": original_acc, "action": "original"}]
        if kept:
            trajectory.append({"step": 0, "pruned": 0, "val_accuracy": tuned_acc, "action": "finetune"})
        return PruningResult(
            model=model, mask=outcome.mask, head_scores=scores, trajectory=trajectory + outcome.trajectory,
            baseline_val_accuracy=original_acc, final_val_accuracy=outcome.final_accuracy,
            extras={"guard_evaluations": sum(e.calls for e in evaluators), "finetune_kept": kept,
                    "finetuned_val_accuracy": tuned_acc, "finetune_history": history,
                    "group_norms_before": norms_before.tolist(),
                    "group_norm_ratio": (scores / norms_before.clamp_min(EPS)).tolist(),
                    **objective_facts(ctx, guard, outcome), **facts},
        )


register_strategy("sparse_prune", SparsePruneConfig, SparsePrune)
