"""CACC and ASR of a model on a clean and a triggered file, with the tokenization every other step uses."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from .data import TaskData
from .inference import predict
from .metrics import accuracy, attack_success_rate


@dataclass
class Evaluation:
    """Clean accuracy (CACC) and attack success rate (ASR) with the counts they rest on."""

    cacc: float
    asr: float | None
    n_clean: int
    n_triggered: int
    target: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_model(model: nn.Module, tokenizer, clean: TaskData, triggered: TaskData | None = None,
                   target: int | None = None, *, batch_size: int = 64, progress: bool = False) -> Evaluation:
    """CACC on `clean`; ASR on `triggered` (share of non-target samples predicted as `target`)."""
    cacc = accuracy(predict(model, tokenizer, clean.texts, batch_size=batch_size,
                            progress="evaluating clean" if progress else None), clean.labels)
    asr, n_trig = None, 0
    if triggered is not None and len(triggered):
        if target is None:
            raise ValueError("ASR needs the attack's target label")
        preds = predict(model, tokenizer, triggered.texts, batch_size=batch_size,
                        progress="evaluating triggered" if progress else None)
        asr, n_trig = attack_success_rate(preds, triggered.labels, target)
    return Evaluation(cacc=cacc, asr=asr, n_clean=len(clean), n_triggered=n_trig, target=target)
