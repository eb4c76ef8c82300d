"""The shared training loop: the learning-rate schedule, patience, and the kept epoch's weights restored."""
import numpy as np
import pytest
import torch
from torch import nn

from purify.testing.tiny import tiny_model, tiny_tokenizer
from purify.testing.tiny_task import make_tiny_task
from purify.training import EpochLoop, TrainConfig, bucketed_steps, length_bucketed_batches, linear_warmup_decay


class _Scripted(EpochLoop):
    """A one-weight loop whose epochs score as scripted; it notes the weight each epoch ended with."""

    def __init__(self, scores: list[float], **config) -> None:
        self.weight = nn.Parameter(torch.zeros(1))
        cfg = TrainConfig(epochs=len(scores), lr=0.1, weight_decay=0.0, warmup_fraction=0.0, grad_clip=0.0, **config)
        super().__init__([], [self.weight], cfg, steps_per_epoch=2, description="scripted")
        self.scores, self.ended = scores, {}

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return [np.arange(1), np.arange(1)]

    def step(self, idx: np.ndarray) -> float:
        assert self.weight.grad is None  # every step starts with cleared gradients
        (-self.weight.sum()).backward()
        return 1.0

    def record(self, epoch: int, steps: list[float], seconds: float) -> dict:
        self.ended[epoch] = float(self.weight.detach())
        return {"epoch": epoch, "steps": len(steps), "val_accuracy": self.scores[epoch - 1]}


def test_schedule_warms_up_then_decays_to_zero():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = linear_warmup_decay(optimizer, total=10, warmup_fraction=0.2)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])


def test_patience_stops_and_the_best_epoch_is_restored():
    loop = _Scripted([0.5, 0.7, 0.6, 0.6, 0.9], patience=2)
    result = loop.run()
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert result.best_epoch == 2 and result.best_val_accuracy == 0.7 and result.kept_epoch == 2
    assert float(loop.weight.detach()) == loop.ended[2] != loop.ended[4]


def test_without_keep_best_the_last_weights_stay():
    loop = _Scripted([0.5, 0.7, 0.6], keep_best=False)
    result = loop.run()
    assert result.best_epoch == 2 and result.kept_epoch is None
    assert float(loop.weight.detach()) == loop.ended[3]


def test_a_subclass_chooses_among_its_candidates():
    class Earliest(_Scripted):
        def candidates(self, history, best_epoch, best):
            return [r["epoch"] for r in history if r["val_accuracy"] >= best - 0.15]

        def choose(self, history, candidates):
            return min(candidates)

    loop = Earliest([0.5, 0.6, 0.7, 0.55])
    assert loop.run().kept_epoch == 2
    assert float(loop.weight.detach()) == loop.ended[2]


def test_bucketed_steps_counts_the_batches_made():
    rng = np.random.default_rng(0)
    for n, batch in [(1, 4), (199, 4), (200, 4), (201, 4), (7, 32)]:
        assert len(length_bucketed_batches(np.arange(n), batch, rng)) == bucketed_steps(n, batch)


def test_train_classifier_keeps_the_best_validation_epoch():
    from purify.training import train_classifier

    task = make_tiny_task(1, n_train=64, n_val=32)
    model, tok = tiny_model("bert", seed=3), tiny_tokenizer()
    result = train_classifier(model, tok, task.train.texts, task.train.labels,
                              TrainConfig(epochs=3, lr=3e-3, batch_size=16, max_length=32),
                              val=(task.validation.texts, task.validation.labels))
    assert len(result.history) == 3 and result.best_epoch == result.kept_epoch
    assert result.best_val_accuracy == max(r["val_accuracy"] for r in result.history)
    assert not model.training
