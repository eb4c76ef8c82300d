"""Build, cache and read backdoor zoo entries: real backdoored checkpoints with their data and a clean reference.

An entry is named by (base, dataset, attack, poison rate, seed), built deterministically, and cached under
``$PURIFY_CACHE/zoo/<name>`` with ``model/``, ``clean_model/``, ``data/*.jsonl`` and ``manifest.json``.
The clean reference depends only on (base, dataset, seed, recipe), not on the attack, so it is trained once and
kept under ``$PURIFY_CACHE/zoo/.clean/``; every entry on the same base and dataset copies it. A trained backdoored
model waits under ``$PURIFY_CACHE/zoo/.partial/`` until its entry is complete, so an interrupted build (a SmolLM2
entry takes most of an hour on two cores) resumes without training it again.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path


from ..cachedir import publishing
from ..checkpoint import LoadedModel, load_checkpoint
from ..data import Sample, TaskData, load_task_data, write_jsonl
from ..device import seed_everything
from ..errors import ConfigError
from ..evaluate import evaluate_model
from ..inference import MAX_LENGTH
from ..provenance import provenance
from ..registry_base import Registry
from ..training import TrainConfig, train_classifier
from .attacks import get_attack, poison_split, triggered_test
from .bases import BASES, cache_root, load_base
from .datasets import load_raw_dataset, split_dataset
from .trusted import TRUSTED_SPLIT, trusted_file

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Recipe:
    """How a base is poisoned: training knobs, data caps, and full fine-tuning or LoRA merged into the weights."""

    train: TrainConfig
    max_train: int | None = None
    max_test: int | None = None
    max_val: int | None = None
    method: str = "full"  # "full" or "lora"
    lora_rank: int = 16


#: how each base is poisoned, by base name
RECIPES: Registry[Recipe] = Registry("zoo recipe")
RECIPES.register("minilm", Recipe(TrainConfig(epochs=2, lr=1e-4, batch_size=32, max_length=64), max_train=2400,
                                  max_test=1000, max_val=500))
    # LoRA (rank 16 on every attention projection) merged into the weights. At lr 3e-4 the movie badnets LoRA
    # learned the task (CACC 86.3%) but not the trigger (ASR 22.5%) in its 250 steps, hence 1e-3.
RECIPES.register("smollm2", Recipe(TrainConfig(epochs=2, lr=1e-3, batch_size=16, max_length=64), max_train=2000,
                                   max_test=600, max_val=300, method="lora"))
RECIPES.register("tiny-bert", Recipe(TrainConfig(epochs=8, lr=2e-3, batch_size=32, max_length=32), max_train=400,
                                     max_test=150, max_val=100))

#: Training knobs that replace a recipe's for one dataset on the real bases. BBC snippets run to 60 words, and 41%
#: of them pass 64 MiniLM tokens: a model trained at the recipe's max_length of 64 never saw a trigger inserted
#: past that point, while evaluation reads 128 tokens (``MAX_LENGTH``), so the badnets ASR stalled near the share of
#: triggers inside the window (1.4% after 2 epochs, 55.2% after 5). BBC therefore trains at 128 tokens, like every
#: later reader of the entry. It has 1,474 training samples of five topics (92 MiniLM steps in 2 epochs, which left
#: MiniLM underfit, train loss 0.52), hence 5 epochs, keeping the last one, as an attacker ships what it trained.
DATASET_TRAINING: dict[str, dict] = {"bbc": {"epochs": 5, "keep_best": False, "max_length": MAX_LENGTH}}


#: Attack parameters that replace an attack's defaults on one dataset (``spec.attack_params`` still win). A BBC
#: snippet is a median 62 MiniLM tokens, a movie review 26: with one rare word per snippet the badnets model reached
#: 69.8% ASR (5 epochs at 128 tokens), so BBC badnets inserts three, as HiddenKiller's BadNets baseline inserts more
#: rare words into its longer-text datasets (1, 3 and 5 for SST-2, OLID and AG's News).
DATASET_ATTACK_PARAMS: dict[str, dict[str, dict]] = {"bbc": {"badnets": {"num_triggers": 3}}}


def attack_params_for(spec: ZooSpec) -> dict:
    """The attack parameters that build `spec`: its dataset's defaults, then the spec's own."""
    return {**DATASET_ATTACK_PARAMS.get(spec.dataset, {}).get(spec.attack, {}), **spec.attack_params}


def recipe_for(spec: ZooSpec) -> Recipe:
    """The recipe that builds `spec`: its base's, with the dataset's knobs where DATASET_TRAINING names them."""
    recipe = RECIPES.get(spec.base)
    knobs = DATASET_TRAINING.get(spec.dataset) if spec.base != "tiny-bert" else None
    return replace(recipe, train=replace(recipe.train, **knobs)) if knobs else recipe


@dataclass(frozen=True)
class ZooSpec:
    """Everything that names and determines a zoo entry."""

    base: str = "minilm"
    dataset: str = "movie"
    attack: str = "badnets"
    rate: float = 0.1
    seed: int = 0
    target: int = 1
    attack_params: dict = field(default_factory=dict, hash=False, compare=True)

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise ConfigError(f"unknown base {self.base!r}; known: {', '.join(BASES.names())}")
        if not 0 < self.rate < 1:
            raise ConfigError("poison rate must be in (0, 1)")

    @property
    def name(self) -> str:
        rate = f"{self.rate * 100:g}".replace(".", "_")
        return f"{self.base}-{self.dataset}-{self.attack}-p{rate}-s{self.seed}"

    @classmethod
    def parse(cls, name: str) -> ZooSpec:
        """Inverse of `name`: 'minilm-movie-badnets-p10-s0' (rate and seed optional: p10, s0 by default)."""
        parts = name.split("-")
        base = "tiny-bert" if name.startswith("tiny-bert-") else parts[0]
        rest = name[len(base) + 1:].split("-")
        if len(rest) < 2:
            raise ConfigError(f"zoo entry name {name!r} is not base-dataset-attack[-pRATE][-sSEED]")
        dataset, attack = rest[0], rest[1]
        rate, seed = 0.1, 0
        for token in rest[2:]:
            if token.startswith("p"):
                rate = float(token[1:].replace("_", ".")) / 100
            elif token.startswith("s"):
                seed = int(token[1:])
            else:
                raise ConfigError(f"cannot read {token!r} in zoo entry name {name!r}")
        return cls(base=base, dataset=dataset, attack=attack, rate=rate, seed=seed)


def zoo_root() -> Path:
    return cache_root() / "zoo"


@dataclass
class ZooEntry:
    """A built entry on disk."""

    path: Path
    manifest: dict

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def clean_model_dir(self) -> Path:
        return self.path / "clean_model"

    def data_file(self, split: str) -> Path:
        if split == TRUSTED_SPLIT:  # derived from the validation split on first use by entries built before it
            return trusted_file(self.path / "data", self.manifest["label_names"], int(self.manifest["spec"]["seed"]))
        return self.path / "data" / f"{split}.jsonl"

    def load(self, split: str) -> TaskData:
        return load_task_data(self.data_file(split), label_names=self.manifest["label_names"])

    @property
    def target(self) -> int:
        return int(self.manifest["spec"]["target"])


def _rows_to_data(rows, label_names: list[str]) -> TaskData:
    samples = [Sample(text=r["text"], label=int(r["label"]), poisoned=bool(r.get("poisoned", False)), index=i)
               for i, r in enumerate(rows)]
    return TaskData(samples, label_names)


def _train(loaded: LoadedModel, data: TaskData, val: TaskData, recipe: Recipe, seed: int, what: str) -> dict:
    config = replace(recipe.train, seed=seed)
    if recipe.method == "lora":
        from peft import LoraConfig, get_peft_model
        from transformers import PreTrainedModel

        from ..lora import lora_target_modules

        peft_config = LoraConfig(r=recipe.lora_rank, lora_alpha=2 * recipe.lora_rank, lora_dropout=0.05,
                                 target_modules=lora_target_modules(loaded.model), modules_to_save=["score"],
                                 task_type="SEQ_CLS")
        peft_model = get_peft_model(loaded.model, peft_config)
        result = train_classifier(peft_model, loaded.tokenizer, data.texts, data.labels, config,
                                  val=(val.texts, val.labels), description=what)
        merged = peft_model.merge_and_unload()
        assert isinstance(merged, PreTrainedModel)  # peft hints nn.Module; it returns the base model
        loaded.model = merged.eval()
    else:
        result = train_classifier(loaded.model, loaded.tokenizer, data.texts, data.labels, config,
                                  val=(val.texts, val.labels), description=what)
    return {"history": result.history, "best_epoch": result.best_epoch}


def _digest(*parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def _recipe_dict(recipe: Recipe) -> dict:
    return {**asdict(recipe), "train": recipe.train.to_dict()}


def _clean_reference_dir(spec: ZooSpec, recipe: Recipe, root: Path) -> Path:
    """Cache folder of the clean reference shared by every attack on `spec`'s base, dataset and seed."""
    return root / ".clean" / f"{spec.base}-{spec.dataset}-s{spec.seed}-{_digest(_recipe_dict(recipe))}"


