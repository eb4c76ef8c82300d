"""The w2s_distill strategy: inversion and baselines, the clean teacher, the LoRA student on the distillation loop,
and the merged model with its report."""
from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from purify.architecture import head_module_names, is_decoder_classifier, pools_last_token
from purify.checkpoint import LoadedModel
from purify.data import TaskData
from purify.device import model_device, seed_everything
from purify.errors import ConfigError, DataError
from purify.inference import predict_logits
from purify.inversion import insertion_vocabulary
from purify.lora import lora_target_modules
from purify.probe import TRIGGER_RATE, BackdoorProbe, probe_or_invert, without_carriers
from purify.registry import Strategy, StrategyResult, register_strategy
from purify.training import accuracy_on

from .augment import Augmenter, insertion_flip_rate, inverted_flip_rate
from .config import FLIP_PROBE_SAMPLES, W2SDistillConfig
from .features import FeatureTap, pooled_outputs
from .loop import DistillLoop
from .teacher import Teacher, load_teacher

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


@dataclass
class _Prepared:
    """What fit measures before training: the data left once trigger carriers are dropped, and the baselines."""

    train: TaskData
    validation: TaskData
    words: list[str]
    backdoor: BackdoorProbe | None
    dropped: dict
    flip_texts: list[str]
    baseline: float
    baseline_flip: float
    inverted: dict[str, float]
    inverted_flip_before: float | None
    inversion_seconds: float


