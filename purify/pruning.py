"""The one pruning engine every head-pruning strategy shares.

Rank heads by a score (low = prune first), prune `step` heads at a time, measure clean validation accuracy
after each step; when accuracy falls more than `max_acc_drop` below the unpruned model, restore that step's
heads one at a time, highest score first, until it recovers, then stop (or carry on, if the strategy asks).
At least `min_heads_per_layer` heads stay in every layer, and the whole trajectory is recorded.
"""
from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .checkpoint import LoadedModel
from .data import TaskData
from .device import seed_everything
from .export import apply_pruning
from .heads import HeadGates, mask_to_pruned
from .inference import MAX_LENGTH, labelled_batch, length_order
from .probe import BackdoorProbe
from .registry import Strategy, StrategyConfig, StrategyResult, option

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass
class PruneConfig(StrategyConfig):
    """Knobs every pruning strategy shares: the prune steps and the clean-accuracy guard that stops them."""

    step: int = option(6, "heads pruned per step", low=1)
    max_acc_drop: float = option(0.02, "largest allowed fall in clean validation accuracy below the unpruned model "
                                 "(fraction, 0.02 = 2 points)", low=0, high=1)
    max_prune_fraction: float = option(0.5, "at most this share of all heads is pruned", low=0, low_open=True,
                                       high=1)
    min_heads_per_layer: int = option(1, "heads always kept in each layer (a layer with no head is not allowed)",
                                      low=1)
    val_samples: int | None = option(512, "validation samples used by the guard (a fixed, seeded subset; none = all)",
                                     low=1)
    batch_size: int = option(32, "evaluation and scoring batch size", low=1)


def subsample(data: TaskData, n: int | None, seed: int) -> TaskData:
    """A fixed, seeded subset of at most `n` samples (all of them when n is None or larger)."""
    if n is None or len(data) <= n:
        return data
    idx = np.sort(np.random.default_rng(seed).choice(len(data), size=n, replace=False))
    return data.subset([int(i) for i in idx])


class MaskEvaluator:
    """Clean validation accuracy of the gated model under a mask, cached by mask (masks repeat a lot)."""

    def __init__(self, gates: HeadGates, tokenizer, data: TaskData, *, batch_size: int = 32,
                 max_length: int = MAX_LENGTH) -> None:
        self.gates = gates
        order = length_order(tokenizer, data.texts, max_length).tolist()  # similar lengths: less padding
        texts = [data.texts[i] for i in order]
        self.labels = torch.as_tensor([data.labels[i] for i in order])
        self.batches = [
            labelled_batch(gates.model, tokenizer, texts[i:i + batch_size], max_length=max_length)
            for i in range(0, len(texts), batch_size)
        ]
        self._cache: dict[bytes, float] = {}
        self.calls = 0

    def fresh(self) -> MaskEvaluator:
        """The same evaluation batches with an empty cache and count (for after the model's weights changed)."""
        other = copy.copy(self)
        other._cache, other.calls = {}, 0
        return other

    @staticmethod
    def key(mask: torch.Tensor) -> bytes:
        return (torch.as_tensor(mask) > 0.5).numpy().tobytes()

    @torch.no_grad()
    def __call__(self, mask: torch.Tensor) -> float:
        key = self.key(mask)
        if key not in self._cache:
            self.calls += 1
            model = self.gates.model
            was_training = model.training
            model.eval()
            preds = []
            with self.gates.masked(mask):
                for batch in self.batches:
                    preds.append(model(**batch).logits.argmax(-1).cpu())
            model.train(was_training)
            self._cache[key] = float((torch.cat(preds) == self.labels).float().mean())
        return self._cache[key]


@dataclass
class EngineResult:
    """Final mask, the accuracy it keeps, and every step taken."""

    mask: torch.Tensor
    baseline_accuracy: float
    final_accuracy: float
    trajectory: list[dict] = field(default_factory=list)


