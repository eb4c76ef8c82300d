"""Behaviour of ensemble_prune: biased candidate masks, voting, a re-validated union, and the backdoor objective's
candidates judged on accuracy and the proxy."""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
import torch

from purify.backdoor_signal import backdoor_scores
from purify.errors import ConfigError
from purify.heads import HeadGates
from purify.probe import BackdoorProbe, TriggerCandidate
from purify.prune_engine import MaskEvaluator, subsample
from purify.pruning import PruneContext
from purify.testing.tiny_task import TARGET, TRIGGER, tiny_backdoored
from strategies.ensemble_prune import (
    EnsemblePrune,
    EnsemblePruneConfig,
    draw_candidates,
    importance_ranks,
    judge_candidates,
    vote_shares,
)


def test_importance_ranks_scale_to_unit_interval() -> None:
    ranks = importance_ranks(torch.tensor([[0.3, 0.1], [0.9, 0.1]]))
    assert ranks.flatten().tolist() == pytest.approx([2 / 3, 0.0, 1.0, 1 / 3])  # ties broken by position


def test_candidates_prefer_unimportant_heads() -> None:
    importance = torch.arange(24, dtype=torch.float32).reshape(4, 6)  # head (l, h) importance grows with l*6+h
    ranks = importance_ranks(importance)
    masks = draw_candidates(ranks, 2000, 6, 3.0, 1, np.random.default_rng(0))
    freq = vote_shares(masks, (4, 6)).flatten()
    assert all(int((m == 0).sum()) == 6 for m in masks)
    low, high = freq[:6].mean(), freq[-6:].mean()
    assert low > 3 * high
    # frequency falls with importance (allowing sampling noise between neighbours)
    assert np.corrcoef(np.arange(24), freq.numpy())[0, 1] < -0.9
    uniform = vote_shares(draw_candidates(ranks, 2000, 6, 0.0, 1, np.random.default_rng(0)), (4, 6)).flatten()
    assert float(uniform.max() - uniform.min()) < 0.1  # bias 0: every head about 6/24


def test_candidates_keep_min_heads_and_repeat_under_a_seed() -> None:
    ranks = importance_ranks(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    masks = draw_candidates(ranks, 50, 4, 10.0, 1, np.random.default_rng(1))
    assert all(bool((m.sum(dim=1) >= 1).all()) for m in masks)
    again = draw_candidates(ranks, 50, 4, 10.0, 1, np.random.default_rng(1))
    assert all(torch.equal(a, b) for a, b in zip(masks, again))


def test_vote_shares_of_no_candidate_are_zero() -> None:
    assert vote_shares([], (2, 3)).tolist() == [[0.0] * 3] * 2


def test_weighted_vote_shares_count_each_mask_by_its_weight() -> None:
    a, b = torch.ones(1, 3), torch.ones(1, 3)
    a[0, 0] = 0.0
    b[0, 1] = 0.0
    assert vote_shares([a, b], (1, 3), [3.0, 1.0]).tolist() == [[0.75, 0.25, 0.0]]
    assert vote_shares([a, b], (1, 3)).tolist() == [[0.5, 0.5, 0.0]]


def test_judging_keeps_only_candidates_that_keep_accuracy_and_lower_the_proxy() -> None:
    masks = [torch.ones(1, 4) for _ in range(5)]
    for head, mask in enumerate(masks[:4]):
        mask[0, head] = 0.0  # candidate k prunes head k; the last prunes nothing
    proxy_of = {0: 0.5, 1: 1.0, 2: 1.1, 3: 0.2}  # head 0 lowers the proxy, 1 leaves it, 2 raises it; 3 costs accuracy
    read: list[int] = []

    def proxy(mask: torch.Tensor) -> float:
        pruned = (mask == 0).nonzero()[:, 1].tolist()
        read.append(pruned[0] if pruned else -1)
        return proxy_of[pruned[0]] if pruned else 1.0

    def evaluate(mask: torch.Tensor) -> float:
        return 0.5 if mask[0, 3] == 0 else 1.0

    weights, records = judge_candidates(masks, evaluate, 0.9, proxy)
    assert weights == [0.5, 0.0, 0.0, 0.0, 0.0]
    assert [r["kept"] for r in records] == [True, False, False, False, False]
    assert records[2]["proxy_fall"] == pytest.approx(-0.1) and records[3]["proxy_asr"] is None
    assert 3 not in read  # a candidate that fails the accuracy guard is not run on the proxy
    assert judge_candidates(masks, evaluate, 0.9, proxy, min_fall=0.5)[0] == [0.0] * 5  # the fall must exceed it


def _fit(arch: str = "bert", probe: BackdoorProbe | None = None, **options) -> tuple[object, object,
                                                                                   EnsemblePruneConfig]:
    loaded, task = tiny_backdoored(arch)
    config = EnsemblePruneConfig(**{**EnsemblePrune.fast_options, "objective": "informative", **options})
    result = EnsemblePrune(config).fit(loaded, task.clean_train, task.validation, probe=probe)
    return result, (loaded, task), config


def _trigger_probe() -> BackdoorProbe:
    return BackdoorProbe([TriggerCandidate(TRIGGER, TARGET, 1.0, "phrases")], {0: 0.0, 1: 0.0}, "test")


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_final_union_passes_the_guard(arch: str) -> None:
    result, (loaded, task), config = _fit(arch, vote=0.3, num_candidates=12)
    assert result.final_val_accuracy >= result.baseline_val_accuracy - config.max_acc_drop - 1e-9
    # measured afresh on the same validation subset
    with HeadGates(loaded.model) as gates:
        val = subsample(task.validation, config.val_samples, config.seed)
        fresh = MaskEvaluator(gates, loaded.tokenizer, val, batch_size=16)
        assert fresh(result.mask) >= fresh(torch.ones(gates.shape)) - config.max_acc_drop - 1e-9
    pruned = {(layer, h) for layer, heads in result.pruned_heads.items() for h in heads}
    assert pruned <= {tuple(lh) for lh in result.extras["voted_heads"]}
    kept = [c for c in result.extras["candidates"] if c["kept"]]
    assert len(kept) == result.extras["candidates_kept"] and len(result.extras["candidates"]) == 12
    assert all(set(c) == {"pruned", "val_accuracy", "kept"} for c in result.extras["candidates"])  # the paper's


def test_union_of_passing_candidates_is_revalidated(monkeypatch: pytest.MonkeyPatch) -> None:
    # accuracy falls 2 points per pruned head: every 2-head candidate passes a 5-point guard, their union does not
    monkeypatch.setattr(MaskEvaluator, "__call__", lambda self, mask: 1.0 - 0.02 * float((mask == 0).sum()))
    result, _, config = _fit(candidate_fraction=0.25, bias=0.0, vote=0.2, num_candidates=16, max_acc_drop=0.05)
    assert result.extras["candidate_size"] == 2 and result.extras["candidates_kept"] == 16
    assert len(result.extras["voted_heads"]) > 2
    assert sum(len(h) for h in result.pruned_heads.values()) == 2
    assert result.final_val_accuracy == pytest.approx(0.96)
    assert any(step["action"] == "restore" for step in result.trajectory)


def test_no_passing_candidate_prunes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MaskEvaluator, "__call__", lambda self, mask: 1.0 - 0.5 * float((mask == 0).any()))
    result, _, _ = _fit()
    assert result.extras["candidates_kept"] == 0 and result.pruned_heads == {}
    assert torch.equal(result.head_scores, torch.ones(2, 4))


