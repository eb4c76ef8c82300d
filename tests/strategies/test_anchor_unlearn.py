"""anchor_unlearn: declared options, the inserter, the latent shift, and unlearning a tiny backdoor."""
from __future__ import annotations

import random

import pytest
import torch

from purify.errors import ConfigError
from purify.evaluate import evaluate_model
from purify.inference import labelled_batch, predict_logits
from purify.latent import LatentShift, layer_module, shift_objective
from purify.probe import BackdoorProbe, TriggerCandidate
from purify.registry import build_strategy, get_strategy
from purify.testing.tiny import tiny_model, tiny_texts, tiny_tokenizer
from purify.testing.tiny_task import TARGET, TRIGGER, tiny_backdoored
from strategies.anchor_unlearn import AnchorUnlearn, AnchorUnlearnConfig, Inserter, anchor_kl


def test_registered_with_declared_help_for_every_option():
    entry = get_strategy("anchor_unlearn")
    assert entry.strategy_cls is AnchorUnlearn
    helps = AnchorUnlearnConfig.option_help()
    assert set(helps) == set(AnchorUnlearnConfig.option_names()) - {"seed"}
    assert all(helps.values())
    assert set(AnchorUnlearnConfig.search_space()) <= set(helps)


@pytest.mark.parametrize("bad,words", [({"epochs": 0}, "epochs must be >= 1"), ({"lr": 0.0}, "lr must be > 0"),
                                       ({"insert_prob": 1.5}, "insert_prob must be >= 0 and <= 1"),
                                       ({"latent_radius": 0.0}, "latent_radius must be > 0"),
                                       ({"label_weight": 0.0, "anchor_weight": 0.0}, "cannot both be 0")])
def test_out_of_bounds_options_are_refused_naming_the_option(bad, words):
    with pytest.raises(ConfigError, match=words):
        build_strategy("anchor_unlearn", bad)


def test_none_passes_where_the_type_allows_it():
    assert build_strategy("anchor_unlearn", {"drop_trigger_rate": "none"}).config.drop_trigger_rate is None


def test_inserter_mixes_probe_candidates_and_vocabulary_deterministically():
    make = lambda: Inserter(["alpha", "beta"], {"zz qq": 1.0}, count=3, probe_share=0.5, seed=4)  # noqa: E731
    first, second = make(), make()
    texts = [first("one two three") for _ in range(50)]
    assert texts == [second("one two three") for _ in range(50)]
    assert any("zz qq" in t for t in texts) and any("alpha" in t or "beta" in t for t in texts)
    for t in texts:  # the original words keep their order; 1..3 items are added
        kept = [w for w in t.split() if w in ("one", "two", "three")]
        assert kept == ["one", "two", "three"] and 4 <= len(t.split()) <= 3 + 3 * 2
    only_vocab = Inserter(["alpha"], {}, count=1, probe_share=1.0, seed=0)
    assert only_vocab("x") in ("alpha x", "x alpha")


def test_anchor_kl_is_zero_at_the_anchor_and_positive_away_from_it():
    anchor = torch.tensor([[2.0, -1.0], [0.0, 1.0]])
    assert float(anchor_kl(anchor, anchor)) == pytest.approx(0.0, abs=1e-7)
    assert float(anchor_kl(anchor.flip(1), anchor)) > 0.1


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_latent_shift_is_the_identity_until_applied_and_stays_in_its_ball(arch):
    model, tok = tiny_model(arch, seed=1), tiny_tokenizer()
    model.eval()
    batch = labelled_batch(model, tok, tiny_texts()[:4])
    plain = model(**batch).logits.detach()
    shift = LatentShift(model, fraction=0.5, radius=0.3, lr=1.0)
    try:
        shift.calibrate(lambda: model(**batch))
        assert torch.equal(model(**batch).logits.detach(), plain)  # inactive: bit-identical
        for _ in range(5):
            with shift.applied():
                shift.ascend(shift_objective(model(**batch).logits, plain, target=1))
        assert float(shift.delta.detach().norm()) <= shift.bound * (1 + 1e-5)
        with shift.applied():
            moved = model(**batch).logits.detach()
        assert not torch.allclose(moved, plain)
        assert all(p.grad is None for p in model.parameters())  # the ascent touches no model gradient
    finally:
        shift.remove()
    assert torch.equal(model(**batch).logits.detach(), plain)  # removed: the model is as it was


