"""w2s_distill: weak-to-strong unlearning (W2SDefense, arXiv 2410.14425) with a clean teacher and SafeGrad.

The suspicious model (the student) gets LoRA adapters on its attention projections plus a trainable copy of its
classification head, and is fine-tuned on clean data towards a small clean teacher: cross-entropy on the labels,
temperature-scaled KL to the teacher's label distribution, and a per-sample feature alignment between the
student's pooled feature (through a learned projector) and the teacher's pooled feature for the same text. Each
model tokenizes the raw text with its own tokenizer. With ``surgery="safegrad"`` the part of the task gradient
that conflicts with the alignment gradient is removed before each step (purify.surgery). The epoch kept is chosen
on clean validation data (accuracy, optionally the inverted-trigger flip rate), and the LoRA weights are merged, so
the result is an ordinary transformers model.

Modules: config (the knobs), features (the pooled feature tap), losses (the three terms), augment (inserted words
and flip rates), teacher, loop (the run on purify.training's EpochLoop) and strategy (fit; registers itself).
"""
from .augment import Augmenter, insertion_flip_rate, inverted_flip_rate
from .config import AUTO_TEACHER, PERTURBED_TARGETS, SELECTIONS, SURGERIES, W2SDistillConfig
from .features import FeatureTap, pool_hidden, pooled_outputs
from .loop import DistillLoop, kept_epoch, own_targets
from .losses import alignment_loss, distill_losses
from .strategy import W2SDistill
from .teacher import Teacher, load_teacher

__all__ = [
    "AUTO_TEACHER", "PERTURBED_TARGETS", "SELECTIONS", "SURGERIES", "Augmenter", "DistillLoop", "FeatureTap",
    "Teacher", "W2SDistill", "W2SDistillConfig", "alignment_loss", "distill_losses", "insertion_flip_rate",
    "inverted_flip_rate", "kept_epoch", "load_teacher", "own_targets", "pool_hidden", "pooled_outputs",
]