@pytest.mark.parametrize("objective", ["informative", "backdoor"])
def test_deterministic_under_seed(objective: str) -> None:
    probe = _trigger_probe() if objective == "backdoor" else None
    first, _, _ = _fit(probe=probe, seed=7, objective=objective)
    second, _, _ = _fit(probe=probe, seed=7, objective=objective)
    assert first.pruned_heads == second.pruned_heads and first.trajectory == second.trajectory
    assert first.extras["candidates"] == second.extras["candidates"]
    if objective == "backdoor":
        assert first.extras["objective"] == "backdoor" and "proxy_before" in first.extras
        assert all("proxy_asr" in c for c in first.extras["candidates"])


def test_backdoor_candidates_favour_supporting_heads_and_only_proxy_lowering_ones_vote(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # head (1, 2) carries the backdoor: its support dominates, and pruning it is what lowers the (fake) proxy
    support = torch.full((2, 4), -0.1)
    support[1, 2] = 5.0
    monkeypatch.setattr(PruneContext, "support", lambda self, batch_size: support.clone())

    def fake(self: MaskEvaluator, mask: torch.Tensor) -> float:
        if self.context is contextlib.nullcontext:  # clean accuracy: every candidate passes
            return 1.0
        return 0.9 - 0.4 * float(mask[1, 2] == 0)  # the proxy ASR

    monkeypatch.setattr(MaskEvaluator, "__call__", fake)
    result, _, _ = _fit(probe=_trigger_probe(), objective="backdoor", num_candidates=12, seed=1)
    extras = result.extras
    ranking = torch.tensor(extras["backdoor_scores"])
    assert torch.allclose(ranking, backdoor_scores(support, torch.tensor(extras["importance"])))
    assert divmod(int(ranking.argmin()), 4) == (1, 2)
    kept = [c for c in extras["candidates"] if c["kept"]]
    assert kept and all(c["proxy_fall"] == pytest.approx(0.4) for c in kept)
    assert all(c["proxy_fall"] == pytest.approx(0.0) for c in extras["candidates"] if not c["kept"])
    assert len(kept) > len(extras["candidates"]) / 2  # the supporting head is drawn by most candidates
    assert extras["vote_share"][1][2] == 1.0 and extras["voted_heads"][0] == [1, 2]
    assert 2 in result.pruned_heads.get(1, []) and extras["proxy_after"] == pytest.approx(0.5)


@pytest.mark.parametrize("field,value", [("num_candidates", 0), ("candidate_fraction", 0.0), ("bias", -1.0),
                                         ("vote", 1.5), ("score_samples", 0)])
def test_invalid_config_is_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        EnsemblePruneConfig(**{field: value}).validate()


def test_search_space_names_config_fields() -> None:
    names = {f.name for f in dataclasses.fields(EnsemblePruneConfig)}
    space = EnsemblePruneConfig.search_space()
    assert space and set(space) <= names
