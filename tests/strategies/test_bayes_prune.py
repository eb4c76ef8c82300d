"""bayes_prune: a real posterior over head gates (inclusion, uncertainty), fitted by SVI, drives the shared engine."""
import json

import pyro
import pytest
import torch

from purify.backdoor_signal import build_signal
from purify.errors import ConfigError
from purify.heads import HeadGates
from purify.pruning import PruneContext
from purify.testing.tiny_task import tiny_backdoored
from purify.prune_engine import order_to_scores
from strategies.bayes_prune import BayesPrune, BayesPruneConfig, posterior_order

FAST = BayesPrune.fast_options


def _posterior(arch="bert", zero_head=None, **options):
    loaded, task = tiny_backdoored(arch)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    with HeadGates(loaded.model) as gates:
        if zero_head is not None:
            layer, head = zero_head
            proj = dict(loaded.model.named_modules())[gates.blocks[layer].out_proj_name]
            d = gates.head_dim
            with torch.no_grad():
                proj.weight[:, head * d:(head + 1) * d] = 0.0
            before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
        stats = BayesPrune(BayesPruneConfig(**{**FAST, **options})).fit_posterior(loaded, gates, task.clean_train)
    return stats, loaded, before


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_posterior_inclusion_is_a_probability_with_positive_uncertainty(arch):
    stats, loaded, before = _posterior(arch)
    inclusion, uncertainty = stats["inclusion"], stats["uncertainty"]
    assert inclusion.shape == uncertainty.shape == (2, 4)
    assert ((inclusion >= 0) & (inclusion <= 1)).all()
    assert torch.isfinite(uncertainty).all() and (uncertainty > 0).all()
    assert (stats["scale"] > 0).all()
    # the transformer is untouched: weights equal, gradients still enabled, no grad left behind
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad and p.grad is None for p in loaded.model.parameters())


def test_uncertainty_matches_the_fitted_posterior():
    """The reported std is that of sigmoid(z / T) under the fitted Normal, not a constant."""
    stats, _, _ = _posterior(num_posterior_samples=4000)
    draws = torch.distributions.Normal(stats["loc"], stats["scale"]).sample((20000,))
    gate = torch.sigmoid(draws / BayesPruneConfig().temperature)
    torch.testing.assert_close(stats["uncertainty"], gate.std(dim=0), atol=0.02, rtol=0.1)
    torch.testing.assert_close(stats["inclusion"], (draws > 0).double().mean(0), atol=0.04, rtol=0.0)
    assert float(stats["uncertainty"].max() - stats["uncertainty"].min()) > 0.01  # heads differ


def test_useless_head_gets_lower_inclusion_than_average():
    stats, _, _ = _posterior(zero_head=(0, 1), svi_samples=400, sparsity_weight=0.1)
    inclusion = stats["inclusion"]
    assert float(inclusion[0, 1]) < float(inclusion.mean())
    assert float(inclusion[0, 1]) == float(inclusion.min())


def test_same_seed_same_posterior():
    a, _, _ = _posterior(seed=4)
    b, _, _ = _posterior(seed=4)
    c, _, _ = _posterior(seed=5)
    assert torch.equal(a["inclusion"], b["inclusion"]) and torch.equal(a["uncertainty"], b["uncertainty"])
    assert not torch.equal(a["loc"], c["loc"])


def test_callers_pyro_parameters_survive():
    pyro.clear_param_store()
    pyro.param("mine", torch.tensor([1.5]))
    _posterior()
    store = pyro.get_param_store()
    assert list(store.keys()) == ["mine"] and float(store["mine"].detach()) == 1.5
    pyro.clear_param_store()


def test_order_is_inclusion_then_uncertainty():
    inclusion = torch.tensor([[1.0, 0.2, 1.0], [0.5, 1.0, 0.2]])
    uncertainty = torch.tensor([[0.01, 0.3, 0.05], [0.2, 0.02, 0.4]])
    order = posterior_order(inclusion, uncertainty)
    assert order == [(1, 2), (0, 1), (1, 0), (0, 2), (1, 1), (0, 0)]
    scores = order_to_scores(order, (2, 3))
    assert [float(scores[layer, h]) for layer, h in order] == sorted(float(scores[layer, h]) for layer, h in order)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_run_prunes_in_posterior_order_and_reports(arch):
    loaded, task = tiny_backdoored(arch)
    strategy = BayesPrune(BayesPruneConfig(**FAST, objective="informative"))  # the paper's order
    result = strategy.run(loaded, task.clean_train, task.validation)
    extras = result.extras
    json.dumps(extras)
    inclusion = torch.tensor(extras["posterior_inclusion"])
    assert inclusion.shape == result.mask.shape
    assert len(extras["posterior_uncertainty"]) == 2 and len(extras["svi_loss_curve"]) > 1
    order = [tuple(x) for x in extras["prune_order"]]
    pruned = [(layer, h) for layer, hs in result.pruned_heads.items() for h in hs]
    first = {(layer, h) for layer, h in order[:len(pruned) + strategy.config.step]}
    assert set(pruned) <= first  # pruned heads come from the front of the posterior order
    assert result.final_val_accuracy >= result.baseline_val_accuracy - strategy.config.max_acc_drop - 1e-9