class W2SDistill(Strategy):
    """Unlearn a backdoor by LoRA-distilling the suspicious model towards a small clean teacher on clean data."""

    config: W2SDistillConfig
    fast_options = {"teacher": "tiny", "epochs": 8, "lr": 3e-3, "max_length": 32}

    def fit(self, loaded: LoadedModel, train: TaskData, validation: TaskData, *,
            probe: BackdoorProbe | None = None) -> StrategyResult:
        cfg = self.config
        if loaded.task != "classification":
            raise ConfigError("w2s_distill unlearns sequence classifiers; this checkpoint has a "
                              f"{loaded.task!r} head")
        if len(train) == 0 or len(validation) == 0:
            raise DataError("w2s_distill needs clean training and validation samples")
        started = time.time()
        student, tokenizer = loaded.model, loaded.tokenizer
        head_names = head_module_names(student)
        prep = self._prepare(student, tokenizer, train, validation, probe, started)
        teacher, teacher_info = None, {"teacher": None}
        teacher_started = time.time()
        if cfg.uses_teacher:
            teacher, teacher_info = load_teacher(cfg, loaded, prep.train, prep.validation,
                                                 is_decoder_classifier(student, tokenizer))
            teacher.model.to(model_device(student)).eval()
        teacher_seconds = time.time() - teacher_started
        loop = self._loop(student, tokenizer, head_names, teacher, prep)
        try:
            outcome = loop.run()
        finally:
            loop.tap.remove()
            if teacher is not None:
                teacher.tap.remove()
        history, best = outcome.history, outcome.kept_epoch
        assert best is not None  # DistillLoop.choose always names an epoch
        for record in history:
            record["kept"] = record["epoch"] == best
        import transformers  # loaded with the model already

        scratch = tempfile.TemporaryDirectory(prefix="purify-w2s-lora-")  # handed to the result, which deletes it
        try:
            loop.model.save_pretrained(scratch.name)
            merged = loop.model.merge_and_unload().eval()
            assert isinstance(merged, transformers.PreTrainedModel)  # peft hints nn.Module; it is the student
            final = accuracy_on(merged, tokenizer, prep.validation.texts, prep.validation.labels,
                                max_length=cfg.max_length)
        except BaseException:
            scratch.cleanup()
            raise
        extras = {**teacher_info, **self._extras(prep, history, best, merged, head_names, loop),
                  "seconds": round(time.time() - started, 1),
                  # where the time goes: trigger inversion, teacher (trained or loaded from the cache), the epochs'
                  # training steps and their validation passes (per epoch in the trajectory)
                  "phase_seconds": {"inversion": round(prep.inversion_seconds, 1),
                                    "teacher": round(teacher_seconds, 1),
                                    "training": round(sum(h["training_seconds"] for h in history), 1),
                                    "validation": round(sum(h["validation_seconds"] for h in history), 1)}}
        return StrategyResult(model=merged, trajectory=history, baseline_val_accuracy=prep.baseline,
                              final_val_accuracy=final, extras=extras, files={"lora_adapter": scratch.name},
                              scratch=[scratch])

    def _prepare(self, student: PreTrainedModel, tokenizer, train: TaskData, validation: TaskData,
                 probe: BackdoorProbe | None, started: float) -> _Prepared:
        """Invert the trigger (or take the run's probe), drop its carriers, and measure the baselines."""
        cfg = self.config
        words = insertion_vocabulary(tokenizer)
        backdoor = self._backdoor_probe(student, tokenizer, train, probe)
        inversion_seconds = time.time() - started
        train, dropped = without_carriers(train, backdoor, cfg.drop_trigger_rate)
        validation, dropped_val = without_carriers(validation, backdoor, cfg.drop_trigger_rate)
        dropped["validation_samples"] = dropped_val["samples"]
        flip_texts = validation.subset(range(min(len(validation), FLIP_PROBE_SAMPLES))).texts
        baseline = accuracy_on(student, tokenizer, validation.texts, validation.labels, max_length=cfg.max_length)
        baseline_flip = insertion_flip_rate(student, tokenizer, flip_texts, words, max(1, cfg.augment_words),
                                            seed=cfg.seed, max_length=cfg.max_length)
        inverted = backdoor.weighted(cfg.inversion_words) if backdoor is not None else {}
        return _Prepared(train, validation, words, backdoor, dropped, flip_texts, baseline, baseline_flip, inverted,
                         inverted_flip_rate(student, tokenizer, validation, backdoor, cfg), inversion_seconds)

    def _loop(self, student: PreTrainedModel, tokenizer, head_names: list[str], teacher: Teacher | None,
              prep: _Prepared) -> DistillLoop:
        """The LoRA student, its feature projector and augmenter, on the distillation loop (seeded here)."""
        cfg = self.config
        device = model_device(student)
        last_token = pools_last_token(student)
        seed_everything(cfg.seed)
        projector = None
        if cfg.gamma > 0:
            assert teacher is not None  # gamma > 0 uses the teacher
            _, s_feats = pooled_outputs(student, tokenizer, prep.train.texts[:2], max_length=cfg.max_length)
            _, t_feats = teacher.outputs(prep.train.texts[:2], cfg.max_length)
            projector = nn.Linear(s_feats.shape[1], t_feats.shape[1]).to(device)
        original_logits = None
        if cfg.perturbed_target == "original" and cfg.uses_teacher:  # before LoRA: the suspicious model itself
            original_logits = torch.from_numpy(predict_logits(student, tokenizer, prep.train.texts,
                                                              max_length=cfg.max_length)).float()
        peft_model = self._with_lora(student, head_names)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        proj_params = list(projector.parameters()) if projector is not None else []
        wrapped = peft_model.base_model.model
        assert isinstance(wrapped, nn.Module)  # the student inside the LoRA wrapper
        tap = FeatureTap(wrapped.get_submodule(head_names[0]), last_token)
        augmenter = Augmenter(cfg, prep.words, prep.inverted) if teacher is not None else None
        validation, backdoor = prep.validation, prep.backdoor
        return DistillLoop(cfg, peft_model, tokenizer, tap, params, projector, proj_params, teacher, augmenter,
                           prep.train, validation, prep.flip_texts,
                           lambda model: inverted_flip_rate(model, tokenizer, validation, backdoor, cfg),
                           original_logits)

    def _extras(self, prep: _Prepared, history: list[dict], best: int, merged: nn.Module, head_names: list[str],
                loop: DistillLoop) -> dict:
        """The report of the run: the kept epoch, the flip rates before and after, augmentation and LoRA."""
        cfg, backdoor = self.config, prep.backdoor
        conflicts = [h["conflict_fraction"] for h in history if "conflict_fraction" in h]
        kept = next(h for h in history if h["epoch"] == best)  # its flip rates were measured on these weights
        return {
            "best_epoch": best,
            "surgery": cfg.surgery,
            "conflict_fraction": float(np.mean(conflicts)) if conflicts else None,
            "insertion_flip": {"words": max(1, cfg.augment_words), "probe_samples": len(prep.flip_texts),
                               "before": prep.baseline_flip, "after": kept["val_insert_flip"]},
            "augmentation": {"prob": cfg.augment_prob, "words": cfg.augment_words, "vocabulary": len(prep.words),
                             "inverted_share": cfg.inverted_share, "inverted_words": prep.inverted},
            "inversion": backdoor.summary() if backdoor is not None else None,
            "dropped_by_inversion": prep.dropped,
            "inverted_flip": {"target": backdoor.target if backdoor is not None else None,
                              "before": prep.inverted_flip_before,
                              "after": kept["val_inverted_flip"]},
            "lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                     "target_modules": lora_target_modules(merged), "modules_to_save": head_names,
                     "trainable_parameters": int(sum(p.numel() for p in loop.shared))},
            "loss_weights": {"alpha": cfg.alpha, "beta": cfg.beta, "gamma": cfg.gamma,
                             "temperature": cfg.temperature, "rho": cfg.rho},
        }

    def _backdoor_probe(self, student: PreTrainedModel, tokenizer, train: TaskData,
                        probe: BackdoorProbe | None) -> BackdoorProbe | None:
        """The run's probe, else a trigger inversion on the clean training data; None when the augmentation
        uses no inverted words."""
        cfg = self.config
        if not cfg.uses_teacher or cfg.augment_prob <= 0 or cfg.augment_words < 1 or cfg.inverted_share <= 0:
            return None
        return probe_or_invert(student, tokenizer, train, probe, source="w2s_distill:inversion",
                               candidates=cfg.inversion_candidates, keep=cfg.inversion_words, seed=cfg.seed,
                               max_length=cfg.max_length, min_rate=cfg.drop_trigger_rate or TRIGGER_RATE)

    def _with_lora(self, model: PreTrainedModel, head_names: list[str]) -> PeftModel:
        from peft import LoraConfig, get_peft_model

        cfg = self.config
        # peft hints lora_alpha as int; it only scales by alpha / r, and the option is a float
        peft_config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]
                                 lora_dropout=cfg.lora_dropout, target_modules=lora_target_modules(model),
                                 modules_to_save=list(head_names), task_type="SEQ_CLS")
        with warnings.catch_warnings():  # peft calls a transformers API that transformers 5 marks deprecated
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(model, peft_config)


register_strategy("w2s_distill", W2SDistillConfig, W2SDistill)
