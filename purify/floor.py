"""The compute floor of a run: one batched forward+backward pass over its training data, measured in that run.

Wall times on a shared machine drift with whatever else runs; a stage's time divided by the floor measured in the
same process (its "epoch floors") does not. The floor is timed on a seeded sample of the texts, batched in length
order as every training loop here batches, and scaled to the whole set; the model's weights and gradients are
left as they were.
"""
from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .errors import ConfigError
from .inference import MAX_LENGTH, labelled_batch, length_order

FLOOR_SAMPLES = 256


def epoch_floor_seconds(model: nn.Module, tokenizer, texts: Sequence[str], labels: Sequence[int], *,
                        batch_size: int = 32, max_length: int = MAX_LENGTH, samples: int = FLOOR_SAMPLES,
                        seed: int = 0) -> float:
    """Seconds one forward+backward pass over all of `texts` takes, timed on `samples` of them and scaled."""
    if not texts:
        return 0.0
    chosen = random.Random(seed).sample(range(len(texts)), min(samples, len(texts)))
    part = [texts[i] for i in chosen]
    part_labels = [labels[i] for i in chosen]
    order = length_order(tokenizer, part, max_length)
    was_training = model.training
    saved = {n: p.grad for n, p in model.named_parameters()}
    model.train()
    try:
        with torch.random.fork_rng(devices=[]):  # dropout draws here must not shift the run's random stream
            started = time.perf_counter()
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                batch = labelled_batch(model, tokenizer, [part[i] for i in idx], [part_labels[i] for i in idx],
                                       max_length)
                model(**batch).loss.backward()
            seconds = time.perf_counter() - started
    finally:
        for n, p in model.named_parameters():
            p.grad = saved[n]
        model.train(was_training)
    return seconds * len(texts) / len(part)


def in_floors(timings: Mapping[str, float], floor: float) -> dict[str, float]:
    """Each stage's seconds as a multiple of the floor (empty when the floor is 0)."""
    if floor <= 0:
        return {}
    return {stage: round(seconds / floor, 2) for stage, seconds in timings.items()}


def set_threads(threads: int | None) -> int:
    """Use `threads` torch threads (None: one per core this process may use); returns the number in force."""
    import os

    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    return torch.get_num_threads()
