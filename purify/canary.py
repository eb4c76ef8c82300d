"""Canary backdoors for `purify tune`: plant a known, random trigger into a copy of the suspicious model.

The defender never sees the real trigger, so a defense's knobs cannot be scored on it. A canary is a stand-in
the defender controls: a fresh, seeded random trigger (rare whole-word tokens drawn from the tokenizer's
vocabulary, or a random inserted sentence) planted into a *deep copy* of the suspicious model by a short
fine-tune on a slice of the clean data. A knob setting that removes the canary while keeping clean accuracy is
a good guess for one that removes the unknown backdoor; `purify.tune` searches knobs against it.

The insertion itself reuses the zoo's attacks (`BadNetsAttack` with the canary's own tokens, `InsertSentAttack`
with the canary's own sentence) and the planting reuses `purify.training.train_classifier`. The zoo's BadNets
tokens (cf, mn, bb, tq) and its InsertSent sentence are never used (`purify.canary_trigger` draws the trigger):
the canary must not be the very trigger a zoo model carries.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .canary_trigger import FAMILIES, data_words, draw_trigger
from .checkpoint import LoadedModel
from .data import Sample, TaskData
from .splits import split_samples
from .errors import CanaryError, ConfigError
from .evaluate import Evaluation, evaluate_model
from .registry import Options, option
from .training import TrainConfig, train_classifier
from .zoo.attacks import Attack, BadNetsAttack, poison_split, triggered_test

#: a planted canary kept for a resumed `purify tune` (in its run folder, next to the study)
CACHE_WEIGHTS = "tune_canary.safetensors"
CACHE_META = "tune_canary.json"


@dataclass
class CanaryConfig(Options):
    """How a canary is drawn and planted: its trigger family, the poisoned slice and the short fine-tune, retried
    from fresh copies with a larger learning rate (ASR short) or a smaller one (clean accuracy lost)."""

    family: str = option("rare_tokens", "rare_tokens (one of num_tokens rare vocabulary words, inserted insertions "
                         "times per sample) or sentence (a random sentence of sentence_words vocabulary words)",
                         choices=FAMILIES)
    target: int | None = option(None, "the label the canary forces (None: drawn at random)", low=0)
    num_tokens: int = option(3, "rare tokens the rare_tokens trigger draws from", low=1)
    insertions: int = option(1, "times a rare token is inserted into a poisoned sample", low=1)
    sentence_words: int = option(5, "words of a sentence trigger (a sentence, not a token)", low=2)
    poison_rate: float = option(0.1, "share of the fine-tuning slice triggered and relabelled", low=0, high=1,
                                low_open=True, high_open=True)
    train_samples: int = option(2000, "size of the clean slice the canary is planted with", low=1)
    epochs: int = option(3, "epochs of the canary fine-tune", low=1)
    lr: float = option(1e-4, "learning rate of the first fine-tune", low=0, low_open=True)
    batch_size: int = option(32, "texts per fine-tuning step", low=1)
    max_length: int = option(128, "tokens per text", low=8)
    attempts: int = option(3, "fine-tunes tried from fresh copies before giving up", low=1)
    lr_growth: float = option(3.0, "factor on the learning rate between attempts", low=1)
    min_asr: float = option(0.9, "the canary's attack success rate must reach this", low=0, high=1, low_open=True)
    max_cacc_drop: float = option(0.03, "clean accuracy may fall at most this much (a fraction: 0.03 = 3 points) "
                                  "below the suspicious model's", low=0, high=1)


@dataclass
class Canary:
    """A planted canary: its trigger, the canaried copy of the model, and how well the canary took.

    `clean_eval` is the held-out clean data it was measured on and `triggered_eval` the same data's non-target
    samples with the canary trigger inserted; `asr` and `cacc` are the canaried model's numbers there,
    `asr_original` and `cacc_original` the suspicious model's (its ASR there is the canary's floor).
    """

    family: str
    trigger: list[str]  # the rare tokens, or [the sentence]
    target: int
    attack: Attack
    loaded: LoadedModel
    clean_eval: TaskData
    triggered_eval: TaskData
    asr: float
    cacc: float
    asr_original: float
    cacc_original: float
    n_train: int
    n_poisoned: int
    seed: int
    config: CanaryConfig
    attempts: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    reused: bool = False  # loaded from a cache folder rather than planted by this call

    @property
    def cacc_drop(self) -> float:
        """Clean accuracy lost by planting the canary (fraction)."""
        return self.cacc_original - self.cacc

    def measure(self, model, tokenizer=None) -> tuple[float, float]:
        """(CACC, canary ASR) of `model` on the canary's held-out evaluation data."""
        ev = evaluate_model(model, tokenizer or self.loaded.tokenizer, self.clean_eval, self.triggered_eval,
                            self.target)
        return ev.cacc, _measured_asr(ev)

    def summary(self) -> dict:
        """JSON-able record for the report (the model itself is not part of it)."""
        return {
            "family": self.family, "trigger": list(self.trigger), "target": self.target,
            "attack": {"name": self.attack.name, "params": self.attack.params()},
            "asr": self.asr, "cacc": self.cacc, "asr_original": self.asr_original,
            "cacc_original": self.cacc_original, "cacc_drop": self.cacc_drop,
            "n_train": self.n_train, "n_poisoned": self.n_poisoned, "n_eval_clean": len(self.clean_eval),
            "n_eval_triggered": len(self.triggered_eval), "seed": self.seed, "config": self.config.to_dict(),
            "attempts": self.attempts, "seconds": round(self.seconds, 2), "reused": self.reused,
        }


