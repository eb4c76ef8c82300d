"""The shared pruning engine: the informative walk, and the backdoor objective's proxy guard."""
from __future__ import annotations

import pytest
import torch

from purify.backdoor_signal import backdoor_scores, build_signal, clean_target_rate
from purify.heads import HeadGates
from purify.prune_engine import MaskEvaluator, ProxyGuard, PruneConfig, prune_by_scores
from purify.pruning import PruneContext
from purify.testing.tiny_task import TRIGGER, tiny_backdoored

SHAPE = (3, 4)
CARRIERS = {(2, 1), (1, 3)}  # the heads the synthetic backdoor lives in


def accuracy(mask: torch.Tensor) -> float:
    """Clean accuracy falls by 0.01 per pruned head, and by 0.2 when head (0, 0) goes."""
    return 0.9 - 0.01 * float((mask == 0).sum()) - (0.2 if mask[0, 0] == 0 else 0.0)


def proxy(mask: torch.Tensor) -> float:
    """The proxy ASR falls by 0.45 for each carrier head pruned, from 0.95."""
    return 0.95 - 0.45 * sum(1 for lh in CARRIERS if mask[lh] == 0)


def test_backdoor_walk_keeps_only_steps_that_lower_the_proxy() -> None:
    scores = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0))
    config = PruneConfig(step=1, max_acc_drop=0.05, max_prune_fraction=0.5)
    outcome = prune_by_scores(accuracy, scores, config, guard=ProxyGuard(proxy, stop_at=0.07, patience=20))
    pruned = {tuple(lh) for lh in (outcome.mask == 0).nonzero().tolist()}
    assert pruned == CARRIERS  # every other step was rolled back
    assert outcome.baseline_proxy == pytest.approx(0.95) and outcome.final_proxy == pytest.approx(0.05)
    assert outcome.stop_reason == "proxy at the clean base rate"
    assert any(r["action"] == "reject" for r in outcome.trajectory)
    assert all("proxy_asr" in r for r in outcome.trajectory if r["action"] in ("start", "prune"))


def test_backdoor_walk_stops_after_patience_and_respects_the_guard() -> None:
    # the carriers come last: the walk gives up after two fruitless steps
    scores = torch.zeros(SHAPE)
    for lh in CARRIERS:
        scores[lh] = 1.0
    config = PruneConfig(step=1, max_acc_drop=0.05, max_prune_fraction=0.5)
    outcome = prune_by_scores(accuracy, scores, config, guard=ProxyGuard(proxy, stop_at=0.07, patience=2))
    assert outcome.stop_reason == "patience" and int((outcome.mask == 0).sum()) == 0
    assert outcome.final_proxy == pytest.approx(0.95)
    # head (0, 0) carries the backdoor too, but closing it breaks the accuracy guard: it is never kept
    carriers = CARRIERS | {(0, 0)}
    outcome = prune_by_scores(accuracy, torch.rand(SHAPE, generator=torch.Generator().manual_seed(1)), config,
                              guard=ProxyGuard(lambda m: 0.95 - 0.3 * sum(1 for lh in carriers if m[lh] == 0),
                                               stop_at=0.0, patience=20))
    assert outcome.mask[0, 0] == 1 and outcome.final_accuracy >= outcome.baseline_accuracy - 0.05


def test_informative_walk_ignores_the_proxy() -> None:
    scores = torch.arange(12, dtype=torch.float32).reshape(SHAPE)
    scores[0, 0] = -1.0  # pruned first: trips the guard at once
    config = PruneConfig(step=2, max_acc_drop=0.05, max_prune_fraction=0.5)
    outcome = prune_by_scores(accuracy, scores, config)
    # the first step trips the guard; both heads come back, highest score first, and the walk stops there
    assert outcome.baseline_proxy is None and int((outcome.mask == 0).sum()) == 0
    assert [r["heads"] for r in outcome.trajectory if r["action"] == "restore"] == [[[0, 1]], [[0, 0]]]
    assert outcome.final_accuracy == pytest.approx(0.9)


def test_backdoor_scores_put_supporting_heads_first() -> None:
    support = torch.tensor([[0.5, -0.2], [2.0, 0.0]])
    clean = torch.tensor([[1.0, 1.0], [1.0, 0.1]])
    scores = backdoor_scores(support, clean)
    assert scores[1, 0] < scores[0, 0] < 0 <= scores[1, 1] < scores[0, 1]


def test_signal_from_the_probe_measures_the_trigger_on_a_tiny_model() -> None:
    loaded, task = tiny_backdoored("bert")
    config = PruneConfig(seed=0, proxy_samples=40)
    with HeadGates(loaded.model) as gates:
        ctx = PruneContext.build(loaded, gates, task.clean_train, task.validation, config)
        try:
            assert ctx.backdoor and ctx.signal is not None and ctx.proxy is not None
            assert ctx.signal.kind == "triggers" and ctx.signal.target == task.target
            assert TRIGGER in ctx.signal.words
            assert len(ctx.signal.probe_data) <= 40 and set(ctx.signal.probe_data.labels) == {task.target}
            full = torch.ones(gates.shape)
            assert ctx.proxy(full) > 0.8  # the tiny model obeys its trigger
            assert clean_target_rate(loaded.model, loaded.tokenizer, ctx.signal) < 0.2
            support = ctx.support(16)
            assert support.shape == gates.shape and torch.isfinite(support).all()
            guard = ctx.guard(config)
            assert guard is not None and guard.stop_at < 0.3
        finally:
            ctx.close()


