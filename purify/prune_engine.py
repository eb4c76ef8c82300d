"""The one pruning engine every head-pruning strategy shares, and the knobs it reads.

Rank heads by a score (low = prune first), prune `step` heads at a time, measure clean validation accuracy
after each step; when accuracy falls more than `max_acc_drop` below the unpruned model, restore that step's
heads one at a time, highest score first, until it recovers, then stop (or carry on, if the strategy asks).
At least `min_heads_per_layer` heads stay in every layer, and the whole trajectory is recorded.

Under the "backdoor" objective a `ProxyGuard` also watches the backdoor signal (`purify.backdoor_signal`): a step
is kept only when it lowers the proxy ASR (and accuracy stays inside the guard; otherwise it is rolled back and
the engine goes on with the next heads), and pruning stops once the proxy reaches the target's clean base rate
plus a margin, or after `patience` steps in a row that did not lower it.
"""
from __future__ import annotations

import copy
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .backdoor_signal import OBJECTIVES
from .data import TaskData
from .heads import HeadGates
from .inference import MAX_LENGTH, labelled_batch, length_order
from .registry import StrategyConfig, option


@dataclass
class PruneConfig(StrategyConfig):
    """Knobs every pruning strategy shares: the prune steps and the clean-accuracy guard that stops them."""

    step: int | None = option(None, "heads pruned per step (none: 1 under the backdoor objective, whose walk keeps or "
                              "rolls back each step on the proxy; 6 under the informative one)", low=1)
    max_acc_drop: float = option(0.02, "largest allowed fall in clean validation accuracy below the unpruned model "
                                 "(fraction, 0.02 = 2 points)", low=0, high=1)
    max_prune_fraction: float = option(0.5, "at most this share of all heads is pruned", low=0, low_open=True,
                                       high=1)
    min_heads_per_layer: int = option(1, "heads always kept in each layer (a layer with no head is not allowed)",
                                      low=1)
    val_samples: int | None = option(512, "validation samples used by the guard (a fixed, seeded subset; none = all)",
                                     low=1)
    batch_size: int = option(32, "evaluation and scoring batch size", low=1)
    objective: str = option("backdoor", "what pruning removes: 'backdoor' ranks heads by what the run's backdoor "
                            "probe (its triggers, else a latent stand-in) uses against their clean importance and "
                            "keeps a step only when the probe's ASR falls; 'informative' is the paper's criterion "
                            "(the least informative heads, under the accuracy guard only)", choices=OBJECTIVES)
    proxy_samples: int = option(256, "backdoor objective: clean samples of the other labels the trigger is "
                                "inserted into, for the proxy ASR (validation) and for rankings (training)", low=8)
    proxy_margin: float = option(0.02, "backdoor objective: stop once the proxy ASR is at most the target's clean "
                                 "base rate plus this (fraction)", low=0, high=1)
    inversion_candidates: int = option(48, "backdoor objective: words measured per label when no probe came with "
                                       "the run (the trigger_words search on the training data)", low=1)
    inversion_words: int = option(8, "backdoor objective: words kept per label by that search", low=1)
    max_flip: float = option(0.05, "backdoor objective: largest share of clean texts (trusted and training, "
                             "`flip_samples` of them) whose answer a kept step may change from the unpruned model's",
                             low=0, high=1)
    flip_samples: int = option(512, "backdoor objective: clean texts the answer-change check reads (seeded)", low=1)
    recover_epochs: int = option(0, "fine-pruning: epochs of a short clean fine-tune after pruning, the pruned "
                                 "heads held closed (0: none; Liu et al. 2018)", low=0)
    recover_samples: int | None = option(1000, "fine-pruning: clean training samples of that fine-tune (seeded; none "
                                         "= all)", low=1)
    recover_lr: float = option(2e-5, "fine-pruning: learning rate of that fine-tune", low=0, low_open=True)
    rescore: bool = option(True, "backdoor objective: after each kept step, re-rank the remaining heads in the pruned "
                           "model (strategies whose ranking can be re-measured: gradient_prune)")
    rescore_samples: int = option(64, "backdoor objective: triggered training texts the re-ranking reads", low=1)
    patience: int = option(3, "backdoor objective: stop after this many steps in a row that did not lower the "
                           "proxy ASR", low=1)

    @property
    def step_size(self) -> int:
        """Heads per step: `step`, else the objective's default."""
        return self.step if self.step is not None else (1 if self.objective == "backdoor" else 6)



def subsample(data: TaskData, n: int | None, seed: int) -> TaskData:
    """A fixed, seeded subset of at most `n` samples (all of them when n is None or larger)."""
    if n is None or len(data) <= n:
        return data
    idx = np.sort(np.random.default_rng(seed).choice(len(data), size=n, replace=False))
    return data.subset([int(i) for i in idx])


