"""CACC and ASR of a model on a clean and a triggered file, with the tokenization every other step uses."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from .data import TaskData
from .inference import predict
from .metrics import accuracy, attack_success_rate


@dataclass
class Evaluation:
    """Clean accuracy (CACC), attack success rate (ASR) and trigger lift, with the counts they rest on.

    `clean_target_rate` is the share of the clean file's non-target samples predicted as the target with no
    trigger; `trigger_lift` = ASR minus that rate: near 0 when no backdoor is left, whatever the ordinary errors.
    """

    cacc: float
    asr: float | None
    n_clean: int
    n_triggered: int
    target: int | None
    clean_target_rate: float | None = None
    trigger_lift: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_model(model: nn.Module, tokenizer, clean: TaskData, triggered: TaskData | None = None,
                   target: int | None = None, *, batch_size: int = 64, progress: bool = False) -> Evaluation:
    """CACC on `clean`; ASR on `triggered` (share of non-target samples predicted as `target`)."""
    clean_preds = predict(model, tokenizer, clean.texts, batch_size=batch_size,
                          progress="evaluating clean" if progress else None)
    cacc = accuracy(clean_preds, clean.labels)
    asr, n_trig, base, lift = None, 0, None, None
    if triggered is not None and len(triggered):
        if target is None:
            raise ValueError("ASR needs the attack's target label")
        preds = predict(model, tokenizer, triggered.texts, batch_size=batch_size,
                        progress="evaluating triggered" if progress else None)
        asr, n_trig = attack_success_rate(preds, triggered.labels, target)
        if any(y != target for y in clean.labels):
            base, _ = attack_success_rate(clean_preds, clean.labels, target)
            lift = asr - base
    return Evaluation(cacc=cacc, asr=asr, n_clean=len(clean), n_triggered=n_trig, target=target,
                      clean_target_rate=base, trigger_lift=lift)
