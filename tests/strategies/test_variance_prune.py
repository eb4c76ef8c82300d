"""Behaviour of variance_prune: attention-variance scores, the per-layer schedule, encoder and decoder pooling."""
from __future__ import annotations

import dataclasses
import types

import pytest
import torch

from purify.errors import ConfigError
from purify.heads import HeadGates
from purify.pruning import PruneContext, batches_for
from purify.testing.tiny_task import tiny_backdoored
from strategies.variance_prune import (
    VariancePrune,
    VariancePruneConfig,
    attention_variance,
    layer_budget,
    layer_rates,
    layerwise_order,
    pooling_positions,
)


def _model_of(model_type: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(config=types.SimpleNamespace(model_type=model_type))


def test_layer_rates_rise_linearly_and_budget_floors() -> None:
    rates = layer_rates(4, 0.2, 0.8)
    assert torch.allclose(rates, torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64))
    assert layer_rates(1, 0.3, 0.9).tolist() == [0.3]
    assert layer_budget(4, 12, 0.2, 0.8).tolist() == [2, 4, 7, 9]
    assert layer_budget(2, 4, 0.2, 0.8).tolist() == [0, 3]
    assert layer_budget(3, 10, 0.5, 0.5).tolist() == [5, 5, 5]  # no float error at an exact product


def test_pooling_positions_encoder_first_decoder_last_non_pad() -> None:
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # right, none, left padding
    assert pooling_positions(_model_of("bert"), mask).tolist() == [0, 0, 0]
    assert pooling_positions(_model_of("llama"), mask).tolist() == [2, 4, 4]


class _FakeGates:
    """Gates stand-in whose attention probabilities are given, to check the variance by hand."""

    def __init__(self, model_type: str, probs: list[list[torch.Tensor]]) -> None:
        self.model = _model_of(model_type)
        self._probs = iter(probs)
        self.shape = (len(probs[0]), probs[0][0].shape[1])

    def attention_probs(self, batch: dict) -> list[torch.Tensor]:
        return next(self._probs)


def test_attention_variance_is_total_variance_across_samples_with_padding_keys_zeroed() -> None:
    # one layer, two heads; batch 1 has length-3 rows, batch 2 length 2 (padded key zeroed)
    b1 = torch.zeros(2, 2, 3, 3)
    b1[0, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    b1[1, 0, 0] = torch.tensor([0.0, 1.0, 0.0])
    b1[:, 1, 0] = torch.tensor([0.5, 0.25, 0.25])  # head 1 attends identically everywhere
    b2 = torch.zeros(1, 2, 2, 2)
    b2[0, 0, 0] = torch.tensor([0.5, 0.5])
    b2[0, 1, 0] = torch.tensor([0.5, 0.5])
    gates = _FakeGates("bert", [[b1], [b2]])
    batches = [{"attention_mask": torch.ones(2, 3)}, {"attention_mask": torch.ones(1, 2)}]
    got = attention_variance(gates, batches)

    def total_variance(rows: torch.Tensor) -> float:
        return float(rows.var(dim=0, unbiased=False).sum())

    head0 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    head1 = torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.5, 0.5, 0.0]], dtype=torch.float64)
    assert got.shape == (1, 2)
    assert got[0, 0].item() == pytest.approx(total_variance(head0))
    assert got[0, 1].item() == pytest.approx(total_variance(head1))

    # a padding key's probability (here garbage 0.4) is ignored: both rows are then the same
    padded = torch.zeros(2, 2, 3, 3)
    padded[0, :, 0] = torch.tensor([0.5, 0.5, 0.4])
    padded[1, :, 0] = torch.tensor([0.5, 0.5, 0.0])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert attention_variance(_FakeGates("bert", [[padded]]), [{"attention_mask": mask}]).tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_scores_have_head_shape_and_are_finite(arch: str) -> None:
    loaded, task = tiny_backdoored(arch)
    with HeadGates(loaded.model) as gates:
        batches = batches_for(loaded.model, loaded.tokenizer, task.clean_train.subset(range(40)), 16)
        variance = attention_variance(gates, batches)
        ctx = PruneContext.build(loaded, gates, task.clean_train, task.validation, VariancePruneConfig())
        scores = VariancePrune(VariancePruneConfig()).head_scores(ctx).scores
    assert variance.shape == gates.shape and scores.shape == gates.shape
    assert torch.isfinite(scores).all() and (variance >= 0).all() and variance.sum() > 0
    assert torch.allclose(scores.mean(dim=1), torch.ones(gates.num_layers), atol=1e-5)


def test_layerwise_order_spends_budgets_in_step_and_leaves_the_rest() -> None:
    scores = torch.tensor([[0.3, 0.1, 0.2, 0.9], [0.4, 0.8, 0.5, 0.05]])
    order = layerwise_order(scores, torch.tensor([1, 2]))
    assert order == [(1, 3), (0, 1), (1, 0)]  # 1/2 of layer 1's budget, then 1/1 and 2/2 (lower score first)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_per_layer_budget_is_respected(arch: str) -> None:
    loaded, task = tiny_backdoored(arch)
    # a guard that never trips, so the schedule alone limits pruning (the paper's objective: no proxy to stop it)
    config = VariancePruneConfig(**{**VariancePrune.fast_options, "rate_first": 0.3, "rate_last": 0.6,
                                    "max_acc_drop": 1.0, "objective": "informative"})
    result = VariancePrune(config).fit(loaded, task.clean_train, task.validation)
    num_layers, num_heads = result.mask.shape
    rates = layer_rates(num_layers, 0.3, 0.6)
    pruned = (result.mask == 0).sum(dim=1)
    assert all(int(pruned[layer]) <= float(rates[layer]) * num_heads for layer in range(num_layers))
    assert pruned.tolist() == layer_budget(num_layers, num_heads, 0.3, 0.6).tolist()
    assert result.extras["per_layer_budget"] == pruned.tolist()


def test_guarded_run_keeps_accuracy_and_is_deterministic() -> None:
    def run() -> object:
        loaded, task = tiny_backdoored()
        config = VariancePruneConfig(**{**VariancePrune.fast_options, "seed": 5})
        return VariancePrune(config).fit(loaded, task.clean_train, task.validation)

    first, second = run(), run()
    assert first.pruned_heads == second.pruned_heads
    assert torch.equal(first.head_scores, second.head_scores)
    assert first.final_val_accuracy >= first.baseline_val_accuracy - VariancePruneConfig().max_acc_drop - 1e-9


@pytest.mark.parametrize("field,value", [("rate_first", -0.1), ("rate_last", 1.5), ("score_samples", 0)])
def test_invalid_config_is_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        VariancePruneConfig(**{field: value}).validate()


def test_search_space_names_config_fields() -> None:
    names = {f.name for f in dataclasses.fields(VariancePruneConfig)}
    space = VariancePruneConfig.search_space()
    assert space and set(space) <= names
    assert all(spec["type"] in ("int", "float", "categorical") for spec in space.values())