def test_config_validation_and_search_space():
    for bad in ({"svi_steps": 0}, {"lr": 0.0}, {"prior_inclusion": 1.0}, {"temperature": 0.0},
                {"sparsity_weight": -1.0}, {"num_posterior_samples": 1}, {"svi_batch_size": 0}, {"probe_weight": -1.0}):
        with pytest.raises(ConfigError):
            BayesPruneConfig(**bad).validate()
    BayesPruneConfig().validate()
    assert set(BayesPruneConfig.search_space()) <= set(BayesPruneConfig.__dataclass_fields__)


def test_probe_term_closes_the_gates_that_carry_the_trigger():
    """The probe likelihood pushes down the gate of the head with the most backdoor support and up the one with the
    least, relative to the clean-only posterior (same seed, same clean minibatches)."""
    loaded, task = tiny_backdoored()
    config = BayesPruneConfig(**FAST)
    with HeadGates(loaded.model) as gates:
        ctx = PruneContext.build(loaded, gates, task.clean_train, task.validation, config)
        try:
            assert ctx.signal is not None and ctx.signal.kind == "triggers"
            support = ctx.support(config.batch_size).flatten()
            without = BayesPrune(config).fit_posterior(loaded, gates, task.clean_train)
            with_probe = BayesPrune(config).fit_posterior(loaded, gates, task.clean_train, ctx.signal)
            off = BayesPrune(BayesPruneConfig(**FAST, probe_weight=0.0)).fit_posterior(
                loaded, gates, task.clean_train, ctx.signal)
        finally:
            ctx.close()
    most, least = int(support.argmax()), int(support.argmin())
    loc, loc0 = with_probe["loc"].flatten(), without["loc"].flatten()
    assert float(loc[most]) < float(loc0[most]) and float(loc[least]) > float(loc0[least])
    assert float(with_probe["inclusion"].flatten()[most]) < float(without["inclusion"].flatten()[most])
    assert torch.equal(off["loc"], without["loc"])  # probe_weight 0: no probe term at all


def test_signal_carries_the_score_texts_own_labels():
    """Without a probe the signal is a latent shift over clean training texts: their labels are their own, and the
    probe term observes them under the shift (whose hook the signal takes off again)."""
    loaded, task = tiny_backdoored()
    hooks = sum(len(m._forward_pre_hooks) for m in loaded.model.modules())
    with HeadGates(loaded.model) as gates:
        signal = build_signal(loaded.model, loaded.tokenizer, None, task.clean_train, task.validation, samples=64)
        assert signal is not None and signal.kind == "latent"
        try:
            own = dict(zip(task.clean_train.texts, task.clean_train.labels))
            relabelled = signal.score_data_relabelled()
            assert len(relabelled) == len(signal.score_data) > 0 and relabelled.texts == signal.score_data.texts
            assert relabelled.labels == [own[t] for t in relabelled.texts]
            assert signal.target not in relabelled.labels
            shifted = BayesPrune(BayesPruneConfig(**FAST)).fit_posterior(loaded, gates, task.clean_train, signal)
            clean = BayesPrune(BayesPruneConfig(**FAST)).fit_posterior(loaded, gates, task.clean_train)
        finally:
            signal.close()
    assert ((shifted["inclusion"] >= 0) & (shifted["inclusion"] <= 1)).all()
    assert not torch.equal(shifted["loc"], clean["loc"])
    assert sum(len(m._forward_pre_hooks) for m in loaded.model.modules()) == hooks


def test_backdoor_run_is_deterministic_and_records_the_proxy():
    def run(seed):
        loaded, task = tiny_backdoored()
        return BayesPrune(BayesPruneConfig(**FAST, seed=seed)).run(loaded, task.clean_train, task.validation)

    a, b = run(2), run(2)
    assert torch.equal(a.mask, b.mask) and a.extras["posterior_inclusion"] == b.extras["posterior_inclusion"]
    extras = a.extras
    json.dumps(extras)
    assert extras["objective"] == "backdoor" and extras["probe_term"]["weight"] == 1.0
    assert extras["probe_term"]["samples"] == extras["signal"]["score_samples"] > 0
    assert extras["proxy_after"] <= extras["proxy_before"] and extras["stop_reason"]
    assert a.trajectory[0]["proxy_asr"] == extras["proxy_before"]
    assert a.final_val_accuracy >= a.baseline_val_accuracy - BayesPruneConfig().max_acc_drop - 1e-9
