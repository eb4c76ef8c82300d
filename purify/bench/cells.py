"""Cell runners of the zoo, pruning, w2s and tune suites (each runs inside a cell's subprocess)."""
from __future__ import annotations

import time
from pathlib import Path

from .matrix import Cell, _device_name, _peak_mb


def run_zoo_cell(cell: Cell, work: Path) -> dict:  # runs in one go: `work` is not needed
    """Build (or reuse) a zoo entry and report its manifest's figures."""
    from ..zoo.build import entry_named

    entry = entry_named(cell.entry)
    m = entry.manifest
    return {
        "clean_cacc": m["metrics"]["clean"]["cacc"], "clean_asr": m["metrics"]["clean"]["asr"],
        "cacc": m["metrics"]["backdoored"]["cacc"], "asr": m["metrics"]["backdoored"]["asr"],
        "build_seconds": m["build_seconds"], "peak_rss_mb": m["peak_rss_mb"], "counts": m["counts"],
        "attack": m["attack"], "clean_train_seconds": m["metrics"]["clean"].get("train_seconds"),
        "clean_reused_from": m["metrics"]["clean"].get("reused_from"),
    }


def _clean_training_data(entry, seed: int):
    """The entry's training split with poisoned lines removed by their flag (the upper bound the issues allow)."""
    return entry.load("train").without_poisoned(), entry.load("validation")


#: strategy diagnostics kept in a cell's JSON (a user can compute each without triggered data)
CELL_EXTRAS = ("teacher", "teacher_val_accuracy", "best_epoch", "conflict_fraction", "insertion_flip",
               "inverted_flip", "dropped_by_inversion", "phase_seconds")


def run_strategy_cell(cell: Cell, work: Path) -> dict:  # runs in one go: `work` is not needed
    """Run a strategy on an entry's flag-cleaned training split; CACC/ASR before and after."""
    from ..zoo.build import entry_named
    from ..checkpoint import load_checkpoint
    from ..device import seed_everything
    from ..evaluate import evaluate_model
    from ..pruning import pruned_heads_of
    from ..registry import build_strategy

    entry = entry_named(cell.entry)
    seed_everything(cell.seed)
    loaded = load_checkpoint(entry.model_dir)
    clean_test, triggered = entry.load("test_clean"), entry.load("test_triggered")
    before = evaluate_model(loaded.model, loaded.tokenizer, clean_test, triggered, entry.target)
    train, validation = _clean_training_data(entry, cell.seed)
    options = {k: v for k, v in cell.options.items() if not k.startswith("_")}  # "_label" names a variant
    started = time.time()
    strategy = build_strategy(cell.method, {**options, "seed": cell.seed})
    result = strategy.run(loaded, train, validation)
    result.cleanup()  # a cell exports nothing: the strategy's temporary files can go now
    model = result.model
    heads = pruned_heads_of(result)
    pruned = sum(len(v) for v in heads.values())
    extras = {"pruned_heads": {str(k): v for k, v in heads.items()},
              **{k: result.extras[k] for k in CELL_EXTRAS if k in result.extras}}
    if cell.suite == "w2s":
        extras["trajectory"] = result.trajectory  # one record per epoch
    seconds = time.time() - started
    after = evaluate_model(model, loaded.tokenizer, clean_test, triggered, entry.target)
    return {
        "cacc_before": before.cacc, "asr_before": before.asr, "cacc_after": after.cacc, "asr_after": after.asr,
        "asr_floor": entry.manifest["metrics"]["clean"]["asr"], "heads_pruned": pruned,
        "seconds": round(seconds, 1), "peak_rss_mb": _peak_mb(), "n_train": len(train), "device": _device_name(),
        "train_data": "zoo train split minus flagged-poisoned lines (upper bound)", **extras,
    }

def run_tune_cell(cell: Cell, work: Path) -> dict:
    """`purify tune` (canary calibration) on an entry, then the chosen knobs on the real model: real CACC/ASR.

    Same data as the strategy cells (training split minus flagged lines, validation split as trusted data), so the
    row compares with the strategy's default-knob row of the pruning / w2s suites. The triggered test file is read
    only by the final before/after evaluation, never by the study. Options "trials" and "canary_<field>" go to the
    tune and canary configs, the rest to the strategy. The study lives in `work` until the cell finishes, so an
    interrupted cell resumes from its finished trials (the canary is planted again, deterministically).
    """
    from ..zoo.build import entry_named
    from ..canary import CanaryConfig
    from ..data import write_jsonl
    from ..pipeline import PipelineConfig
    from ..tune import TuneConfig, run_tune

    entry = entry_named(cell.entry)
    train, _ = _clean_training_data(entry, cell.seed)
    options = {k: v for k, v in cell.options.items() if not k.startswith("_")}
    trials = int(options.pop("trials", 12))
    canary = {k[len("canary_"):]: options.pop(k) for k in list(options) if k.startswith("canary_")}
    canary_config = CanaryConfig.from_dict(canary)
    work.mkdir(parents=True, exist_ok=True)
    data_path = work / "train.jsonl"
    write_jsonl(data_path, train.samples, include_poisoned=False)
    cfg = PipelineConfig(strategy=cell.method, strategy_options=options, filter="none",
                         trusted=str(entry.data_file("validation")), seed=cell.seed,
                         eval_clean=str(entry.data_file("test_clean")),
                         eval_triggered=str(entry.data_file("test_triggered")), target=entry.target,
                         overwrite=True)  # the work folder is this cell's own: resume its study, export again
    started = time.time()
    report = run_tune(entry.model_dir, data_path, work / "out", cfg,
                      TuneConfig(trials=trials, canary=canary_config))
    seconds = time.time() - started
    metrics, study = report["metrics"], report["tune"]
    return {**study_cost(study, seconds),
        "cacc_before": metrics["before"]["cacc"], "asr_before": metrics["before"]["asr"],
        "cacc_after": metrics["after"]["cacc"], "asr_after": metrics["after"]["asr"],
        "asr_floor": entry.manifest["metrics"]["clean"]["asr"],
        "heads_pruned": sum(len(v) for v in report["result"].get("pruned_heads", {}).values()),
        "seconds": round(seconds, 1), "peak_rss_mb": _peak_mb(), "device": _device_name(), "trials": trials,
        "best_params": study["best_params"], "canary": study["canary"], "chosen": study["best"],
        "feasible": study["feasible"], "tune_seconds": study["seconds"], "n_complete": study["n_complete"],
        "n_pruned": study["n_pruned"], "resumed_from": study["resumed_from"], "study_trials": study["trials"],
        "train_data": "zoo train split minus flagged-poisoned lines (upper bound)",
    }


def study_cost(study: dict, seconds: float) -> dict:
    """Seconds the whole tune cost, over every process that resumed it: planting the canary (None when it was
    reused from a cache written before attempts were timed), the trials (from the study's records, which live in
    its SQLite file) and this process's final apply."""
    attempts = study["canary"].get("attempts", [])
    plant = (sum(a["seconds"] for a in attempts) if attempts and all("seconds" in a for a in attempts)
             else None if study["canary"].get("reused") else study["canary"]["seconds"])
    return {"canary_seconds": plant, "trial_seconds": round(sum(r.get("seconds") or 0.0 for r in study["trials"]), 1),
            "apply_seconds": round(seconds - study["seconds"]["total_before_apply"], 1)}