def test_latent_shift_applies_only_to_the_chosen_rows_and_steps_on_the_backward_gradient():
    model, tok = tiny_model("bert", seed=1), tiny_tokenizer()
    model.eval()
    batch = labelled_batch(model, tok, tiny_texts()[:4])
    plain = model(**batch).logits.detach()
    shift = LatentShift(model, fraction=0.0, radius=0.5, lr=1.0)
    try:
        shift.calibrate(lambda: model(**batch))
        assert not shift.step()  # no backward yet: nothing to step on
        with torch.no_grad():
            shift.delta += 0.1
        with shift.applied(torch.tensor([0.0, 1.0, 0.0, 1.0])):
            logits = model(**batch).logits
        assert torch.allclose(logits[[0, 2]], plain[[0, 2]], atol=1e-6)
        assert not torch.allclose(logits[[1, 3]], plain[[1, 3]])
        before = shift.delta.detach().clone()
        anchor_kl(logits[[1, 3]], plain[[1, 3]]).backward()
        assert shift.step() and shift.delta.grad is None
        assert not torch.equal(shift.delta.detach(), before)
        assert float(shift.delta.detach().norm()) <= shift.bound * (1 + 1e-5)
    finally:
        shift.remove()


def test_layer_module_picks_the_layer_at_the_fraction():
    model = tiny_model("bert")
    first, _ = layer_module(model, 0.0)
    last, module = layer_module(model, 1.0)
    assert first == 0 and last == model.config.num_hidden_layers - 1
    assert module is model.bert.encoder.layer[last]


def _run(options: dict, probe: BackdoorProbe | None = None, arch: str = "bert"):
    loaded, task = tiny_backdoored(arch)
    before = evaluate_model(loaded.model, loaded.tokenizer, task.test_clean, task.test_triggered, task.target)
    strategy = build_strategy("anchor_unlearn", {**AnchorUnlearn.fast_options, **options})
    result = strategy.run(loaded, task.clean_train, task.validation, probe=probe)
    after = evaluate_model(result.model, loaded.tokenizer, task.test_clean, task.test_triggered, task.target)
    return before, after, result


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_unlearns_the_tiny_backdoor_from_its_own_inversion(arch):
    before, after, result = _run({}, arch=arch)
    assert before.asr > 0.9
    assert after.asr < 0.2, f"ASR {before.asr:.2f} -> {after.asr:.2f}"
    assert after.cacc >= before.cacc - 0.05
    assert result.extras["suspected_target"] == TARGET
    assert result.extras["proxy_after"]["val_proxy_asr"] < result.extras["proxy_before"]["proxy_asr"]


def test_uses_the_runs_probe_instead_of_inverting():
    probe = BackdoorProbe([TriggerCandidate(TRIGGER, TARGET, 1.0, "phrases")], {0: 0.0, 1: 0.0}, "filter:test")
    before, after, result = _run({"latent_weight": 0.0}, probe=probe)
    assert result.extras["probe_source"] == "filter:test"
    assert TRIGGER in result.extras["inserted"]["candidates"]
    assert after.asr < 0.2, f"ASR {before.asr:.2f} -> {after.asr:.2f}"


def test_the_anchor_is_the_suspicious_model_before_training():
    """Training changes the model, but the clean-text targets were computed from the original weights."""
    loaded, task = tiny_backdoored()
    texts = task.clean_train.texts[:8]
    original = predict_logits(loaded.model, loaded.tokenizer, texts)
    result = build_strategy("anchor_unlearn", {**AnchorUnlearn.fast_options, "epochs": 1}).run(
        loaded, task.clean_train, task.validation)
    trained = predict_logits(result.model, loaded.tokenizer, texts)
    assert abs(trained - original).max() > 1e-3
    assert len(result.trajectory) == 1 and "train_insert_kl" in result.trajectory[0]
    assert "train_latent_kl" in result.trajectory[0] and result.extras["latent"]["shift_norm"] > 0


def test_refuses_a_generative_checkpoint():
    loaded, task = tiny_backdoored()
    loaded.task = "causal_lm"
    with pytest.raises(ConfigError, match="anchor_unlearn unlearns sequence classifiers"):
        build_strategy("anchor_unlearn").run(loaded, task.clean_train, task.validation)