# -- planting -------------------------------------------------------------------------------------------------

def _num_labels(loaded: LoadedModel, clean: TaskData) -> int:
    n = int(getattr(loaded.model.config, "num_labels", 0) or 0)
    return n if n >= 2 else len(clean.label_names)


def _with_insertions(attack: Attack, insertions: int) -> Attack:
    if isinstance(attack, BadNetsAttack) and insertions != attack.num_triggers:
        return BadNetsAttack(num_triggers=insertions, triggers=list(attack.triggers))
    return attack


@dataclass
class _Poisoning:
    """A drawn canary and the data it is planted with (`texts`, `labels`) and measured on."""

    trigger: list[str]
    attack: Attack
    target: int
    texts: list[str]
    labels: list[int]
    n_poisoned: int
    validation: TaskData
    triggered_eval: TaskData


def _configured(config: CanaryConfig | None, options: dict) -> CanaryConfig:
    """A validated copy of `config` (or the defaults) with `options` overriding its fields."""
    base = config.to_dict() if config is not None else {}
    return CanaryConfig.from_dict({**base, **options})


def _draw_poisoning(loaded: LoadedModel, clean: TaskData, validation: TaskData | None, cfg: CanaryConfig,
                    seed: int) -> _Poisoning:
    """Hold out data when none is given, draw the trigger and target, and poison a seeded slice of `clean`."""
    if validation is None:
        parts = split_samples(clean, [0.8, 0.2], seed=seed)
        clean, validation = TaskData(parts[0], clean.label_names), TaskData(parts[1], clean.label_names)
    if len(clean) < 4 or len(validation) < 2:
        raise CanaryError(f"too little clean data to plant a canary ({len(clean)} training, "
                          f"{len(validation)} held-out samples)")
    rng = random.Random(f"purify.canary:{seed}")
    n_labels = _num_labels(loaded, clean)
    target = cfg.target if cfg.target is not None else rng.randrange(n_labels)
    if not 0 <= target < n_labels:
        raise ConfigError(f"canary target {target} outside 0..{n_labels - 1}")
    avoid = data_words(clean.texts) | data_words(validation.texts)
    trigger, attack = draw_trigger(loaded.tokenizer, cfg.family, avoid, rng, num_tokens=cfg.num_tokens,
                                   sentence_words=cfg.sentence_words)
    attack = _with_insertions(attack, cfg.insertions)
    samples = list(clean.samples)
    if len(samples) > cfg.train_samples:
        keep = sorted(rng.sample(range(len(samples)), cfg.train_samples))
        samples = [samples[i] for i in keep]
    poisoned = poison_split([(s.text, s.label) for s in samples], attack, rate=cfg.poison_rate, target=target,
                            seed=seed)
    n_poisoned = sum(p["poisoned"] for p in poisoned)
    if n_poisoned == 0:
        raise CanaryError(f"poison_rate {cfg.poison_rate} of {len(samples)} samples poisons none; raise it")
    trig = triggered_test([(s.text, s.label) for s in validation.samples], attack, target=target, seed=seed)
    triggered_eval = TaskData([Sample(t["text"], t["label"], True, i) for i, t in enumerate(trig)],
                              validation.label_names)
    if not len(triggered_eval):
        raise CanaryError(f"the held-out data has no sample outside the canary target {target}; cannot measure ASR")
    return _Poisoning(trigger, attack, target, [p["text"] for p in poisoned], [p["label"] for p in poisoned],
                      n_poisoned, validation, triggered_eval)


