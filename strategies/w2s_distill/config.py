"""The knobs of w2s_distill: the distillation run, its losses, the LoRA adapters, the epoch kept and the
teacher-supervised input perturbation."""
from __future__ import annotations

from dataclasses import dataclass

from purify.errors import ConfigError
from purify.inference import MAX_LENGTH
from purify.registry import StrategyConfig, option

SURGERIES = ("none", "safegrad")
SELECTIONS = ("accuracy", "inverted_flip")
PERTURBED_TARGETS = ("teacher", "self", "original")
AUTO_TEACHER = "auto"  # minilm-l3 for an encoder student, minilm-l6 for a decoder student
FLIP_PROBE_SAMPLES = 256  # validation texts used for the insertion-flip diagnostic


@dataclass
class W2SDistillConfig(StrategyConfig):
    """Knobs of the weak-to-strong unlearner: the distillation run, its losses, the LoRA adapters, the epoch kept
    and the teacher-supervised input perturbation.

    perturbed_target: "teacher" pulls a perturbed text towards the teacher's distribution on it; "self" towards the
    student's own (no gradient) on the text before the words were inserted: the backdoor is dormant there, so the
    strong model learns to ignore inserted words without inheriting the weak teacher's errors on them (which bound
    the ASR a student imitating it can reach); "original" towards the suspicious model's eval-mode distribution on
    the unperturbed text, computed once before training (frozen, unlike "self"). Clean texts follow the teacher
    either way, and feature alignment always uses the teacher's feature of the text the student saw.
    """

    teacher: str = option(AUTO_TEACHER, "a teacher recipe (see teachers.RECIPES) or a clean model folder; auto = "
                          "minilm-l3 for an encoder student, minilm-l6 for a decoder student")
    epochs: int = option(5, "passes of the distillation run", low=1)
    lr: float = option(1e-3, "learning rate of the LoRA weights, the head copy and the projector", low=0,
                       low_open=True)
    batch_size: int = option(32, "texts per micro-batch", low=1)
    grad_accum: int = option(1, "micro-batches per optimizer step (gradients summed, surgery done once per step)",
                             low=1)
    alpha: float = option(1.0, "weight of cross-entropy on the labels", low=0)
    beta: float = option(1.0, "weight of the T^2-scaled KL to the teacher", low=0)
    gamma: float = option(1.0, "weight of the feature alignment to the teacher", low=0)
    temperature: float = option(2.0, "distillation temperature T", low=0, low_open=True)
    surgery: str = option("none", "none: one summed loss; safegrad: the task-gradient component conflicting with the "
                          "alignment gradient is removed each step", choices=SURGERIES)
    rho: float = option(1.0, "weight of the alignment gradient in the SafeGrad update g_task' + rho * g_align", low=0)
    lora_rank: int = option(8, "rank of the LoRA adapters on the attention projections", low=1)
    lora_alpha: float = option(16.0, "LoRA scaling alpha")
    lora_dropout: float = option(0.1, "LoRA dropout", low=0, high=1, high_open=True)
    weight_decay: float = option(0.01, "AdamW weight decay", low=0)
    warmup_fraction: float = option(0.06, "share of the steps with a linear learning-rate warm-up", low=0, high=1,
                                    high_open=True)
    grad_clip: float = option(1.0, "global gradient-norm clip", low=0)
    max_length: int = option(MAX_LENGTH, "tokens per text, for student and teacher alike", low=1)
    select_tolerance: float = option(0.0, "epochs whose clean validation accuracy is within this of the best can be "
                                     "kept", low=0)
    select_by: str = option("accuracy", "which of those is kept: accuracy (the latest) or inverted_flip (the one "
                            "whose inverted trigger words flip the fewest clean non-target validation texts, ties to "
                            "the latest; accuracy when there is no inversion); neither needs triggered data "
                            "(inverted_flip: benchmarks/experiments/w2s-select-by-inverted-flip)", choices=SELECTIONS)
    patience: int | None = option(None, "stop after this many epochs without a new best validation accuracy (none: "
                                  "run all epochs)", low=1)
    augment_prob: float = option(0.5, "share of the clean training texts that get random words of the student's "
                                 "vocabulary inserted and are supervised by the teacher, so the student unlearns "
                                 "reacting to stray words the teacher ignores (0, or no teacher: off)", low=0, high=1)
    augment_words: int = option(2, "at most this many words inserted into one perturbed text", low=0)
    augment_keeps_label: bool = option(False, "a perturbed text also keeps its label for cross-entropy "
                                       "(benchmarks/experiments/w2s-augment-keeps-label)")
    perturbed_target: str = option("teacher", "whose distribution KD pulls a perturbed text towards: teacher, self "
                                   "or original (benchmarks/experiments/w2s-perturbed-target-self)",
                                   choices=PERTURBED_TARGETS)
    inverted_share: float = option(0.5, "share of the inserted words drawn from trigger inversion (the words that "
                                   "flip the most clean samples of the other labels) instead of the whole "
                                   "vocabulary; 0 skips the inversion", low=0, high=1)
    inversion_candidates: int = option(48, "words measured exactly per label during inversion", low=1)
    inversion_words: int = option(8, "words kept per label by that inversion", low=1)
    drop_trigger_rate: float | None = option(0.9, "leave out target-label training samples holding an inverted word "
                                             "that flips at least this share of probe samples, as a poisoned sample "
                                             "the pre-filter missed would teach the backdoor again (none keeps all)",
                                             low=0, low_open=True, high=1)

    def validate(self) -> None:
        super().validate()
        if not self.teacher:
            raise ConfigError("W2SDistillConfig: teacher must name a recipe or a model folder")
        if self.alpha + self.beta + self.gamma <= 0:
            raise ConfigError("W2SDistillConfig: at least one of alpha, beta, gamma must be > 0")

    @property
    def uses_teacher(self) -> bool:
        return self.beta > 0 or self.gamma > 0

    @classmethod
    def search_space(cls) -> dict[str, dict]:
        return {
            "lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
            "epochs": {"type": "int", "low": 2, "high": 8},
            "beta": {"type": "float", "low": 0.0, "high": 4.0},
            "gamma": {"type": "float", "low": 0.0, "high": 4.0},
            "temperature": {"type": "float", "low": 1.0, "high": 4.0},
            "lora_rank": {"type": "categorical", "choices": [4, 8, 16, 32]},
            "surgery": {"type": "categorical", "choices": list(SURGERIES)},
            "augment_prob": {"type": "float", "low": 0.0, "high": 1.0},
            "augment_words": {"type": "int", "low": 0, "high": 4},
            "inverted_share": {"type": "float", "low": 0.0, "high": 1.0},
            "augment_keeps_label": {"type": "categorical", "choices": [True, False]},
            "perturbed_target": {"type": "categorical", "choices": list(PERTURBED_TARGETS)},
        }