class MaskEvaluator:
    """Accuracy of the gated model on fixed data under a mask, cached by mask (masks repeat a lot): clean validation
    accuracy, or, on triggered texts labelled with the target, the proxy ASR."""

    def __init__(self, gates: HeadGates, tokenizer, data: TaskData, *, batch_size: int = 32,
                 max_length: int = MAX_LENGTH, context: Callable[[], Any] = contextlib.nullcontext) -> None:
        self.gates = gates
        self.context = context  # entered around every forward (the backdoor signal's latent shift)
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
            with self.gates.masked(mask), self.context():
                for batch in self.batches:
                    preds.append(model(**batch).logits.argmax(-1).cpu())
            model.train(was_training)
            self._cache[key] = float((torch.cat(preds) == self.labels).float().mean())
        return self._cache[key]


@dataclass
class ProxyGuard:
    """The backdoor objective's side of the engine: the proxy ASR under a mask, and where pruning may stop."""

    proxy: Callable[[torch.Tensor], float]
    stop_at: float  # the target's clean base rate plus the margin
    patience: int = 3
    clean_rate: float = 0.0  # the target's clean base rate on the same texts (the floor the proxy can reach)
    #: share of clean texts answering as the unpruned model did, under a mask (None: not checked), and its bound
    agreement: Callable[[torch.Tensor], float] | None = None
    max_flip: float = 0.01
    #: new scores (low = prune first) for the heads still kept, measured under the current mask: after each kept
    #: step the rest of the queue is re-ranked by them (the backdoor re-routes as its heads go)
    rescore: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass
class EngineResult:
    """Final mask, the accuracy it keeps, every step taken, and (backdoor objective) the proxy before and after."""

    mask: torch.Tensor
    baseline_accuracy: float
    final_accuracy: float
    trajectory: list[dict] = field(default_factory=list)
    baseline_proxy: float | None = None
    final_proxy: float | None = None
    stop_reason: str = "queue"