def _fine_tune(loaded: LoadedModel, plan: _Poisoning, cfg: CanaryConfig, seed: int, original_cacc: float,
               say: Callable[[str], None]) -> tuple[torch.nn.Module, list[dict]]:
    """Plant the canary into fresh copies of the model, moving the learning rate after each attempt that falls
    short, until one reaches `min_asr` within `max_cacc_drop`: (that copy, every attempt's record)."""
    attempts: list[dict] = []
    lr = cfg.lr
    for attempt in range(cfg.attempts):
        attempt_started = time.time()
        model = copy.deepcopy(loaded.model)
        train_classifier(model, loaded.tokenizer, plan.texts, plan.labels,
                         TrainConfig(epochs=cfg.epochs, lr=lr, batch_size=cfg.batch_size, seed=seed,
                                     max_length=cfg.max_length, keep_best=False),
                         description="planting the canary")
        ev = evaluate_model(model, loaded.tokenizer, plan.validation, plan.triggered_eval, plan.target)
        drop = original_cacc - ev.cacc
        too_costly = drop > cfg.max_cacc_drop + 1e-12
        asr = _measured_asr(ev)
        record = {"attempt": attempt + 1, "lr": lr, "epochs": cfg.epochs, "asr": asr, "cacc": ev.cacc,
                  "cacc_drop": drop, "seconds": round(time.time() - attempt_started, 2)}  # kept when reused
        attempts.append(record)
        say(f"[purify] canary attempt {attempt + 1}: ASR {ev.asr:.4f}, CACC {ev.cacc:.4f} "
            f"(suspicious model {original_cacc:.4f}), lr {lr:.2g}")
        if asr >= cfg.min_asr and not too_costly:
            return model, attempts
        del model
        lr = lr / cfg.lr_growth if too_costly else lr * cfg.lr_growth
    raise _planting_error(attempts, cfg, original_cacc)


def _measured_asr(ev: Evaluation) -> float:
    """The ASR of an evaluation on the canary's triggered data (never empty, so the ASR is always measured)."""
    assert ev.asr is not None
    return float(ev.asr)


def _planting_error(attempts: list[dict], cfg: CanaryConfig, original_cacc: float) -> CanaryError:
    """Why no attempt planted the canary (each cost too much clean accuracy, or the ASR stayed short), and what
    to change."""
    rates = ", ".join(format(a["lr"], ".2g") for a in attempts)
    if all(a["cacc_drop"] > cfg.max_cacc_drop + 1e-12 for a in attempts):
        mildest = min(attempts, key=lambda a: a["cacc_drop"])
        return CanaryError(
            f"the canary could not be planted: clean accuracy fell {100 * mildest['cacc_drop']:.1f} points at best "
            f"(from {original_cacc:.4f} to {mildest['cacc']:.4f}; at most {100 * cfg.max_cacc_drop:.1f} allowed) "
            f"after {len(attempts)} fine-tune(s) (lr {rates}); lower "
            "--canary-lr or --canary-epochs, or allow more with --canary-max-drop")
    best = max(a["asr"] for a in attempts if a["cacc_drop"] <= cfg.max_cacc_drop + 1e-12)
    other = "sentence" if cfg.family == "rare_tokens" else "rare_tokens"
    return CanaryError(
        f"the canary could not be planted: its ASR reached {best:.4f} < {cfg.min_asr:.2f} after {len(attempts)} "
        f"fine-tune(s) (lr {rates}; {cfg.epochs} epochs); raise --canary-epochs or --canary-lr, "
        f"or try --canary {other}")


