"""Clean teacher recipes: how each small clean model is built before it is fine-tuned on the clean task data.

A recipe names a clean source (a packaged pretrained base, its first k layers, a tiny random model for CI, or a
model folder the user names) and the fine-tuning knobs that suit it. A teacher never comes from the suspicious
checkpoint: `ensure_not_student` refuses a folder that is the student's own or holds the same weights.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from purify.checkpoint import LoadedModel, load_checkpoint
from purify.errors import CheckpointError, ConfigError
from purify.heads import find_attention_blocks
from purify.registry_base import Registry
from purify.training import TrainConfig
from purify.zoo.bases import minilm_path, smollm2_path

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# config attributes that hold a model's layer count, by architecture family
_LAYER_COUNT_ATTRS = ("num_hidden_layers", "n_layer", "n_layers")


@dataclass(frozen=True)
class TeacherRecipe:
    """A clean teacher source.

    name: registry key (also the cache folder prefix).
    build: (num_labels, seed) -> a fresh, untrained classifier with its tokenizer (head initialised from seed).
    train: fine-tuning knobs for `teachers.train` (early stopping on clean validation accuracy).
    description: one line for listings.
    source: for a user-named folder, the folder (None for built-in recipes).
    """

    name: str
    build: Callable[[int, int], LoadedModel]
    train: TrainConfig
    description: str = ""
    source: Path | None = None


def truncate_layers(model: PreTrainedModel, keep: int) -> PreTrainedModel:
    """Keep only the first `keep` transformer layers of `model` (in place) and record it in its config."""
    blocks = find_attention_blocks(model)
    if not 1 <= keep <= len(blocks):
        raise ConfigError(f"cannot keep {keep} layers of a {len(blocks)}-layer model")
    # the layer list is the ModuleList that holds each attention block: "<list>.<i>.<attention...>"
    match = re.match(r"(.+)\.0\.", blocks[0].name + ".")
    if match is None:
        raise ConfigError(f"cannot find the layer list of this {model.config.model_type!r} model")
    list_name = match.group(1)
    layers = model.get_submodule(list_name)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"{list_name} is not a ModuleList; cannot truncate")
    parent_name, _, attr = list_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.ModuleList(list(layers)[:keep]))
    config = model.config
    for key in _LAYER_COUNT_ATTRS:
        if hasattr(config, key) and isinstance(getattr(config, key), int):
            setattr(config, key, keep)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list):
        config.layer_types = layer_types[:keep]
    return model


def _pretrained_classifier(path_fn: Callable[[], Path], keep: int | None) -> Callable[[int, int], LoadedModel]:
    def build(num_labels: int, seed: int) -> LoadedModel:
        torch.manual_seed(seed)  # the new classification head is initialised from the seed
        loaded = load_checkpoint(path_fn(), task="classification", num_labels=num_labels)
        if keep is not None:
            truncate_layers(loaded.model, keep)
        return loaded

    return build


def _tiny(num_labels: int, seed: int) -> LoadedModel:
    from purify.tinymodels import tiny_model, tiny_tokenizer

    model = tiny_model("bert", num_labels=num_labels, seed=seed)
    return LoadedModel(model=model, tokenizer=tiny_tokenizer(), task="classification", path=None)


_ENCODER_TRAIN = TrainConfig(epochs=5, lr=1e-4, batch_size=32, max_length=64, patience=2)

#: the built-in teacher recipes, by name
RECIPES: Registry[TeacherRecipe] = Registry("teacher recipe")


def register_recipe(recipe: TeacherRecipe) -> TeacherRecipe:
    """Register `recipe` under its name."""
    return RECIPES.register(recipe.name, recipe)


register_recipe(TeacherRecipe("minilm-l6", _pretrained_classifier(minilm_path, None), _ENCODER_TRAIN,
                              "the packaged all-MiniLM-L6-v2 (6 layers, 384 wide)"))
register_recipe(TeacherRecipe("minilm-l3", _pretrained_classifier(minilm_path, 3), _ENCODER_TRAIN,
                              "the first 3 layers of MiniLM-L6 (its tokenizer kept)"))
register_recipe(TeacherRecipe("minilm-l2", _pretrained_classifier(minilm_path, 2), _ENCODER_TRAIN,
                              "the first 2 layers of MiniLM-L6 (its tokenizer kept)"))
register_recipe(TeacherRecipe("smollm2-l8", _pretrained_classifier(smollm2_path, 8),
                              TrainConfig(epochs=3, lr=5e-5, batch_size=16, max_length=64, patience=1),
                              "the first 8 layers of SmolLM2-135M-Instruct"))
register_recipe(TeacherRecipe("tiny", _tiny,
                              TrainConfig(epochs=8, lr=3e-3, batch_size=32, warmup_fraction=0.0, max_length=32,
                                          patience=3),
                              "a tiny random 2-layer BERT over the test vocabulary (CI only)"))


def _folder_recipe(folder: Path) -> TeacherRecipe:
    def build(num_labels: int, seed: int) -> LoadedModel:
        torch.manual_seed(seed)
        return load_checkpoint(folder, task="classification", num_labels=num_labels)

    slug = re.sub(r"[^A-Za-z0-9_.]+", "_", folder.name)[:40] or "folder"
    tag = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:8]
    return TeacherRecipe(f"path-{slug}-{tag}", build,
                         TrainConfig(epochs=3, lr=5e-5, batch_size=32, max_length=64, patience=1),
                         f"the model folder {folder}", source=folder.resolve())


def get_recipe(name_or_path: str | Path) -> TeacherRecipe:
    """The recipe `name_or_path`: a registered name, else an existing model folder; a clear error otherwise."""
    key = str(name_or_path)
    if key in RECIPES:
        return RECIPES[key]
    folder = Path(key).expanduser()
    if folder.is_dir():
        return _folder_recipe(folder)
    raise ConfigError(f"unknown teacher {key!r}: neither a recipe ({', '.join(RECIPES)}) nor a model folder")


def state_hash(model: nn.Module) -> str:
    """SHA-256 over a model's parameter and buffer names, shapes and bytes (identical weights, identical hash)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Identical backbones (the task head is left out: a copy given a fresh head is still the same model)."""
    a, b = getattr(a, "base_model", a), getattr(b, "base_model", b)
    sa, sb = a.state_dict(), b.state_dict()
    if {k: tuple(v.shape) for k, v in sa.items()} != {k: tuple(v.shape) for k, v in sb.items()}:
        return False
    return state_hash(a) == state_hash(b)


def ensure_not_student(recipe: TeacherRecipe, teacher: LoadedModel | None, student: LoadedModel | None) -> None:
    """Refuse a teacher that is the suspicious checkpoint itself: the same folder, or identical weights."""
    if student is None:
        return
    if recipe.source is not None and student.path is not None:
        try:
            same = Path(student.path).resolve() == recipe.source
        except OSError:
            same = False
        if same:
            raise CheckpointError(f"the teacher folder {recipe.source} is the suspicious checkpoint itself; a "
                                  "teacher must be a clean model (pick a recipe such as minilm-l3)")
    if teacher is not None and _same_weights(teacher.model, student.model):
        raise CheckpointError(f"the teacher {recipe.name!r} has the same weights as the suspicious checkpoint; a "
                              "teacher must be a clean model (pick a recipe such as minilm-l3)")
