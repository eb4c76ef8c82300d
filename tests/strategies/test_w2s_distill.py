"""w2s_distill: the pooled feature, the three loss terms, per-sample pairing, and unlearning."""
from __future__ import annotations

import json
import dataclasses

import pytest
import torch
from torch import nn

from purify.checkpoint import LoadedModel, load_checkpoint
from purify.errors import CheckpointError, ConfigError
from purify.evaluate import evaluate_model
from purify.inference import MAX_LENGTH, labelled_batch
from purify.losses import kd_loss
from purify.registry import build_strategy, get_strategy
from purify.testing.tiny import save_tiny_checkpoint, tiny_model, tiny_texts, tiny_tokenizer
from purify.testing.tiny_task import tiny_backdoored
from strategies.w2s_distill import (
    Augmenter,
    FeatureTap,
    W2SDistill,
    W2SDistillConfig,
    alignment_loss,
    distill_losses,
    kept_epoch,
    own_targets,
    pool_hidden,
    pooled_outputs,
)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PURIFY_CACHE", str(tmp_path / "cache"))


# -- config --------------------------------------------------------------------------------------------------

def test_registered_with_config_and_search_space():
    entry = get_strategy("w2s_distill")
    assert entry.strategy_cls is W2SDistill and entry.config_cls is W2SDistillConfig
    fields = {f.name for f in dataclasses.fields(W2SDistillConfig)}
    space = W2SDistillConfig.search_space()
    assert space and set(space) <= fields
    for spec in space.values():
        assert spec["type"] in ("int", "float", "categorical")
    assert W2SDistillConfig().temperature == 2.0


@pytest.mark.parametrize("bad", [{"surgery": "pcgrad"}, {"temperature": 0}, {"epochs": 0}, {"beta": -1},
                                 {"alpha": 0, "beta": 0, "gamma": 0}, {"lora_dropout": 1.0}, {"patience": 0},
                                 {"grad_accum": 0}, {"teacher": ""}, {"select_by": "asr"},
                                 {"perturbed_target": "oracle"}])
def test_invalid_options_are_refused(bad):
    with pytest.raises(ConfigError):
        W2SDistillConfig(**bad).validate()


def test_options_parse_from_strings():
    strategy = build_strategy("w2s_distill", {"surgery": "safegrad", "rho": "0.5", "grad_accum": "2",
                                              "patience": "2"})
    assert strategy.config.surgery == "safegrad" and strategy.config.rho == 0.5
    assert strategy.config.grad_accum == 2 and strategy.config.patience == 2


# -- pooled features -----------------------------------------------------------------------------------------

def test_pool_hidden_first_and_last_real_token():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool_hidden(hidden, right, last_token=True).flatten().tolist() == [1.0, 7.0]
    assert pool_hidden(hidden, left, last_token=True).flatten().tolist() == [3.0, 7.0]
    assert pool_hidden(hidden, right, last_token=False).flatten().tolist() == [0.0, 4.0]
    pooled = torch.randn(2, 3)
    assert torch.equal(pool_hidden(pooled, right, last_token=True), pooled)


def test_bert_pooled_feature_is_the_pooler_output():
    model, tok = tiny_model("bert"), tiny_tokenizer()
    texts = tiny_texts()
    logits, feats = pooled_outputs(model, tok, texts)
    with torch.no_grad():
        batch = labelled_batch(model, tok, texts)
        expected = model.bert(**batch).pooler_output
    assert torch.allclose(feats, expected, atol=1e-6)
    assert torch.allclose(logits, model.classifier(expected), atol=1e-5)


def test_decoder_pooled_feature_is_the_last_real_token():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    texts = ["good", "the movie was really very good fun"]  # different lengths: padding matters
    logits, feats = pooled_outputs(model, tok, texts)
    with torch.no_grad():
        for i, text in enumerate(texts):
            single = labelled_batch(model, tok, [text])
            hidden = model.model(**single).last_hidden_state[0, -1]
            assert torch.allclose(feats[i], hidden, atol=1e-5)
            assert torch.allclose(logits[i], model(**single).logits[0], atol=1e-5)