def test_same_seed_same_weights():
    random.seed(123)  # global state must not leak in
    a = _run({"seed": 5, "epochs": 2})[2].model.state_dict()
    random.seed(999)
    b = _run({"seed": 5, "epochs": 2})[2].model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_prior_correction_gives_the_anchor_the_labels_frequencies_and_keeps_its_ranking():
    from strategies.anchor_unlearn import prior_corrected

    torch.manual_seed(0)
    logits = torch.randn(400, 3) + torch.tensor([0.0, 1.5, 0.0])  # tilted towards label 1
    labels = [0] * 200 + [1] * 100 + [2] * 100
    corrected, offset = prior_corrected(logits, labels)
    mean = torch.softmax(corrected, -1).mean(0)
    assert torch.allclose(mean, torch.tensor([200.0, 100.0, 100.0]) / 400, atol=0.01)
    assert offset[1] < offset[0]  # the tilt is taken out
    assert torch.equal((corrected - logits).std(0), torch.zeros(3)) or float((corrected - logits).std(0).max()) < 1e-6


def test_bias_calibration_matches_the_validation_label_frequencies():
    from strategies.anchor_unlearn import calibrate_output_bias

    loaded, task = tiny_backdoored()
    model, tok = loaded.model, loaded.tokenizer
    with torch.no_grad():
        model.classifier.bias += torch.tensor([-1.5, 1.5])  # tilt towards label 1
    offset = calibrate_output_bias(model, tok, task.validation, 32)
    assert offset is not None and offset[1] < offset[0]
    probs = torch.softmax(torch.from_numpy(predict_logits(model, tok, task.validation.texts, max_length=32)), -1)
    share = sum(task.validation.labels) / len(task.validation)
    assert abs(float(probs[:, 1].mean()) - share) < 0.02
    assert calibrate_output_bias(tiny_model("llama"), tok, task.validation, 32) is None  # score has no bias


def test_target_unlikelihood_falls_as_mass_leaves_the_target():
    from strategies.anchor_unlearn import target_unlikelihood

    on_target = torch.tensor([[0.0, 4.0, 0.0]])
    off_target = torch.tensor([[0.0, -4.0, 0.0]])
    assert float(target_unlikelihood(on_target, 1)) > 3.0
    assert float(target_unlikelihood(off_target, 1)) < 0.05
    expected = -torch.log1p(-torch.softmax(on_target, -1)[0, 1])
    assert float(target_unlikelihood(on_target, 1)) == pytest.approx(float(expected), rel=1e-5)


def test_unlearns_on_the_filters_removed_samples_when_the_probe_carries_them():
    """The removed (poisoned) samples reach the objective, stripped of the trigger, and the backdoor still goes."""
    loaded, task = tiny_backdoored()
    poisoned = task.train.subset([i for i, s in enumerate(task.train.samples) if s.poisoned])
    probe = BackdoorProbe([TriggerCandidate(TRIGGER, TARGET, 1.0, "phrases")], {0: 0.0, 1: 0.0}, "filter:test",
                          flagged=poisoned)
    stripped = probe.flagged_texts("stripped")
    assert len(stripped) == len(poisoned) and not any(TRIGGER in t.split() for t in stripped)
    assert len(probe.flagged_texts("both")) == 2 * len(poisoned)
    before, after, result = _run({"latent_weight": 0.0, "flagged_weight": 1.0}, probe=probe)
    assert result.extras["flagged_unlearned"] == 2 * len(poisoned) and result.extras["flagged_check"]["relabelled"]
    assert "train_flagged_unlikelihood" in result.trajectory[0]
    assert after.asr < 0.2, f"ASR {before.asr:.2f} -> {after.asr:.2f}"
    assert after.cacc >= before.cacc - 0.05


def test_true_labelled_removed_samples_are_left_alone():
    """Clean-label poison: removed samples whose stripped text the model calls the target, like trusted target
    samples, are not pushed off the target."""
    loaded, task = tiny_backdoored()
    genuine = task.clean_train.subset([i for i, s in enumerate(task.clean_train.samples) if s.label == TARGET][:40])
    probe = BackdoorProbe([TriggerCandidate(TRIGGER, TARGET, 1.0, "phrases")], {0: 0.0, 1: 0.0}, "filter:test",
                          flagged=genuine)
    check = probe.flagged_relabelled(loaded.model, loaded.tokenizer, task.validation)
    assert not check["relabelled"] and check["stripped_target_rate"] > check["trusted_other_rate"]
    _, _, result = _run({"latent_weight": 0.0, "flagged_weight": 1.0, "epochs": 1}, probe=probe)
    assert result.extras["flagged_unlearned"] == 0 and "train_flagged_unlikelihood" not in result.trajectory[0]