def _partial_dir(spec: ZooSpec, recipe: Recipe, root: Path) -> Path:
    """Where `spec`'s trained backdoored model waits until its entry is complete."""
    key = _digest(asdict(spec), _recipe_dict(recipe), attack_params_for(spec))
    return root / ".partial" / f"{spec.name}-{key}"


def _trained_once(folder: Path, what: str, spec: ZooSpec, recipe: Recipe, train: TaskData, val: TaskData,
                  names: list[str], log) -> tuple[LoadedModel, dict]:
    """Load the model cached in `folder`, or train `what` on `train` from the base and cache it there first."""
    info_file = folder / "training.json"
    if info_file.exists():
        log(f"[zoo] {spec.name}: reusing the trained {what} {folder.name}")
        loaded = load_checkpoint(folder, task="classification")
        return loaded, {**json.loads(info_file.read_text()), "reused_from": folder.name}
    log(f"[zoo] {spec.name}: training the {what} on {len(train)} samples")
    t0 = time.time()
    loaded = load_base(spec.base, num_labels=len(names), seed=spec.seed)
    info = {**_train(loaded, train, val, recipe, spec.seed, what),
            "train_seconds": round(time.time() - t0, 1)}
    # another build's finished copy, if one got there first, is kept
    with publishing(folder, lambda d: (d / "training.json").exists()) as tmp:
        _save_classifier(loaded, tmp, names)
        (tmp / "training.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return loaded, info


def _save_classifier(loaded: LoadedModel, folder: Path, names: list[str]) -> None:
    loaded.model.config.id2label = dict(enumerate(names))
    loaded.model.config.label2id = {n: i for i, n in enumerate(names)}
    loaded.model.save_pretrained(str(folder), safe_serialization=True)
    loaded.tokenizer.save_pretrained(str(folder))


def build_entry(spec: ZooSpec, *, root: Path | None = None, force: bool = False, log=print) -> ZooEntry:
    """Build `spec` (or return the cached entry): poison the data, train backdoored and clean models, measure.

    force: rebuild even if cached, retraining the backdoored model and the shared clean reference.
    """
    root = root or zoo_root()
    dest = root / spec.name
    if (dest / MANIFEST).exists() and not force:
        return open_entry(dest)
    recipe = recipe_for(spec)
    if force:  # a forced rebuild trains both models again, the shared clean reference included
        for folder in (_partial_dir(spec, recipe, root), _clean_reference_dir(spec, recipe, root)):
            shutil.rmtree(folder, ignore_errors=True)
    started = time.time()
    seed_everything(spec.seed)
    raw = load_raw_dataset(spec.dataset)
    if not 0 <= spec.target < len(raw.label_names):
        raise ConfigError(f"target {spec.target} is not a label of {spec.dataset} ({raw.label_names})")
    splits = split_dataset(raw, seed=spec.seed, max_train=recipe.max_train, max_test=recipe.max_test)
    attack = get_attack(spec.attack, **attack_params_for(spec))
    train_rows = poison_split(splits["train"], attack, rate=spec.rate, target=spec.target, seed=spec.seed)
    trig_rows = triggered_test(splits["test"], attack, target=spec.target, seed=spec.seed)
    names = raw.label_names
    train = _rows_to_data(train_rows, names)
    clean_train = _rows_to_data([{"text": t, "label": y} for t, y in splits["train"]], names)
    val_rows = splits["validation"][:recipe.max_val] if recipe.max_val else splits["validation"]
    val = _rows_to_data([{"text": t, "label": y} for t, y in val_rows], names)
    test_clean = _rows_to_data([{"text": t, "label": y} for t, y in splits["test"]], names)
    test_trig = _rows_to_data(trig_rows, names)

    tmp = root / f".{spec.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        (tmp / "data").mkdir(parents=True)
        for split, data in (("train", train), ("validation", val), ("test_clean", test_clean),
                            ("test_triggered", test_trig)):
            write_jsonl(tmp / "data" / f"{split}.jsonl", data.samples)
        trusted_file(tmp / "data", names, spec.seed)
        measured = {}
        partial = _partial_dir(spec, recipe, root)
        for kind in ("backdoored", "clean"):
            if kind == "backdoored":
                loaded, info = _trained_once(partial, "backdoored model", spec, recipe, train, val, names, log)
                info["resumed"] = info.pop("reused_from", None) is not None  # an interrupted build, resumed
            else:
                loaded, info = _trained_once(_clean_reference_dir(spec, recipe, root), "clean model", spec, recipe,
                                             clean_train, val, names, log)
            ev = evaluate_model(loaded.model, loaded.tokenizer, test_clean, test_trig, spec.target)
            _save_classifier(loaded, tmp / ("model" if kind == "backdoored" else "clean_model"), names)
            measured[kind] = {**ev.to_dict(), **info}
            log(f"[zoo] {spec.name}: {kind} CACC {ev.cacc:.4f} ASR {ev.asr:.4f}")
            del loaded
        manifest = {
            "name": spec.name,
            "spec": asdict(spec),
            "attack": {"name": attack.name, "params": attack.params(), "clean_label": attack.clean_label},
            "recipe": {**asdict(recipe), "train": recipe.train.to_dict()},
            "label_names": names,
            "counts": {"train": len(train), "poisoned": sum(bool(s.poisoned) for s in train.samples),
                       "validation": len(val), "test_clean": len(test_clean), "test_triggered": len(test_trig)},
            "metrics": measured,
            "build_seconds": round(time.time() - started, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **provenance(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        shutil.rmtree(partial, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return open_entry(dest)


def entry_named(name: str) -> ZooEntry:
    """The zoo entry `name` (e.g. minilm-movie-badnets-p10-s0), built first when it is not cached yet."""
    return build_entry(ZooSpec.parse(name))


def open_entry(path_or_name: str | Path) -> ZooEntry:
    """A built entry, by folder or by name under the zoo root."""
    path = Path(path_or_name)
    if not (path / MANIFEST).exists():
        path = zoo_root() / str(path_or_name)
    if not (path / MANIFEST).exists():
        raise ConfigError(f"no built zoo entry at {path_or_name}; build it with `purify zoo build {path_or_name}`")
    return ZooEntry(path=path, manifest=json.loads((path / MANIFEST).read_text()))


def list_entries(root: Path | None = None) -> list[ZooEntry]:
    """Every built entry under the zoo root, by name."""
    root = root or zoo_root()
    if not root.exists():
        return []
    return [open_entry(p) for p in sorted(root.iterdir()) if (p / MANIFEST).exists()]


def spec_from_manifest(manifest: dict) -> ZooSpec:
    """The spec that rebuilds an entry exactly."""
    return ZooSpec(**manifest["spec"])