def test_feature_tap_follows_the_model_forward():
    model, tok = tiny_model("bert"), tiny_tokenizer()
    tap = FeatureTap(model.classifier, last_token=False)
    batch = labelled_batch(model, tok, tiny_texts()[:3])
    with torch.no_grad():
        model(**batch)
    assert tap.pooled(batch["attention_mask"]).shape == (3, model.config.hidden_size)
    tap.remove()
    assert not model.classifier._forward_pre_hooks


# -- loss terms ----------------------------------------------------------------------------------------------

def test_loss_terms_are_finite_and_behave():
    torch.manual_seed(0)
    s_logits, t_logits = torch.randn(6, 2), torch.randn(6, 2)
    s_feats, t_feats = torch.randn(6, 8), torch.randn(6, 5)
    projector = nn.Linear(8, 5)
    labels = torch.randint(0, 2, (6,))
    losses = distill_losses(s_logits, s_feats, labels, t_logits, t_feats, projector, temperature=2.0)
    assert set(losses) == {"ce", "kd", "feat"}
    assert all(torch.isfinite(v) and v >= 0 for v in losses.values())
    assert float(kd_loss(t_logits, t_logits, 2.0)) == pytest.approx(0.0, abs=1e-6)
    # Hinton scaling: T^2 * KL at temperature T
    p_t, log_p_s = torch.softmax(t_logits / 3, -1), torch.log_softmax(s_logits / 3, -1)
    manual = (p_t * (p_t.log() - log_p_s)).sum(-1).mean() * 9
    assert float(kd_loss(s_logits, t_logits, 3.0)) == pytest.approx(float(manual), rel=1e-5)
    only_ce = distill_losses(s_logits, None, labels, None, None, None, 2.0)
    assert set(only_ce) == {"ce"}


@pytest.mark.parametrize("keeps_label", [True, False])
def test_augmenter_inserts_words_and_keeps_or_drops_the_label(keeps_label):
    cfg = W2SDistillConfig(augment_prob=0.5, augment_words=2, inverted_share=1.0, augment_keeps_label=keeps_label)
    texts = [f"plain text number {i}" for i in range(40)]
    augmenter = Augmenter(cfg, ["zz"], {"cf": 1.0})
    out, perturbed = augmenter(texts)
    assert perturbed.tolist() == [o != t for o, t in zip(out, texts)]
    assert 0 < int(perturbed.sum()) < len(texts)
    assert all(o.split().count("cf") in (1, 2) for o, p in zip(out, perturbed) if p)  # only the inverted word
    labelled = augmenter.labelled(perturbed)
    assert labelled is None if keeps_label else labelled.tolist() == (~perturbed).tolist()
    # the cross-entropy term counts exactly the labelled samples
    logits, labels = torch.zeros(len(texts), 2), torch.zeros(len(texts), dtype=torch.long)
    ce = distill_losses(logits, None, labels, None, None, None, 2.0, labelled)["ce"]
    share = 1.0 if keeps_label else float(labelled.float().mean())
    assert float(ce) == pytest.approx(share * float(torch.log(torch.tensor(2.0))))


def test_alignment_is_per_sample():
    """Row i of the student is compared with row i of the teacher, never broadcast against other samples."""
    torch.manual_seed(0)
    projector = nn.Linear(8, 5)
    s_feats = torch.randn(10, 8)
    projector.requires_grad_(False)
    with torch.no_grad():
        t_feats = projector(s_feats)
    assert float(alignment_loss(s_feats, t_feats, projector)) == pytest.approx(0.0, abs=1e-10)
    shuffled = t_feats[torch.roll(torch.arange(10), 1)]
    assert float(alignment_loss(s_feats, shuffled, projector)) > 0.1
    # each sample's share: mean over samples of that sample's mean squared distance
    t_noisy = t_feats + torch.arange(10, dtype=torch.float).unsqueeze(1)
    expected = (torch.arange(10, dtype=torch.float) ** 2).mean()
    assert float(alignment_loss(s_feats, t_noisy, projector)) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError):
        alignment_loss(s_feats, t_feats[:9], projector)


