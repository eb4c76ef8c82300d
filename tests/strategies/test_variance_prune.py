"""Behaviour of variance_prune: attention-variance scores, the per-layer schedule, encoder and decoder pooling, and
the backdoor objective's trigger attention."""
from __future__ import annotations

import dataclasses
import types

import pytest
import torch

from purify.backdoor_signal import backdoor_scores
from purify.errors import ConfigError
from purify.heads import HeadGates
from purify.inference import encode
from purify.probe import BackdoorProbe, TriggerCandidate
from purify.pruning import PruneContext, batches_for
from purify.testing.tiny import tiny_tokenizer
from purify.testing.tiny_task import TARGET, TRIGGER, tiny_backdoored
from strategies.variance_prune import (
    VariancePrune,
    VariancePruneConfig,
    attention_variance,
    layer_budget,
    layer_rates,
    layerwise_order,
    locate_triggers,
    pooling_positions,
    trigger_attention,
)

INFORMATIVE = {"objective": "informative"}


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
        config = VariancePruneConfig(**INFORMATIVE)
        ctx = PruneContext.build(loaded, gates, task.clean_train, task.validation, config)
        scores = VariancePrune(config).head_scores(ctx).scores
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
        config = VariancePruneConfig(**{**VariancePrune.fast_options, "seed": 5, **INFORMATIVE})
        return VariancePrune(config).fit(loaded, task.clean_train, task.validation)

    first, second = run(), run()
    assert first.pruned_heads == second.pruned_heads
    assert torch.equal(first.head_scores, second.head_scores)
    assert first.final_val_accuracy >= first.baseline_val_accuracy - VariancePruneConfig().max_acc_drop - 1e-9


def test_locate_triggers_marks_the_trigger_tokens_of_the_tokenized_texts() -> None:
    tokenizer = tiny_tokenizer()
    texts = ["good cf movie", "CF the film", "the plot was best good", "cfx good fun"]
    enc, where = locate_triggers(tokenizer, texts, ["cf", "best  good"])
    assert torch.equal(enc["input_ids"], encode(tokenizer, texts)["input_ids"])  # the batch the model sees
    assert where.shape == enc["input_ids"].shape
    # [CLS] first: "cf" is token 2, "CF" (any case) token 1, the phrase tokens 4-5; "cfx" is another word
    assert [row.nonzero().flatten().tolist() for row in where] == [[2], [1], [4, 5], []]


def test_trigger_attention_ranks_the_head_whose_pooled_row_is_on_the_trigger_first() -> None:
    # one layer, three heads: head 0 puts the pooled row on the trigger, head 1 attends uniformly, head 2 to [CLS]
    probs = torch.zeros(3, 3, 4, 4)
    probs[0, 0, 0, 2] = probs[1, 0, 0, 1] = probs[2, 0, 0, 3] = 1.0
    probs[:, 1, 0] = 0.25
    probs[:, 2, 0, 0] = 1.0
    where = torch.zeros(3, 4, dtype=torch.bool)
    where[0, 2] = where[1, 1] = True  # the third sample holds no trigger token and is left out
    gates = _FakeGates("bert", [[probs]])
    attention, located = trigger_attention(gates, [{"attention_mask": torch.ones(3, 4)}], [where])
    assert located == 2
    assert attention.tolist() == [[1.0, 0.25, 0.0]]
    scores = backdoor_scores(attention, torch.ones(1, 3))  # the same clean variance everywhere
    assert int(scores.argmin()) == 0 and float(scores[0, 2]) == 0.0


def _trigger_probe() -> BackdoorProbe:
    return BackdoorProbe([TriggerCandidate(TRIGGER, TARGET, 1.0, "phrases")], {0: 0.0, 1: 0.0}, "test")


def _backdoor_fit(probe: BackdoorProbe, **options) -> object:
    loaded, task = tiny_backdoored()
    config = VariancePruneConfig(**{**VariancePrune.fast_options, "seed": 3, **options})
    return VariancePrune(config).fit(loaded, task.clean_train, task.validation, probe=probe)


def test_backdoor_mode_ranks_by_trigger_attention_is_deterministic_and_records_the_proxy() -> None:
    first, second = _backdoor_fit(_trigger_probe()), _backdoor_fit(_trigger_probe())
    extras = first.extras
    assert extras["objective"] == "backdoor" and extras["backdoor_measure"] == "trigger attention"
    assert extras["trigger_samples"] == extras["signal"]["score_samples"] > 0
    assert extras["proxy_after"] <= extras["proxy_before"] and extras["stop_reason"]
    variance = torch.tensor(extras["attention_variance"], dtype=torch.float64)
    clean = (variance / variance.mean(dim=1, keepdim=True)).float()
    expected = backdoor_scores(torch.tensor(extras["backdoor_support"], dtype=torch.float64), clean)
    assert torch.allclose(first.head_scores, expected)
    # no schedule: the first step takes the lowest-scored heads, in any layer
    lowest = sorted(range(first.head_scores.numel()), key=lambda i: float(first.head_scores.flatten()[i]))[:2]
    assert sorted(tuple(lh) for lh in first.trajectory[1]["heads"]) == sorted(divmod(i, 4) for i in lowest)
    assert extras["per_layer_budget"] is None
    assert torch.equal(first.head_scores, second.head_scores) and first.trajectory == second.trajectory
    assert first.pruned_heads == second.pruned_heads


def test_backdoor_mode_can_keep_the_layer_schedule() -> None:
    result = _backdoor_fit(_trigger_probe(), backdoor_layer_schedule=True, rate_first=0.0, rate_last=0.5)
    assert result.extras["per_layer_budget"] == [0, 2]
    pruned_layers = {int(lh[0]) for step in result.trajectory for lh in step.get("heads", [])}
    assert pruned_layers <= {1}  # layer 0 has no budget, so not even a step tries it


def test_latent_signal_falls_back_to_the_gradient_support() -> None:
    result = _backdoor_fit(BackdoorProbe([], {}, "test"))  # nothing found: the latent stand-in
    assert result.extras["signal"]["kind"] == "latent"
    assert result.extras["backdoor_measure"] == "gradient support (latent signal: no trigger positions)"
    assert result.extras["trigger_samples"] == 0 and "proxy_before" in result.extras


@pytest.mark.parametrize("field,value", [("rate_first", -0.1), ("rate_last", 1.5), ("score_samples", 0)])
def test_invalid_config_is_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        VariancePruneConfig(**{field: value}).validate()


def test_search_space_names_config_fields() -> None:
    names = {f.name for f in dataclasses.fields(VariancePruneConfig)}
    space = VariancePruneConfig.search_space()
    assert space and set(space) <= names
    assert all(spec["type"] in ("int", "float", "categorical") for spec in space.values())
