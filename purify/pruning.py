"""What every head-pruning strategy shares: its context, its ranking, its result, and the `fit` that hands the
ranking to the one engine (`purify.prune_engine`) and the `apply` that zeroes the pruned heads in the weights.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .checkpoint import LoadedModel
from .data import Sample, TaskData
from .device import seed_everything
from .export import apply_pruning
from .heads import HeadGates, mask_to_pruned
from .inference import MAX_LENGTH, labelled_batch, predict
from .probe import BackdoorProbe, probe_or_invert
from .prune_engine import (EngineResult, MaskEvaluator, ProxyGuard, PruneConfig, prune_by_scores,
                           subsample)
from .registry import Strategy, StrategyResult
from .training import TrainConfig, train_classifier
from .backdoor_signal import BackdoorSignal, backdoor_support, build_signal, clean_target_rate

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def objective_facts(ctx: PruneContext, guard: ProxyGuard | None, outcome: EngineResult) -> dict[str, Any]:
    """The report's record of the objective: which, the signal, and the proxy ASR before and after pruning."""
    if guard is None:
        return {"objective": "backdoor (no signal: informative walk)" if ctx.probe is not None else "informative"}
    assert ctx.signal is not None and ctx.proxy is not None
    return {"objective": "backdoor", "signal": ctx.signal.summary(), "proxy_clean_rate": guard.clean_rate,
            "proxy_stop_at": guard.stop_at,
            "proxy_before": outcome.baseline_proxy, "proxy_after": outcome.final_proxy,
            "stop_reason": outcome.stop_reason, "proxy_evaluations": ctx.proxy.calls}


def batches_for(model, tokenizer, data: TaskData, batch_size: int, max_length: int = MAX_LENGTH) -> list[dict]:
    """Labelled, tokenized batches of `data` on the model's device (in order)."""
    return [labelled_batch(model, tokenizer, data.texts[i:i + batch_size], data.labels[i:i + batch_size], max_length)
            for i in range(0, len(data), batch_size)]


@dataclass(kw_only=True)
class PruningResult(StrategyResult):
    """A pruning strategy's result: the final mask (1 = keep) and the head scores it was ranked by."""

    mask: torch.Tensor  # (num_layers, num_heads)
    head_scores: torch.Tensor  # low = pruned first

    @property
    def pruned_heads(self) -> dict[int, list[int]]:
        return mask_to_pruned(self.mask)

    def summary(self) -> dict:
        pruned = self.pruned_heads
        return {"pruned_heads": {str(k): v for k, v in pruned.items()}, "num_pruned": sum(map(len, pruned.values())),
                "head_scores": self.head_scores.tolist(), **super().summary()}


def pruned_heads_of(result: StrategyResult) -> dict[int, list[int]]:
    """The heads `result` pruned ({} when its strategy does not prune): what export zeroes and records."""
    return result.pruned_heads if isinstance(result, PruningResult) else {}


def report_summary(result: StrategyResult) -> dict:
    """`result.summary()` with the pruning keys every report carries (empty ones when its strategy prunes nothing)."""
    return {"pruned_heads": {}, "num_pruned": 0, "head_scores": None, **result.summary()}