def prune_by_scores(
    evaluate: Callable[[torch.Tensor], float],
    scores: torch.Tensor,
    config: PruneConfig,
    *,
    start_mask: torch.Tensor | None = None,
    order: Sequence[tuple[int, int]] | None = None,
    per_layer_budget: torch.Tensor | None = None,
    continue_after_guard: bool = False,
) -> EngineResult:
    """Prune heads in ascending `scores` order (or the given `order`) in steps, guarded by `evaluate`.

    `start_mask` (1 keep / 0 pruned) is where pruning starts (all ones by default); `per_layer_budget[l]`
    caps how many heads of layer l may be pruned; with `continue_after_guard` the engine goes on to the next
    group after a guarded step instead of stopping.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64)
    num_layers, num_heads = scores.shape
    full = torch.ones(num_layers, num_heads)
    baseline = evaluate(full)
    floor = baseline - config.max_acc_drop
    mask = full.clone() if start_mask is None else torch.as_tensor(start_mask, dtype=torch.float32).clone()
    budget = int(config.max_prune_fraction * num_layers * num_heads)
    if order is None:
        flat = sorted(((float(scores[layer, h]), layer, h) for layer in range(num_layers) for h in range(num_heads)))
        order = [(layer, h) for _, layer, h in flat]
    queue = [(layer, h) for layer, h in order if mask[layer, h] > 0]
    current = evaluate(mask)
    trajectory = [{"step": 0, "pruned": int((mask == 0).sum()), "val_accuracy": current, "action": "start"}]
    step_no = 0

    def can_prune(layer: int, h: int) -> bool:
        if mask[layer, h] == 0:
            return False
        if int(mask[layer].sum()) - 1 < config.min_heads_per_layer:
            return False
        if per_layer_budget is not None and int((mask[layer] == 0).sum()) >= int(per_layer_budget[layer]):
            return False
        return True

    while queue and int((mask == 0).sum()) < budget:
        group: list[tuple[int, int]] = []
        while queue and len(group) < config.step and int((mask == 0).sum()) + len(group) < budget:
            layer, h = queue.pop(0)
            if can_prune(layer, h):
                mask[layer, h] = 0.0
                group.append((layer, h))
        if not group:
            break
        step_no += 1
        acc = evaluate(mask)
        record = {"step": step_no, "pruned": int((mask == 0).sum()), "val_accuracy": acc,
                  "heads": [list(x) for x in group], "action": "prune"}
        trajectory.append(record)
        if acc >= floor:
            current = acc
            continue
        # guard tripped: restore this step's heads, most important first, until accuracy recovers
        for layer, h in sorted(group, key=lambda lh: -float(scores[lh[0], lh[1]])):
            mask[layer, h] = 1.0
            acc = evaluate(mask)
            trajectory.append({"step": step_no, "pruned": int((mask == 0).sum()), "val_accuracy": acc,
                               "heads": [[layer, h]], "action": "restore"})
            if acc >= floor:
                break
        current = acc
        if not continue_after_guard:
            break
    return EngineResult(mask=mask, baseline_accuracy=baseline, final_accuracy=current, trajectory=trajectory)


def order_to_scores(order: Sequence[tuple[int, int]], shape: tuple[int, int],
                    rest: torch.Tensor | None = None) -> torch.Tensor:
    """Engine scores (low = prune first) that follow `order`: its k-th head scores k / N.

    Heads missing from `order` score 1 + `rest` (a tensor of `shape` in [0, 1]; 0 when None), so they come after
    every ordered head, ranked among themselves by `rest`.
    """
    n = shape[0] * shape[1]
    scores = torch.ones(shape) if rest is None else 1.0 + rest.float()
    for rank, (layer, head) in enumerate(order):
        scores[layer, head] = rank / n
    return scores


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
    """What a pruning hook works on: the model and its gates, the clean data, and the guard's cached evaluator."""

    loaded: LoadedModel
    gates: HeadGates
    train: TaskData
    validation: TaskData  # all of it; `evaluate` measures a fixed, seeded subset (`val_samples`)
    evaluate: MaskEvaluator
    probe: BackdoorProbe | None = None

    @classmethod
    def build(cls, loaded: LoadedModel, gates: HeadGates, train: TaskData, validation: TaskData,
              config: PruneConfig, probe: BackdoorProbe | None = None) -> PruneContext:
        """A context whose evaluator measures `config.val_samples` seeded validation samples."""
        val = subsample(validation, config.val_samples, config.seed)
        evaluate = MaskEvaluator(gates, loaded.tokenizer, val, batch_size=config.batch_size)
        return cls(loaded, gates, train, validation, evaluate, probe)


@dataclass
class HeadRanking:
    """What `head_scores` decided: scores (low = prune first), how the engine walks them, and what the result
    carries (JSON-able `facts` for the report, `files` to export, the `scratch` folders holding them)."""

    scores: torch.Tensor
    order: list[tuple[int, int]] | None = None  # the engine's prune order (default: ascending scores)
    per_layer_budget: torch.Tensor | None = None
    continue_after_guard: bool = False
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
            ranking = self.head_scores(ctx)
            try:
                scores = ranking.scores.detach().float().cpu()
                gates.reset()
                outcome = prune_by_scores(ctx.evaluate, scores, self.config, order=ranking.order,
                                          per_layer_budget=ranking.per_layer_budget,
                                          continue_after_guard=ranking.continue_after_guard)
            except BaseException:
                for folder in ranking.scratch:
                    folder.cleanup()
                raise
        return PruningResult(
            model=model, mask=outcome.mask, head_scores=scores, trajectory=outcome.trajectory,
            baseline_val_accuracy=outcome.baseline_accuracy, final_val_accuracy=outcome.final_accuracy,
            extras={"guard_evaluations": ctx.evaluate.calls, **ranking.facts}, files=dict(ranking.files),
            scratch=list(ranking.scratch),
        )

    def apply(self, loaded: LoadedModel, result: StrategyResult) -> PreTrainedModel:
        """The model with the pruned heads zeroed in its weights."""
        pruned = pruned_heads_of(result)
        if pruned:
            apply_pruning(result.model, pruned)
        return result.model