class _Walk:
    """The engine's state while it walks the queue: the mask, the guard floor and the trajectory."""

    def __init__(self, evaluate: Callable[[torch.Tensor], float], scores: torch.Tensor, config: PruneConfig,
                 mask: torch.Tensor, per_layer_budget: torch.Tensor | None) -> None:
        self.evaluate, self.scores, self.config, self.mask = evaluate, scores, config, mask
        self.per_layer_budget = per_layer_budget
        self.budget = int(config.max_prune_fraction * mask.numel())
        self.trajectory: list[dict] = []

    @property
    def pruned(self) -> int:
        return int((self.mask == 0).sum())

    def can_prune(self, layer: int, h: int) -> bool:
        if self.mask[layer, h] == 0 or int(self.mask[layer].sum()) - 1 < self.config.min_heads_per_layer:
            return False
        budget = self.per_layer_budget
        return budget is None or int((self.mask[layer] == 0).sum()) < int(budget[layer])

    def take_group(self, queue: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Prune up to `step` legal heads from the front of `queue`, the group counted twice against the budget (the
        engine's historical rule, kept so that seeded runs give the same masks as before)."""
        group: list[tuple[int, int]] = []
        while queue and len(group) < self.config.step_size and self.pruned + len(group) < self.budget:
            layer, h = queue.pop(0)
            if self.can_prune(layer, h):
                self.mask[layer, h] = 0.0
                group.append((layer, h))
        return group

    def restore_until(self, step_no: int, group: list[tuple[int, int]], fits: Callable[[float], bool]) -> float:
        """Restore `group`'s heads, highest score first, until `fits(accuracy)` holds again; the accuracy then."""
        acc = float("-inf")
        for layer, h in sorted(group, key=lambda lh: -float(self.scores[lh[0], lh[1]])):
            self.mask[layer, h] = 1.0
            acc = self.evaluate(self.mask)
            self.trajectory.append({"step": step_no, "pruned": self.pruned, "val_accuracy": acc,
                                    "heads": [[layer, h]], "action": "restore"})
            if fits(acc):
                break
        return acc


def prune_by_scores(
    evaluate: Callable[[torch.Tensor], float],
    scores: torch.Tensor,
    config: PruneConfig,
    *,
    start_mask: torch.Tensor | None = None,
    order: Sequence[tuple[int, int]] | None = None,
    per_layer_budget: torch.Tensor | None = None,
    continue_after_guard: bool = False,
    guard: ProxyGuard | None = None,
) -> EngineResult:
    """Prune heads in ascending `scores` order (or the given `order`) in steps, guarded by `evaluate`.

    `start_mask` (1 keep / 0 pruned) is where pruning starts (all ones by default); `per_layer_budget[l]`
    caps how many heads of layer l may be pruned; with `continue_after_guard` the engine goes on to the next
    group after a guarded step instead of stopping. With `guard` (the backdoor objective) see `_walk_backdoor`.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64)
    num_layers, num_heads = scores.shape
    baseline = evaluate(torch.ones(num_layers, num_heads))
    mask = torch.ones(num_layers, num_heads) if start_mask is None else \
        torch.as_tensor(start_mask, dtype=torch.float32).clone()
    if order is None:
        flat = sorted(((float(scores[layer, h]), layer, h) for layer in range(num_layers) for h in range(num_heads)))
        order = [(layer, h) for _, layer, h in flat]
    walk = _Walk(evaluate, scores, config, mask, per_layer_budget)
    queue = [(layer, h) for layer, h in order if mask[layer, h] > 0]
    current = evaluate(mask)
    walk.trajectory.append({"step": 0, "pruned": walk.pruned, "val_accuracy": current, "action": "start"})
    if guard is not None:
        return _walk_backdoor(walk, queue, baseline, current, guard)
    step_no = 0
    floor = baseline - config.max_acc_drop
    while queue and walk.pruned < walk.budget:
        group = walk.take_group(queue)
        if not group:
            break
        step_no += 1
        acc = evaluate(mask)
        walk.trajectory.append({"step": step_no, "pruned": walk.pruned, "val_accuracy": acc,
                                "heads": [list(x) for x in group], "action": "prune"})
        if acc >= floor:
            current = acc
            continue
        # guard tripped: restore this step's heads, most important first, until accuracy recovers
        current = walk.restore_until(step_no, group, lambda a: a >= floor)
        if not continue_after_guard:
            break
    return EngineResult(mask=mask, baseline_accuracy=baseline, final_accuracy=current, trajectory=walk.trajectory)


def _walk_backdoor(walk: _Walk, queue: list[tuple[int, int]], baseline: float, current: float,
                   guard: ProxyGuard) -> EngineResult:
    """The backdoor objective's walk: keep a step only when the proxy falls while accuracy stays inside the guard
    and at most `max_flip` of the clean texts change their answer (a step that breaks either is restored head by
    head until it fits; what is left of it must still lower the proxy); stop at the proxy's floor, after `patience`
    fruitless steps in a row, or when the queue or budget runs out."""
    floor = baseline - walk.config.max_acc_drop
    mask, trajectory = walk.mask, walk.trajectory
    proxy = start_proxy = guard.proxy(mask)
    trajectory[0]["proxy_asr"] = proxy
    step_no, fruitless, reason = 0, 0, "queue"

    def fits(acc: float) -> bool:
        return acc >= floor and (guard.agreement is None or guard.agreement(mask) >= 1 - guard.max_flip)

    while True:
        if proxy <= guard.stop_at:
            reason = "proxy at the clean base rate"
            break
        if fruitless >= guard.patience:
            reason = "patience"
            break
        if not queue or walk.pruned >= walk.budget or not (group := walk.take_group(queue)):
            reason = "budget" if walk.pruned >= walk.budget else "queue"
            break
        step_no += 1
        acc = walk.evaluate(mask)
        record = {"step": step_no, "pruned": walk.pruned, "val_accuracy": acc, "heads": [list(x) for x in group],
                  "action": "prune"}
        trajectory.append(record)
        if not fits(acc):
            acc = walk.restore_until(step_no, group, fits)
        kept = [lh for lh in group if mask[lh] == 0]
        candidate = guard.proxy(mask) if kept and fits(acc) else proxy
        record["proxy_asr"] = candidate  # of what is left of the step after any restore
        if guard.agreement is not None:
            record["agreement"] = guard.agreement(mask)
        if kept and candidate < proxy and fits(acc):
            proxy, current, fruitless = candidate, acc, 0
            if guard.rescore is not None and queue:
                fresh = guard.rescore(mask.clone())
                queue.sort(key=lambda lh: (float(fresh[lh]), lh))
            continue
        for lh in kept:  # the step did not lower the proxy: roll it back
            mask[lh] = 1.0
        fruitless += 1
        if kept:
            trajectory.append({"step": step_no, "pruned": walk.pruned, "val_accuracy": current, "proxy_asr": proxy,
                               "heads": [list(x) for x in kept], "action": "reject"})
    return EngineResult(mask=mask, baseline_accuracy=baseline, final_accuracy=current, trajectory=trajectory,
                        baseline_proxy=start_proxy, final_proxy=proxy, stop_reason=reason)


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