@dataclass
class PruneContext:
    """What a pruning hook works on: the model and its gates, the clean data, the guard's cached evaluator and,
    under the backdoor objective, the backdoor signal and its cached proxy evaluator."""

    loaded: LoadedModel
    gates: HeadGates
    train: TaskData
    validation: TaskData  # all of it; `evaluate` measures a fixed, seeded subset (`val_samples`)
    evaluate: MaskEvaluator
    probe: BackdoorProbe | None = None
    signal: BackdoorSignal | None = None  # set under the backdoor objective
    proxy: MaskEvaluator | None = None  # the proxy ASR under a mask (the signal's target rate)
    agreement: MaskEvaluator | None = None  # share of clean texts answering as the unpruned model does
    clean_rate: float | None = None  # the target's clean base rate on the signal's texts, measured once

    @classmethod
    def build(cls, loaded: LoadedModel, gates: HeadGates, train: TaskData, validation: TaskData,
              config: PruneConfig, probe: BackdoorProbe | None = None) -> PruneContext:
        """A context whose evaluator measures `config.val_samples` seeded validation samples; under the backdoor
        objective also the run's probe (searched for on `train` when the run has none) and its signal."""
        val = subsample(validation, config.val_samples, config.seed)
        evaluate = MaskEvaluator(gates, loaded.tokenizer, val, batch_size=config.batch_size)
        ctx = cls(loaded, gates, train, validation, evaluate, probe)
        if config.objective == "backdoor":
            ctx.probe = probe_or_invert(loaded.model, loaded.tokenizer, train, probe, source="pruning:inversion",
                                        candidates=config.inversion_candidates, keep=config.inversion_words,
                                        seed=config.seed)
            ctx.signal = build_signal(loaded.model, loaded.tokenizer, ctx.probe, train, validation,
                                      samples=config.proxy_samples, seed=config.seed)
            if ctx.signal is not None:
                ctx.proxy = MaskEvaluator(gates, loaded.tokenizer, ctx.signal.probe_data,
                                          batch_size=config.batch_size, context=ctx.signal.applied)
                ctx.agreement = _agreement(loaded, gates, validation, train, config)
        return ctx

    @property
    def backdoor(self) -> bool:
        """True when the backdoor objective has a signal to prune against."""
        return self.signal is not None

    def signal_batches(self, batch_size: int) -> list[dict]:
        """Batches of the signal's training texts with the trigger (or under the shift), labelled with the target."""
        assert self.signal is not None
        return batches_for(self.loaded.model, self.loaded.tokenizer, self.signal.score_data, batch_size)

    def support(self, batch_size: int) -> torch.Tensor:
        """Each head's backdoor support (`purify.backdoor_signal.backdoor_support`) on the signal's training texts."""
        assert self.signal is not None
        return backdoor_support(self.gates, self.signal_batches(batch_size), self.signal.applied)

    def guard(self, config: PruneConfig) -> ProxyGuard | None:
        """The engine's proxy guard: stop at the target's clean base rate on the signal's texts plus the margin."""
        if self.signal is None or self.proxy is None:
            return None
        if self.clean_rate is None:
            self.clean_rate = clean_target_rate(self.loaded.model, self.loaded.tokenizer, self.signal)
        base = self.clean_rate
        return ProxyGuard(self.proxy, base + config.proxy_margin, config.patience, base, self.agreement,
                          config.max_flip)

    def renew(self, config: PruneConfig) -> None:
        """After the model's weights changed (a strategy's own fine-tune): fresh proxy cache, and answers to keep
        taken from the model as it now is."""
        self.clean_rate = None
        if self.proxy is not None:
            self.proxy = self.proxy.fresh()
        if self.agreement is not None:
            self.agreement = _agreement(self.loaded, self.gates, self.validation, self.train, config)

    def close(self) -> None:
        if self.signal is not None:
            self.signal.close()


def recover(ctx: PruneContext, mask: torch.Tensor, config: PruneConfig) -> dict[str, Any]:
    """Fine-pruning: a short clean fine-tune with the pruned heads held closed, so the remaining weights win back
    clean accuracy (the backdoor's heads stay out); {} when `recover_epochs` is 0."""
    if config.recover_epochs == 0 or not bool((mask == 0).any()):
        return {}
    data = subsample(ctx.train, config.recover_samples, config.seed)
    ctx.gates.set(mask)
    outcome = train_classifier(ctx.loaded.model, ctx.loaded.tokenizer, data.texts, data.labels,
                               TrainConfig(epochs=config.recover_epochs, lr=config.recover_lr,
                                           batch_size=config.batch_size, seed=config.seed, keep_best=False),
                               description="fine-pruning recovery")
    after = ctx.evaluate.fresh()(mask)
    facts: dict[str, Any] = {"epochs": config.recover_epochs, "samples": len(data), "val_accuracy": after,
                             "history": outcome.history}
    if ctx.proxy is not None:
        facts["proxy_asr"] = ctx.proxy.fresh()(mask)
    return facts