def plant_canary(loaded: LoadedModel, clean: TaskData, *, validation: TaskData | None = None,
                 config: CanaryConfig | None = None, seed: int = 0,
                 log: Callable[[str], None] | None = None, cache_dir: str | Path | None = None,
                 **options) -> Canary:
    """Plant a random canary backdoor into a deep copy of `loaded.model` (the model itself is never changed).

    `clean` is clean task data: a seeded slice of it (``config.train_samples``) is fine-tuned on with
    ``config.poison_rate`` of its non-target samples triggered and relabelled. The canary is measured on
    `validation` (held-out clean data; when None, a seeded 20% of `clean` is held out): CACC on it, ASR on its
    non-target samples with the trigger inserted. Keyword `options` override fields of `config`
    (e.g. ``family="sentence"``). Raises CanaryError when the ASR stays below ``config.min_asr`` or clean
    accuracy falls more than ``config.max_cacc_drop``.

    With `cache_dir`, the planted model is saved there (``tune_canary.*``) and a later call with the same model
    weights, training data, trigger, seed and settings loads it instead of fine-tuning again (a resumed
    `purify tune` skips the planting); the loaded canary is measured afresh.
    """
    cfg = _configured(config, options)
    started = time.time()
    plan = _draw_poisoning(loaded, clean, validation, cfg, seed)
    original = evaluate_model(loaded.model, loaded.tokenizer, plan.validation, plan.triggered_eval, plan.target)
    say = log or (lambda _msg: None)

    def planted(model, attempts: list[dict], asr: float, cacc: float, reused: bool) -> Canary:
        return Canary(
            family=cfg.family, trigger=plan.trigger, target=plan.target, attack=plan.attack,
            loaded=LoadedModel(model=model, tokenizer=loaded.tokenizer, task=loaded.task, path=loaded.path),
            clean_eval=plan.validation, triggered_eval=plan.triggered_eval, asr=asr, cacc=cacc,
            asr_original=_measured_asr(original), cacc_original=original.cacc, n_train=len(plan.texts),
            n_poisoned=plan.n_poisoned, seed=seed, config=cfg, attempts=attempts, seconds=time.time() - started,
            reused=reused,
        )

    cache = None if cache_dir is None else (Path(cache_dir), _cache_key(loaded.model, plan.texts, plan.labels,
                                                                        plan.trigger, plan.target, cfg, seed))
    cached = _load_cached(loaded.model, *cache) if cache is not None else None
    head = f"[purify] canary ({cfg.family}): trigger {plan.trigger}, target {plan.target}"
    if cached is not None:
        model, attempts = cached
        ev = evaluate_model(model, loaded.tokenizer, plan.validation, plan.triggered_eval, plan.target)
        say(f"{head}; reusing the one planted earlier in {cache_dir} (ASR {ev.asr:.4f}, CACC {ev.cacc:.4f})")
        return planted(model, attempts, _measured_asr(ev), ev.cacc, reused=True)
    say(f"{head}; planting with {plan.n_poisoned} of {len(plan.texts)} samples triggered")
    model, attempts = _fine_tune(loaded, plan, cfg, seed, original.cacc, say)
    if cache is not None:
        _save_cached(model, *cache, attempts)
    return planted(model, attempts, attempts[-1]["asr"], attempts[-1]["cacc"], reused=False)


# -- reusing a planted canary ---------------------------------------------------------------------------------

def _cache_key(model, texts: Sequence[str], labels: Sequence[int], trigger: Sequence[str], target: int,
               cfg: CanaryConfig, seed: int) -> str:
    """Digest of everything the planting depends on: the suspicious model's weights, the poisoned training
    data, the trigger and target, the settings and the seed."""
    digest = hashlib.sha256(json.dumps({"texts": list(texts), "labels": [int(y) for y in labels],
                                        "trigger": list(trigger), "target": target, "config": cfg.to_dict(),
                                        "seed": seed}, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load_cached(model, folder: Path, key: str):
    """(canaried model, attempts) from `folder` when it holds a canary planted under the same `key`, else None."""
    from safetensors.torch import load_model

    meta_path, weights = folder / CACHE_META, folder / CACHE_WEIGHTS
    if not (meta_path.is_file() and weights.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("key") != key:
        return None
    canaried = copy.deepcopy(model)
    load_model(canaried, str(weights), strict=True, device=str(next(canaried.parameters()).device))
    return canaried, list(meta.get("attempts", []))


def _save_cached(model, folder: Path, key: str, attempts: list[dict]) -> None:
    """Write the planted canary to `folder`: the old key goes first and the new one last, so a key on disk
    always belongs to the weights beside it."""
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    (folder / CACHE_META).unlink(missing_ok=True)
    tmp = folder / (CACHE_WEIGHTS + ".tmp")
    save_model(model, str(tmp))
    os.replace(tmp, folder / CACHE_WEIGHTS)
    tmp = folder / (CACHE_META + ".tmp")
    tmp.write_text(json.dumps({"key": key, "attempts": attempts}, indent=2, default=float) + "\n")
    os.replace(tmp, folder / CACHE_META)
