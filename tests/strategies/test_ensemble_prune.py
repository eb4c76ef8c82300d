"""Behaviour of ensemble_prune: biased candidate masks, voting, and a re-validated union."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from purify.errors import ConfigError
from purify.heads import HeadGates
from purify.prune_engine import MaskEvaluator, subsample
from purify.testing.tiny_task import tiny_backdoored
from strategies.ensemble_prune import (
    EnsemblePrune,
    EnsemblePruneConfig,
    draw_candidates,
    importance_ranks,
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


def _fit(arch: str = "bert", **options) -> tuple[object, object, EnsemblePruneConfig]:
    loaded, task = tiny_backdoored(arch)
    config = EnsemblePruneConfig(**{**EnsemblePrune.fast_options, **options})
    return EnsemblePrune(config).fit(loaded, task.clean_train, task.validation), (loaded, task), config


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


def test_deterministic_under_seed() -> None:
    first, _, _ = _fit(seed=7)
    second, _, _ = _fit(seed=7)
    assert first.pruned_heads == second.pruned_heads
    assert first.extras["candidates"] == second.extras["candidates"]


@pytest.mark.parametrize("field,value", [("num_candidates", 0), ("candidate_fraction", 0.0), ("bias", -1.0),
                                         ("vote", 1.5), ("score_samples", 0)])
def test_invalid_config_is_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        EnsemblePruneConfig(**{field: value}).validate()


def test_search_space_names_config_fields() -> None:
    names = {f.name for f in dataclasses.fields(EnsemblePruneConfig)}
    space = EnsemblePruneConfig.search_space()
    assert space and set(space) <= names