def test_latent_signal_stands_in_when_nothing_was_found() -> None:
    loaded, task = tiny_backdoored("bert")
    before = [p.detach().clone() for p in loaded.model.parameters()]
    logits = loaded.model(**loaded.tokenizer(task.validation.texts[:4], return_tensors="pt", padding=True)).logits
    signal = build_signal(loaded.model, loaded.tokenizer, None, task.clean_train, task.validation, samples=32, seed=0)
    assert signal is not None and signal.kind == "latent" and signal.shift is not None
    try:
        with HeadGates(loaded.model) as gates:
            plain = MaskEvaluator(gates, loaded.tokenizer, signal.probe_data)
            shifted = MaskEvaluator(gates, loaded.tokenizer, signal.probe_data, context=signal.applied)
            full = torch.ones(gates.shape)
            assert shifted(full) > plain(full)  # the shift sends clean samples to its label
    finally:
        signal.close()
    # the model is untouched: same weights, and with the shift's hook gone the same outputs
    assert all(torch.equal(a, b) for a, b in zip(before, loaded.model.parameters()))
    again = loaded.model(**loaded.tokenizer(task.validation.texts[:4], return_tensors="pt", padding=True)).logits
    assert torch.equal(logits, again)


def test_objective_is_validated() -> None:
    from purify.errors import ConfigError

    with pytest.raises(ConfigError, match="objective"):
        PruneConfig(objective="everything").validate()


def test_fine_pruning_recovery_keeps_the_pruned_heads_closed() -> None:
    from purify.export import apply_pruning
    from purify.registry import build_strategy

    loaded, task = tiny_backdoored("bert")
    options = {"objective": "informative", "max_acc_drop": 0.5, "step": 2, "recover_epochs": 1,
               "recover_samples": 64, "val_samples": 64, "score_samples": 48, "batch_size": 16}
    result = build_strategy("gradient_prune", options).run(loaded, task.clean_train, task.validation)
    recovery = result.extras["recovery"]
    assert recovery["epochs"] == 1 and recovery["samples"] == 64 and len(recovery["history"]) == 1
    assert result.final_val_accuracy == recovery["val_accuracy"]
    pruned = result.pruned_heads
    assert pruned  # the loose guard let it prune
    with HeadGates(result.model) as gates:  # the applied model gives the gated model's outputs
        batch = loaded.tokenizer(task.validation.texts[:8], return_tensors="pt", padding=True)
        gates.set(result.mask)
        gated = result.model(**batch).logits
    apply_pruning(result.model, pruned)
    assert torch.allclose(result.model(**batch).logits, gated, atol=1e-5)


def test_rescoring_follows_the_backdoor_as_it_reroutes() -> None:
    # (1, 3) looks harmless until (2, 1) is gone; a static ranking gives up first, a re-ranking walk finds it
    scores = torch.arange(12, dtype=torch.float32).reshape(SHAPE)
    scores[2, 1], scores[1, 3] = -1.0, 20.0
    config = PruneConfig(step=1, max_acc_drop=0.05, max_prune_fraction=0.5)

    def rescore(mask: torch.Tensor) -> torch.Tensor:
        fresh = scores.clone()
        if mask[2, 1] == 0:
            fresh[1, 3] = -5.0
        return fresh

    static = prune_by_scores(accuracy, scores, config, guard=ProxyGuard(proxy, stop_at=0.07, patience=2))
    assert {tuple(lh) for lh in (static.mask == 0).nonzero().tolist()} == {(2, 1)}
    walk = prune_by_scores(accuracy, scores, config,
                           guard=ProxyGuard(proxy, stop_at=0.07, patience=2, rescore=rescore))
    assert {tuple(lh) for lh in (walk.mask == 0).nonzero().tolist()} == CARRIERS
    assert walk.stop_reason == "proxy at the clean base rate"


def test_renew_takes_the_answers_to_keep_from_the_changed_weights() -> None:
    loaded, task = tiny_backdoored("bert")
    config = PruneConfig(seed=0, proxy_samples=32, flip_samples=64)
    with HeadGates(loaded.model) as gates:
        ctx = PruneContext.build(loaded, gates, task.clean_train, task.validation, config)
        try:
            assert ctx.agreement is not None
            full = torch.ones(gates.shape)
            assert ctx.agreement(full) == 1.0
            with torch.no_grad():  # a strategy's own fine-tune, in miniature: flip the classifier's answers
                loaded.model.classifier.weight.neg_()
                loaded.model.classifier.bias.neg_()
            assert ctx.agreement.fresh()(full) < 0.5
            ctx.renew(config)
            assert ctx.agreement(full) == 1.0
        finally:
            ctx.close()


def test_a_probe_that_confirmed_nothing_gets_the_latent_stand_in() -> None:
    from purify.probe import BackdoorProbe, TriggerCandidate

    loaded, task = tiny_backdoored("bert")
    weak = BackdoorProbe([TriggerCandidate("movie", task.target, 0.3, "inversion")], {0: 0.1, 1: 0.1}, "test")
    assert not weak.found and weak.strongest()  # a candidate, but no trigger
    signal = build_signal(loaded.model, loaded.tokenizer, weak, task.clean_train, task.validation, samples=16, seed=0)
    try:
        assert signal is not None and signal.kind == "latent" and signal.target == task.target
    finally:
        assert signal is not None
        signal.close()
