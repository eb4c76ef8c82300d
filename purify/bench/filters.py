"""The filters suite's cell: a filter's detection figures against the flags, and the per-sample gradients' cost."""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..checkpoint import LoadedModel
from ..data import TaskData
from ..inference import MAX_LENGTH
from ..filters.per_sample import (PerSampleGradients, length_sorted_batches, sample_batch, sample_objective,
                                  token_lengths)
from .matrix import Cell, _device_name, _peak_mb


def run_filter_cell(cell: Cell, work: Path) -> dict:  # runs in one go: `work` is not needed
    """Score an entry's poisoned training set with a filter; detection metrics against the ground-truth flags."""
    from ..zoo.build import entry_named
    from ..checkpoint import load_checkpoint
    from ..filters import build_filter
    from ..metrics import auroc, detection_metrics, length_matched_auroc

    entry = entry_named(cell.entry)
    loaded = load_checkpoint(entry.model_dir)
    data = entry.load("train")
    trusted = entry.load("validation")
    started = time.time()
    result = build_filter(cell.method, cell.options).run(loaded, data, trusted=trusted)
    seconds = time.time() - started
    truth = [bool(s.poisoned) for s in data.samples]
    metrics = detection_metrics(result.scores, truth, result.flagged)
    record = {**metrics, "threshold": result.threshold, "threshold_method": result.threshold_method,
              "seconds": round(seconds, 1), "ms_per_sample": round(1000 * seconds / len(data), 2),
              "device": _device_name(), "peak_rss_mb": _peak_mb(), "details": result.summary()["details"]}
    # the length-matched control: how well token length alone would separate (a score that is only length)
    lengths = token_lengths(loaded, data).astype(float)
    record["length_auroc"] = auroc(lengths, truth)
    record["length_matched_auroc"] = length_matched_auroc(result.scores, lengths, truth)
    targets = [result.details["target"]] if "target" in result.details else result.details.get("parameters", [])
    if targets and "..." not in targets and result.details.get("gradient_model") != "reference":
        sample = data.subset(range(0, len(data), max(1, len(data) // 256)))  # ~256 samples, spread evenly
        record["speed"] = gradient_timings(loaded, sample, targets)
    return record


def gradient_timings(loaded: LoadedModel, data: TaskData, targets: Sequence[str], *, batch_size: int = 16,
                     max_length: int = MAX_LENGTH, loop_samples: int = 64) -> dict[str, float]:
    """Milliseconds per sample for three ways of getting gradients of `targets` on the same samples.

    vmap: the batched per-sample gradients the filters use. floor: one ordinary batched forward + backward per
    batch (the summed loss: no per-sample gradients, the least any method can cost). loop: a Python loop of
    single-sample forward + backward passes, each gradient copied out, on the first `loop_samples` samples.
    Ratios vmap/floor and loop/vmap are included.
    """
    model = loaded.model
    objective = sample_objective(loaded)
    computer = PerSampleGradients(model, targets, objective)
    batches = [sample_batch(loaded, data.subset(p.tolist()), max_length)
               for p in length_sorted_batches(loaded, data, batch_size, max_length)]
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        for n, p in params.items():
            p.requires_grad_(n in set(targets))

        def batched_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            inputs = {k: v for k, v in batch.items()
                      if k in ("input_ids", "token_type_ids", "attention_mask", "position_ids")}
            logits = model(**inputs).logits
            return torch.stack([objective(logits[i:i + 1], {k: v[i] for k, v in batch.items()})
                                for i in range(len(logits))]).sum()

        started = time.perf_counter()
        for batch in batches:
            computer(batch)
        vmap_s = time.perf_counter() - started

        started = time.perf_counter()
        for batch in batches:
            model.zero_grad(set_to_none=True)
            batched_loss(batch).backward()
        floor_s = time.perf_counter() - started

        singles = [{k: v[i:i + 1] for k, v in batch.items()} for batch in batches for i in range(len(batch["mask4"]))]
        singles = singles[:loop_samples]
        started = time.perf_counter()
        for one in singles:
            model.zero_grad(set_to_none=True)
            batched_loss(one).backward()
            for name in targets:
                grad = params[name].grad
                assert grad is not None  # backward() fills every target's gradient
                grad.detach().clone()
        loop_s = time.perf_counter() - started
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.requires_grad_(flags[n])
        model.train(was_training)
    n_samples = len(data)
    vmap_ms, floor_ms = 1000 * vmap_s / n_samples, 1000 * floor_s / n_samples
    loop_ms = 1000 * loop_s / max(len(singles), 1)
    return {"vmap_ms": vmap_ms, "floor_ms": floor_ms, "loop_ms": loop_ms, "vmap_over_floor": vmap_ms / floor_ms,
            "loop_over_vmap": loop_ms / vmap_ms, "samples": n_samples, "loop_samples": len(singles)}