def _agreement(loaded: LoadedModel, gates: HeadGates, validation: TaskData, train: TaskData,
               config: PruneConfig) -> MaskEvaluator:
    """An evaluator of how many of `flip_samples` clean texts (the validation ones first, then seeded training ones)
    keep the unpruned model's answer: labels are that model's own predictions, so its "accuracy" is the agreement."""
    val = subsample(validation, config.flip_samples, config.seed)
    texts = val.texts + subsample(train, max(0, config.flip_samples - len(val)), config.seed + 2).texts
    answers = predict(loaded.model, loaded.tokenizer, texts)
    data = TaskData([Sample(t, int(y)) for t, y in zip(texts, answers)], validation.label_names)
    return MaskEvaluator(gates, loaded.tokenizer, data, batch_size=config.batch_size)


@dataclass
class HeadRanking:
    """What `head_scores` decided: scores (low = prune first), how the engine walks them, and what the result
    carries (JSON-able `facts` for the report, `files` to export, the `scratch` folders holding them)."""

    scores: torch.Tensor
    order: list[tuple[int, int]] | None = None  # the engine's prune order (default: ascending scores)
    per_layer_budget: torch.Tensor | None = None
    continue_after_guard: bool = False
    #: the backdoor objective's re-ranking under a mask (see `ProxyGuard.rescore`); None: the ranking is static
    rescore: Callable[[torch.Tensor], torch.Tensor] | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    scratch: list[tempfile.TemporaryDirectory] = field(default_factory=list, repr=False)


class PruningStrategy(Strategy):
    """Shared `fit` for strategies that score heads and hand the scores to the engine, and the `apply` that zeroes
    the pruned heads in the weights.

    Subclasses implement `head_scores`, which returns a `HeadRanking`; everything else (gates, the cached accuracy
    guard, the trajectory, the result) is here, once.
    """

    config: PruneConfig

    def head_scores(self, ctx: PruneContext) -> HeadRanking:
        """Rank the heads of `ctx.gates` from clean data (never triggered data)."""
        raise NotImplementedError  # abstract: every registered pruning strategy defines it

    def fit(self, loaded: LoadedModel, train: TaskData, validation: TaskData, *,
            probe: BackdoorProbe | None = None) -> PruningResult:
        seed_everything(self.config.seed)
        model = loaded.model
        with HeadGates(model) as gates:
            ctx = PruneContext.build(loaded, gates, train, validation, self.config, probe)
            try:
                ranking = self.head_scores(ctx)
                guard = ctx.guard(self.config)
                if guard is not None and ranking.rescore is not None and self.config.rescore:
                    guard.rescore = ranking.rescore
                try:
                    scores = ranking.scores.detach().float().cpu()
                    gates.reset()
                    outcome = prune_by_scores(ctx.evaluate, scores, self.config, order=ranking.order,
                                              per_layer_budget=ranking.per_layer_budget,
                                              continue_after_guard=ranking.continue_after_guard, guard=guard)
                    recovery = recover(ctx, outcome.mask, self.config)
                except BaseException:
                    for folder in ranking.scratch:
                        folder.cleanup()
                    raise
            finally:
                ctx.close()
        facts = objective_facts(ctx, guard, outcome)
        if recovery:
            facts |= {"recovery": recovery, "proxy_after_pruning": facts.get("proxy_after"),
                      "proxy_after": recovery.get("proxy_asr")}
        return PruningResult(
            model=model, mask=outcome.mask, head_scores=scores, trajectory=outcome.trajectory,
            baseline_val_accuracy=outcome.baseline_accuracy,
            final_val_accuracy=recovery.get("val_accuracy", outcome.final_accuracy),
            extras={"guard_evaluations": ctx.evaluate.calls, **facts, **ranking.facts},
            files=dict(ranking.files), scratch=list(ranking.scratch),
        )

    def apply(self, loaded: LoadedModel, result: StrategyResult) -> PreTrainedModel:
        """The model with the pruned heads zeroed in its weights."""
        pruned = pruned_heads_of(result)
        if pruned:
            apply_pruning(result.model, pruned)
        return result.model