def test_shuffled_teacher_raises_alignment_loss_on_real_features():
    """A projector fitted on a real student/teacher pair aligns matched samples far better than shuffled ones."""
    import teachers

    loaded, task = tiny_backdoored()
    data = task.clean_train
    teacher = teachers.train("tiny", data, task.validation, seed=0)
    _, s_feats = pooled_outputs(loaded.model, loaded.tokenizer, data.texts)
    _, t_feats = pooled_outputs(teacher.model, teacher.tokenizer, data.texts)
    torch.manual_seed(0)
    projector = nn.Linear(s_feats.shape[1], t_feats.shape[1])
    optimizer = torch.optim.Adam(projector.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        alignment_loss(s_feats, t_feats, projector).backward()
        optimizer.step()
    with torch.no_grad():
        matched = float(alignment_loss(s_feats, t_feats, projector))
        shuffled = float(alignment_loss(s_feats, t_feats[torch.randperm(len(data), generator=torch.Generator()
                                                                          .manual_seed(1))], projector))
    assert shuffled > 2 * matched


def test_precomputed_teacher_rows_match_a_direct_forward():
    """The per-sample teacher targets looked up by row equal the teacher's output on exactly those texts."""
    model, tok = tiny_model("bert", seed=2), tiny_tokenizer()
    texts = tiny_texts()
    logits, feats = pooled_outputs(model, tok, texts, batch_size=3)
    rows = [5, 0, 3]
    sub_logits, sub_feats = pooled_outputs(model, tok, [texts[i] for i in rows])
    assert torch.allclose(logits[rows], sub_logits, atol=1e-5)
    assert torch.allclose(feats[rows], sub_feats, atol=1e-5)


# -- the strategy --------------------------------------------------------------------------------------------

def _run(options: dict, arch: str = "bert"):
    loaded, task = tiny_backdoored(arch)
    strategy = build_strategy("w2s_distill", {**W2SDistill.fast_options, **options})
    result = strategy.run(loaded, task.clean_train, task.validation)
    return result, loaded, task


def test_result_is_an_ordinary_model_with_the_adapter_alongside():
    result, loaded, task = _run({})
    assert type(result.model).__name__ == "BertForSequenceClassification"
    assert not any("lora" in name for name, _ in result.model.named_parameters())
    adapter = result.files["lora_adapter"]
    config = json.loads(open(f"{adapter}/adapter_config.json").read())
    assert config["r"] == result.extras["lora"]["rank"]
    assert "classifier" in (config.get("modules_to_save") or [])
    assert result.extras["teacher"] == "tiny" and result.extras["teacher_val_accuracy"] > 0.9
    assert result.final_val_accuracy >= result.baseline_val_accuracy - 0.05
    assert sum(r["kept"] for r in result.trajectory) == 1
    assert result.extras["best_epoch"] == next(r["epoch"] for r in result.trajectory if r["kept"])
    json.dumps(result.summary())  # the report must be JSON-able


def test_kept_epoch_is_the_latest_or_the_lowest_inverted_flip():
    history = [{"epoch": 1, "val_inverted_flip": 0.2}, {"epoch": 2, "val_inverted_flip": 0.1},
               {"epoch": 3, "val_inverted_flip": 0.1}, {"epoch": 4, "val_inverted_flip": 0.05}]
    assert kept_epoch(history, [1, 2, 3], "accuracy") == 3
    assert kept_epoch(history, [1, 2, 3], "inverted_flip") == 3  # tie between 2 and 3: the latest
    assert kept_epoch(history, [1, 2, 4], "inverted_flip") == 4
    assert kept_epoch(history, [1, 2], "inverted_flip") == 2
    no_inversion = [{"epoch": e, "val_inverted_flip": None} for e in (1, 2, 3)]
    assert kept_epoch(no_inversion, [1, 2], "inverted_flip") == 2


def test_inverted_flip_selection_keeps_a_tolerated_epoch_with_the_lowest_flip():
    result, _, _ = _run({"select_by": "inverted_flip", "select_tolerance": 0.05, "epochs": 4})
    trajectory = result.trajectory
    assert all(r["val_inverted_flip"] is not None for r in trajectory)
    best = max(r["val_accuracy"] for r in trajectory)
    tolerated = [r for r in trajectory if r["val_accuracy"] >= best - 0.05]
    kept = next(r for r in trajectory if r["kept"])
    assert kept in tolerated
    assert kept["val_inverted_flip"] == min(r["val_inverted_flip"] for r in tolerated)


def test_self_target_replaces_exactly_the_perturbed_rows():
    """perturbed_target="self": a perturbed row's KD target is the student's own eval output on the original text."""
    loaded, task = tiny_backdoored()
    model, tok = loaded.model, loaded.tokenizer
    originals = task.clean_train.texts[:5]
    perturbed = torch.tensor([True, False, True, False, False])
    teacher_logits = torch.full((5, 2), 7.0)
    model.train()
    out = own_targets(model, tok, teacher_logits, originals, perturbed, MAX_LENGTH)
    assert model.training  # restored after the eval-mode pass
    own, _ = pooled_outputs(model, tok, [originals[0], originals[2]])
    assert torch.allclose(out[[0, 2]], own, atol=1e-5)
    assert torch.equal(out[[1, 3, 4]], teacher_logits[[1, 3, 4]])
    assert torch.equal(teacher_logits, torch.full((5, 2), 7.0))  # the teacher's tensor is left alone


@pytest.mark.parametrize("target", ["self", "original"])
def test_perturbed_targets_unlearn_the_tiny_backdoor(target):
    """"self": the student's own output on the clean text; "original": the suspicious model's, cached once."""
    loaded, task = tiny_backdoored()
    before = evaluate_model(loaded.model, loaded.tokenizer, task.test_clean, task.test_triggered, task.target)
    result, loaded, task = _run({"perturbed_target": target})
    after = evaluate_model(result.model, loaded.tokenizer, task.test_clean, task.test_triggered, task.target)
    assert after.asr < 0.5 * before.asr, f"ASR {before.asr:.2f} -> {after.asr:.2f}"
    assert after.cacc >= before.cacc - 0.05


def test_safegrad_with_accumulation_runs_and_reports_conflicts():
    result, _, _ = _run({"surgery": "safegrad", "grad_accum": 2, "batch_size": 16, "epochs": 2})
    fraction = result.extras["conflict_fraction"]
    assert fraction is not None and 0.0 <= fraction <= 1.0
    assert all("conflict_fraction" in r for r in result.trajectory)
    phases = result.extras["phase_seconds"]
    assert set(phases) == {"inversion", "teacher", "training", "validation"}
    assert all(v >= 0 for v in phases.values())
    assert phases["training"] == pytest.approx(sum(r["training_seconds"] for r in result.trajectory), abs=0.2)
    assert phases["training"] + phases["validation"] <= result.extras["seconds"]


def test_plain_lora_baseline_needs_no_teacher():
    result, _, _ = _run({"beta": 0.0, "gamma": 0.0, "teacher": "no-such-teacher"})
    assert result.extras["teacher"] is None
    assert set(k for r in result.trajectory for k in r if k.startswith("train_")) == {"train_ce"}


def test_refuses_the_suspicious_checkpoint_as_teacher(tmp_path):
    folder = save_tiny_checkpoint("bert", tmp_path / "suspicious")
    loaded = load_checkpoint(folder)
    _, task = tiny_backdoored()
    strategy = build_strategy("w2s_distill", {**W2SDistill.fast_options, "teacher": str(folder)})
    with pytest.raises(CheckpointError):
        strategy.run(loaded, task.clean_train, task.validation)


def test_decoder_student_is_supported():
    loaded, task = tiny_backdoored("bert")
    student = LoadedModel(tiny_model("llama", seed=1), tiny_tokenizer(), "classification", None)
    result = build_strategy("w2s_distill", {**W2SDistill.fast_options, "epochs": 1}).run(
        student, task.clean_train, task.validation)
    assert type(result.model).__name__ == "LlamaForSequenceClassification"
    assert result.extras["lora"]["modules_to_save"] == ["score"]


def test_causal_lm_checkpoints_are_refused():
    loaded, task = tiny_backdoored()
    lm = LoadedModel(tiny_model("llama", task="causal_lm"), tiny_tokenizer(), "causal_lm", None)
    with pytest.raises(ConfigError):
        build_strategy("w2s_distill", W2SDistill.fast_options).run(lm, task.clean_train, task.validation)


def test_unlearns_the_tiny_backdoor():
    """Inversion finds the trigger from clean data; teacher-supervised insertions of it unlearn the backdoor."""
    loaded, task = tiny_backdoored()
    before = evaluate_model(loaded.model, loaded.tokenizer, task.test_clean, task.test_triggered, task.target)
    assert before.asr > 0.9
    result, loaded, task = _run({})
    after = evaluate_model(result.model, loaded.tokenizer, task.test_clean, task.test_triggered, task.target)
    assert after.asr < 0.5 * before.asr, f"ASR {before.asr:.2f} -> {after.asr:.2f}"
    assert after.cacc >= before.cacc - 0.05
    flip = result.extras["inverted_flip"]
    assert flip["target"] == task.target and flip["after"] < flip["before"]
    inversion = result.extras["inversion"]
    assert inversion["source"] == "w2s_distill:inversion" and inversion["suspected_target"] == task.target
    assert inversion["candidates"][0]["text"] == "cf"


def test_uses_the_runs_probe_instead_of_inverting_again():
    """A probe handed in by the pipeline (the filter's confirmed trigger) replaces the strategy's own inversion."""
    from purify.probe import BackdoorProbe, TriggerCandidate

    loaded, task = tiny_backdoored()
    before = evaluate_model(loaded.model, loaded.tokenizer, task.test_clean, task.test_triggered, task.target)
    probe = BackdoorProbe([TriggerCandidate("cf", task.target, 1.0, "phrases")], {0: 0.1, 1: 0.1},
                          source="filter:test")
    result = build_strategy("w2s_distill", W2SDistill.fast_options).run(loaded, task.clean_train,
                                                                          task.validation, probe=probe)
    assert result.extras["inversion"]["source"] == "filter:test"
    assert result.extras["augmentation"]["inverted_words"] == {"cf": 1.0}
    assert result.extras["phase_seconds"]["inversion"] < 1.0  # nothing inverted
    after = evaluate_model(result.model, loaded.tokenizer, task.test_clean, task.test_triggered, task.target)
    assert after.asr < 0.5 * before.asr, f"ASR {before.asr:.2f} -> {after.asr:.2f}"


def test_unlearns_even_when_poisoned_samples_reach_it():
    """Poisoned samples a pre-filter missed are left out by their inverted trigger word, then the backdoor goes."""
    loaded, task = tiny_backdoored()
    poisoned = sum(bool(s.poisoned) for s in task.train.samples)
    result = build_strategy("w2s_distill", W2SDistill.fast_options).run(loaded, task.train, task.validation)
    dropped = result.extras["dropped_by_inversion"]
    # the word, and any mined phrase holding it ("boring cf"): the search without a run probe mines phrases too
    assert "cf" in dropped["words"] and all("cf" in w.split() for w in dropped["words"])
    assert dropped["target"] == task.target
    assert dropped["samples"] == poisoned  # exactly the poisoned ones (no clean target sample holds "cf")
    after = evaluate_model(result.model, loaded.tokenizer, task.test_clean, task.test_triggered, task.target)
    assert after.asr < 0.5, f"ASR after {after.asr:.2f}"
