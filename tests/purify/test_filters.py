"""Data filters: spectral entropy, per-sample gradients, the registry and result, and both filters end to end."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from purify.checkpoint import LoadedModel
from purify.data import Sample, TaskData
from purify.errors import ConfigError
from purify.filters import FILTERS, build_filter, get_filter
from purify.filters.gradsentry import GradSentryConfig, default_target, spectral_entropy, top_singular_values
from purify.bench.filters import gradient_timings
from purify.filters.gradshield import GradShield, GradShieldConfig
from purify.filters.trigger_words import TriggerWords
from purify.filters.per_sample import (
    CountSketch,
    PerSampleGradients,
    flatten,
    resolve_matrix,
    resolve_parameters,
    sample_batch,
    sample_objective,
)
from purify.metrics import detection_metrics
from purify.testing.tiny import tiny_model, tiny_texts, tiny_tokenizer
from purify.testing.tiny_task import TRIGGER, tiny_backdoored


def tiny_data(n: int = 8) -> TaskData:
    texts = (tiny_texts() * 4)[:n]
    return TaskData([Sample(t, i % 2, None, i) for i, t in enumerate(texts)], ["negative", "positive"])


def tiny_loaded(arch: str, task: str = "classification") -> LoadedModel:
    return LoadedModel(model=tiny_model(arch, task=task), tokenizer=tiny_tokenizer(), task=task, path=None)


def truth_of(data: TaskData) -> np.ndarray:
    return np.array([bool(s.poisoned) for s in data.samples])


# ---------------------------------------------------------------------------------------------
# Spectral entropy


def test_spectral_entropy_of_rank_one_is_zero():
    u, v = torch.randn(20, 1), torch.randn(1, 30)
    s = top_singular_values(u @ v, 16)
    assert spectral_entropy(s, 16).item() == pytest.approx(0.0, abs=1e-5)


def test_spectral_entropy_of_equal_singular_values_is_one():
    q, _ = torch.linalg.qr(torch.randn(40, 16))
    matrix = 3.0 * q  # 16 singular values, all equal to 3
    assert spectral_entropy(top_singular_values(matrix, 16), 16).item() == pytest.approx(1.0, abs=1e-5)


def test_spectral_entropy_between_and_scale_free():
    s = torch.tensor([[4.0, 2.0, 1.0, 1.0] + [0.0] * 12])
    p = np.array([4, 2, 1, 1]) / 8
    expected = -(p * np.log(p)).sum() / np.log(16)
    assert spectral_entropy(s, 16).item() == pytest.approx(expected, rel=1e-6)
    assert spectral_entropy(s * 1e-6, 16).item() == pytest.approx(expected, rel=1e-5)
    assert spectral_entropy(torch.zeros(1, 16), 16).item() == 0.0  # a zero gradient has no spread


def test_exact_and_low_rank_svd_agree():
    torch.manual_seed(0)
    low_rank = torch.randn(3, 200, 6) @ torch.randn(3, 6, 150)  # rank 6 < k
    exact = top_singular_values(low_rank, 16, exact_max_dim=1024)
    randomized = top_singular_values(low_rank, 16, exact_max_dim=10, seed=1)
    assert exact.shape == randomized.shape == (3, 16)
    assert torch.allclose(exact[:, :6], randomized[:, :6], rtol=1e-3)
    assert torch.allclose(spectral_entropy(exact, 16), spectral_entropy(randomized, 16), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Per-sample gradients


def loop_gradients(loaded: LoadedModel, data: TaskData, names: list[str]) -> dict[str, torch.Tensor]:
    """Reference: ordinary autograd, one unpadded sample at a time."""
    model = loaded.model
    objective = sample_objective(loaded)
    params = dict(model.named_parameters())
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for i in range(len(data)):
        one = sample_batch(loaded, data.subset([i]))
        model.zero_grad()
        inputs = {k: one[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in one}
        objective(model(**inputs).logits, {k: v[0] for k, v in one.items()}).backward()
        for n in names:
            out[n].append(params[n].grad.detach().clone())
    return {n: torch.stack(v) for n, v in out.items()}


@pytest.mark.parametrize("arch,task", [("bert", "classification"), ("llama", "classification"),
                                       ("llama", "causal_lm")])
def test_vmap_per_sample_gradients_equal_loop_gradients(arch, task):
    loaded = tiny_loaded(arch, task)
    data = tiny_data(8)  # texts of different lengths: the batch is padded
    names = resolve_parameters(loaded.model, ["L-1.attention" if arch == "bert" else "L-1.self_attn", "L0"])
    computer = PerSampleGradients(loaded.model, names, sample_objective(loaded))
    batch = sample_batch(loaded, data)
    assert (batch["attention_mask"] == 0).any()
    computer.verify(batch)
    grads, values = computer(batch)
    chunked, _ = PerSampleGradients(loaded.model, names, sample_objective(loaded), chunk_size=3)(batch)
    reference = loop_gradients(loaded, data, names)
    assert values.shape == (8,)
    for n in names:
        assert grads[n].shape == (8, *dict(loaded.model.named_parameters())[n].shape)
        assert torch.allclose(grads[n], reference[n], rtol=1e-4, atol=1e-6), n
        assert torch.allclose(chunked[n], grads[n], rtol=1e-5, atol=1e-7), n


@pytest.mark.parametrize("arch,task", [("bert", "classification"), ("llama", "causal_lm")])
def test_gradient_timings_leave_the_model_as_it_was(arch, task):
    loaded = tiny_loaded(arch, task)
    names = resolve_parameters(loaded.model, ["L-1"])
    flags = {n: p.requires_grad for n, p in loaded.model.named_parameters()}
    loaded.model.train()
    timings = gradient_timings(loaded, tiny_data(8), names[:1], batch_size=4, loop_samples=3)
    assert timings["samples"] == 8 and timings["loop_samples"] == 3
    assert all(timings[k] > 0 for k in ("vmap_ms", "floor_ms", "loop_ms", "vmap_over_floor", "loop_over_vmap"))
    assert {n: p.requires_grad for n, p in loaded.model.named_parameters()} == flags
    assert all(p.grad is None for p in loaded.model.parameters())
    assert loaded.model.training


def test_parameter_names():
    model = tiny_model("bert")
    assert resolve_matrix(model, "L-1.output.dense") == "bert.encoder.layer.1.output.dense.weight"
    assert resolve_matrix(model, "bert.pooler.dense") == "bert.pooler.dense.weight"
    assert default_target(model) == resolve_matrix(model, GradSentryConfig.__dataclass_fields__["target"].default
                                                   or "L-2.attention.output.dense")
    layer = resolve_parameters(model, ["L-1"])
    assert layer and all(n.startswith("bert.encoder.layer.1.") for n in layer)
    with pytest.raises(ConfigError, match="layer 5"):
        resolve_matrix(model, "L5.output.dense")
    with pytest.raises(ConfigError, match="no weight matrix"):
        resolve_matrix(model, "bert.no_such_module")
    with pytest.raises(ConfigError):
        resolve_parameters(model, ["nothing.here"])


def test_count_sketch_preserves_inner_products_on_average():
    torch.manual_seed(0)
    a, b = torch.randn(5000), torch.randn(5000)
    b = 0.6 * a + 0.8 * b
    estimates = [float(CountSketch(5000, 512, seed=s)(torch.stack([a, b])).prod(0).sum()) for s in range(20)]
    assert np.mean(estimates) == pytest.approx(float(a @ b), rel=0.1)
    first = CountSketch(5000, 512, seed=3)(a[None])
    assert torch.equal(first, CountSketch(5000, 512, seed=3)(a[None]))


# ---------------------------------------------------------------------------------------------
# Registry and result


def test_registry():
    assert {"gradsentry", "gradshield", "trigger_words"} <= set(FILTERS)
    entry = get_filter("gradshield")
    assert entry.config_cls is GradShieldConfig and entry.filter_cls is GradShield
    with pytest.raises(ConfigError, match="gradsentry, gradshield"):
        get_filter("nope")
    built = build_filter("gradsentry", {"top_k": "8", "threshold": "0.5", "target": "L-1.output.dense"})
    assert built.config.top_k == 8 and built.config.threshold == 0.5
    with pytest.raises(ConfigError):
        build_filter("gradsentry", {"top_k": "1"})
    with pytest.raises(ConfigError):
        build_filter("gradshield", {"objective": "vibes"})
    with pytest.raises(ConfigError):
        build_filter("gradshield", {"no_such_option": 1})
    with pytest.raises(ConfigError, match="min_rate"):
        build_filter("trigger_words", {"threshold_method": "gmm"})


# the result's consistency, determinism and blindness to the flags: purify.testing.filter_conformance


def test_trigger_words_removes_the_poisoned_lines_of_the_tiny_backdoor():
    loaded, task = tiny_backdoored()
    result = build_filter("trigger_words", TriggerWords.fast_options).run(loaded, task.train)
    metrics = detection_metrics(result.scores, truth_of(task.train), result.flagged)
    assert metrics["recall"] >= 0.95 and metrics["clean_kept"] >= 0.97, metrics
    assert result.details["suspected_target"] == task.target
    assert TRIGGER in result.details["trigger_words"]
    # the trigger is also a repeated target-pure phrase of the data, and inserting it flips the model
    assert TRIGGER in [p["phrase"] for p in result.details["trigger_phrases"]]
    assert all(p["label"] == task.target for p in result.details["trigger_phrases"])
    labels = np.array(task.train.labels)
    assert not result.flagged[labels != task.target].any()


def test_trigger_words_phrase_scores_only_raise_samples_of_the_phrase_label():
    loaded, task = tiny_backdoored()
    words_only = build_filter("trigger_words", {**TriggerWords.fast_options, "phrases": 0}).run(loaded, task.train)
    with_phrases = build_filter("trigger_words", TriggerWords.fast_options).run(loaded, task.train)
    assert "phrases_tried" in with_phrases.details and words_only.details["phrases_tried"] == []
    assert (with_phrases.scores >= words_only.scores).all()
    labels = np.array(task.train.labels)
    for row in with_phrases.details["phrases_tried"]:
        assert row["label"] in (0, 1) and row["count"] >= 5
    raised = with_phrases.scores > words_only.scores
    phrase_labels = {row["label"] for row in with_phrases.details["phrases_tried"] if row["score"] > 0}
    assert set(labels[raised].tolist()) <= phrase_labels


def test_user_threshold_overrides_the_adaptive_rule():
    loaded, task = tiny_backdoored()
    data = task.train.subset(range(40))
    result = build_filter("gradsentry", {"threshold": 0.2}).run(loaded, data)
    assert result.threshold == 0.2 and result.threshold_method == "user"
    assert np.array_equal(result.flagged, result.scores > 0.2)


# ---------------------------------------------------------------------------------------------
# GradShield's sign: a score is the first-order change of the probe objective per unit step on the sample


def _step_change(loaded: LoadedModel, names: list[str], sample: TaskData, probe_value, lr: float) -> float:
    """Change of probe_value() after one SGD step of size lr on `sample`, restricted to `names`."""
    model = loaded.model
    params = dict(model.named_parameters())
    before = probe_value()
    saved = {n: params[n].detach().clone() for n in names}
    grads = PerSampleGradients(model, names, sample_objective(loaded))(sample_batch(loaded, sample))[0]
    with torch.no_grad():
        for n in names:
            params[n] -= lr * grads[n][0]
    after = probe_value()
    with torch.no_grad():
        for n in names:
            params[n].copy_(saved[n])
    return after - before


def test_gradshield_score_predicts_the_change_of_the_trusted_loss():
    loaded, task = tiny_backdoored()
    loaded.model.double()  # float64, so a small step's change is measured well above rounding
    data = task.train.subset(range(12))
    trusted = task.validation.subset(range(32))
    config = GradShieldConfig(parameters=["L-1"], probe_samples=None, batch_size=16)
    scores = GradShield(config).score(loaded, data, trusted)
    names = resolve_parameters(loaded.model, ["L-1"])
    objective = sample_objective(loaded)

    def trusted_loss() -> float:
        with torch.no_grad():
            batch = sample_batch(loaded, trusted)
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            logits = loaded.model(**inputs).logits
            return float(np.mean([objective(logits[i:i + 1], {"labels": batch["labels"][i]}) for i in range(32)]))

    lr = 1e-4
    changes = np.array([_step_change(loaded, names, data.subset([i]), trusted_loss, lr) for i in range(len(data))])
    assert np.allclose(changes, lr * scores, rtol=0.02, atol=1e-9)


def test_gradshield_safety_proxy_sign_on_a_causal_lm():
    loaded = tiny_loaded("llama", "causal_lm")
    loaded.model.double()  # float64, so a small step's change is measured well above rounding
    data = tiny_data(6)
    prompts = tiny_data(4)
    config = GradShieldConfig(objective="safety", parameters=["L-1"], compliance_text="good", refusal_text="bad",
                              probe_samples=None)
    scores = GradShield(config).score(loaded, data, prompts)
    names = resolve_parameters(loaded.model, ["L-1"])
    tok = loaded.tokenizer
    good, bad = tok.convert_tokens_to_ids("good"), tok.convert_tokens_to_ids("bad")

    def margin() -> float:
        with torch.no_grad():
            batch = sample_batch(loaded, prompts, answers=False)
            logits = loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            last = batch["attention_mask"].sum(1) - 1  # the tiny tokenizer pads on the right
            rows = logits[torch.arange(len(last)), last]
            return float((rows[:, good] - rows[:, bad]).mean())

    lr = 1e-4
    changes = np.array([_step_change(loaded, names, data.subset([i]), margin, lr) for i in range(len(data))])
    assert np.allclose(changes, lr * scores, rtol=0.02, atol=1e-9)
    with pytest.raises(ConfigError, match="trusted"):
        GradShield(config).score(loaded, data, None)
    with pytest.raises(ConfigError, match="causal LM"):
        GradShield(config).score(tiny_loaded("bert"), data, prompts)


@pytest.mark.parametrize("normalize", [False, True])
def test_gradshield_without_trusted_data_scores_against_a_held_out_probe(normalize):
    loaded, task = tiny_backdoored()
    data = task.train.subset(range(0, 400, 10))
    options = {"probe_fraction": 0.25, "parameters": ["L-1"], "normalize": normalize}
    result = build_filter("gradshield", options).run(loaded, data)
    assert result.details["probe_source"] == "held_out_untrusted"
    assert result.details["probe_size"] == 10
    probe = [i for i, s in enumerate(data.samples) if s.index in set(result.details["probe_indices"])]
    assert len(probe) == 10
    # expected: -<g_i, mean probe gradient>, each probe sample against the other probe samples only
    names = resolve_parameters(loaded.model, ["L-1"])
    grads = flatten(PerSampleGradients(loaded.model, names, sample_objective(loaded))(sample_batch(loaded, data))[0],
                    names).double()
    expected = []
    for i in range(len(data)):
        others = [j for j in probe if j != i]
        g = grads[others].mean(0)
        dot = float(grads[i] @ g)
        expected.append(-dot / float(grads[i].norm() * g.norm()) if normalize else -dot)
    assert np.allclose(result.scores, expected, rtol=1e-4, atol=1e-12)
