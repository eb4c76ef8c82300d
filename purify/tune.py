"""`purify tune`: choose a strategy's knobs against a planted canary backdoor, then purify with the chosen ones.

1. **Canary.** The clean data (after the filter) is split as `purify run` splits it into training and validation
   data, and a held-out scoring slice is carved from the training part. A random canary trigger is planted into
   a copy of the suspicious model with a short fine-tune on the training part (`purify.canary`); if it does not
   take (ASR >= 90%, clean accuracy kept) tuning stops with a CanaryError. The canaried weights are kept in the
   run folder (``tune_canary.*``) until the export, so a resumed study reuses them instead of planting again.
2. **Search.** An optuna study (`purify.study`: seeded TPE sampler, stored in ``<out>/tune_study.db`` so an
   interrupted or finished study resumes) samples the strategy's knobs from its config's ``search_space()``
   (`purify.knobs`). Each trial runs the strategy on a fresh copy of the canaried model and scores it on the
   scoring slice: the canary's ASR and the clean accuracy drop (points, against the canaried model). Objective
   "constrained" minimises canary ASR subject to drop <= tolerance (an optuna constraint); "pareto" minimises both
   and keeps the Pareto front. Hopeless trials are pruned: in constrained mode a trial that breaks the tolerance
   once a feasible trial exists, or whose canary ASR can no longer beat the best feasible trial while its
   triggered samples are scored in chunks.
3. **Apply.** The chosen knobs run on the *original* model through the steps of `purify.pipeline` (the filter
   result is reused), which export as `purify run` does; the report gains a ``tune`` block (canary, every trial,
   the choice, the Pareto front, knob importances) and the trade-off and importance plots.

Knobs given with ``--set`` are pinned: they are not searched. No triggered test data is ever looked at; the
canary is the defender's own, planted in clean data.
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .canary import CACHE_META, CACHE_WEIGHTS, CanaryConfig, plant_canary
from .data import TaskData
from .splits import split_samples
from .device import seed_everything
from .errors import ConfigError
from .export import REPORT_FILE
from .outputs import check_run_destination
from .pipeline import (PipelineConfig, apply_strategy, evaluate_run, export_run, judge_run, kept_data, load_inputs,
                       record_filter, run_filter, split_data, start_run)
from .knobs import Knobs
from .study import TUNE_DB, Study, copy_sqlite

if TYPE_CHECKING:
    from .filters.base import FilterResult

OBJECTIVES = ("constrained", "pareto")


@dataclass
class TuneConfig:
    """What `purify tune` searches and how.

    trials: distinct knob settings the study should measure in all (a resumed study only runs the missing ones;
    a proposal that repeats measured knobs reuses their figures and does not count).
    timeout: stop starting new trials after this many seconds (None: no limit). tolerance: the largest clean
    accuracy drop (points, on the held-out scoring slice, against the canaried model) a choice may cost.
    objective: "constrained" (minimise canary ASR subject to the tolerance) or "pareto" (both objectives).
    score_fraction: share of the training data held out to score trials. startup_trials: random trials before
    TPE models the space. prune: stop hopeless trials early (constrained objective only). score_chunks: chunks
    the canary's triggered samples are scored in (the pruning checkpoints). canary: how the canary is planted.
    """

    trials: int = 20
    timeout: float | None = None
    tolerance: float = 1.0
    objective: str = "constrained"
    score_fraction: float = 0.2
    startup_trials: int = 5
    prune: bool = True
    score_chunks: int = 4
    canary: CanaryConfig = field(default_factory=CanaryConfig)

    def validate(self) -> None:
        if self.trials < 1:
            raise ConfigError("--trials must be >= 1")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError("--timeout must be > 0 seconds")
        if not (self.tolerance >= 0 and math.isfinite(self.tolerance)):
            raise ConfigError("--tolerance is a clean accuracy drop in points, >= 0")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")
        if not 0 < self.score_fraction < 0.5:
            raise ConfigError("score_fraction must be in (0, 0.5)")
        if self.startup_trials < 1 or self.score_chunks < 1:
            raise ConfigError("startup_trials and score_chunks must be >= 1")
        self.canary.validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_run_folder(out: Path, overwrite: bool) -> None:
    """`out` holds the study while tuning and the export afterwards; never clobber something else."""
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"{out} exists and is not a folder; choose another --out")
        finished = (out / REPORT_FILE).exists()
        foreign = [p.name for p in out.iterdir() if not p.name.startswith((TUNE_DB, CACHE_META, CACHE_WEIGHTS))]
        if finished and not overwrite:
            raise ConfigError(f"{out} holds a finished export; pass --overwrite to resume its study ({TUNE_DB}) and "
                              "export again, or choose another --out")
        if foreign and not finished and not overwrite:
            raise ConfigError(f"{out} exists and is not a purify tune folder; choose another --out or pass --overwrite")


def run_tune(model_dir: str | Path, data_path: str | Path, out_dir: str | Path, cfg: PipelineConfig,
             tune: TuneConfig | None = None, *, log: Callable[[str], None] = print) -> dict:
    """Tune `cfg.strategy`'s knobs against a canary, purify `model_dir` with the chosen ones, export to `out_dir`.

    Returns the saved report (``purify_report.json``), whose ``tune`` block records the study.
    """
    tune = tune if tune is not None else TuneConfig()
    cfg.validate()
    tune.validate()
    started = time.time()
    knobs = Knobs.of(cfg.strategy, cfg.strategy_options, cfg.seed)
    out = Path(out_dir)
    _check_run_folder(out, cfg.overwrite)  # created once the canary is planted: a failed canary leaves nothing
    # not an input, writable, and (the study may resume in it) never a folder purify did not write
    check_run_destination(model_dir, data_path, out, dataclasses.replace(cfg, overwrite=True))

    # 1. data and canary
    seed_everything(cfg.seed)
    inputs = load_inputs(model_dir, data_path, cfg, tests=False)
    t0 = time.time()
    filtered = run_filter(cfg.filter, cfg.filter_options, inputs.loaded, inputs.data, inputs.trusted, seed=cfg.seed,
                          cache=cfg.filter_cache, log=log)
    filter_seconds = time.time() - t0
    kept = kept_data(filtered, inputs.data, cfg, data_path)
    if filtered is not None:
        log(f"[purify] filter {cfg.filter}: kept {len(kept)} of {len(inputs.data)} samples")
    # exactly the split `purify run` makes, so the knobs are tuned on the data they are applied with
    train, validation = split_data(kept, inputs.trusted, cfg, data_path)
    parts = split_samples(train.samples, [1 - tune.score_fraction, tune.score_fraction], seed=cfg.seed + 1)
    trial_train, score = TaskData(parts[0], train.label_names), TaskData(parts[1], train.label_names)
    canary = plant_canary(inputs.loaded, trial_train, validation=score, config=tune.canary, seed=cfg.seed, log=log,
                          cache_dir=out)
    log(f"[purify] canary {'reused' if canary.reused else 'planted'}: ASR {canary.asr:.4f} "
        f"(floor {canary.asr_original:.4f}), CACC {canary.cacc:.4f} (suspicious model {canary.cacc_original:.4f})")
    planted = canary.summary()
    del inputs

    # 2. the study
    study = Study(out, knobs, canary, trial_train, validation, tune=tune, seed=cfg.seed, log=log)
    del canary  # the study holds it until `close`
    search_seconds = study.optimize()
    outcome = study.outcome()
    study.close()  # the canaried model and the database go before the final run
    summary = {
        **outcome, "strategy": cfg.strategy, "objective": tune.objective, "tolerance": tune.tolerance,
        "config": tune.to_dict(), "search_space": knobs.space, "options": knobs.options,
        "pinned": {k: knobs.options[k] for k in knobs.pinned}, "canary": planted,
        "splits": {"train": len(trial_train), "validation": len(validation), "score": len(score),
                   "final_train": len(train)},
        "seconds": {"filter": round(filter_seconds, 2), "canary": planted["seconds"],
                    "search": round(search_seconds, 2), "total_before_apply": round(time.time() - started, 2)},
    }
    # 3. the chosen knobs on the original model
    final_cfg = dataclasses.replace(cfg, strategy_options={**knobs.options, **outcome["best_params"]}, overwrite=True)
    return _apply(model_dir, data_path, out, final_cfg, filtered, summary, log=log)


def _apply(model_dir: str | Path, data_path: str | Path, out: Path, cfg: PipelineConfig,
           filtered: FilterResult | None, summary: dict[str, Any], *, log: Callable[[str], None]) -> dict:
    """Purify with the chosen knobs through the pipeline's steps, reusing the filter result; the report gains the
    ``tune`` block and the export a consistent copy of the study."""
    with tempfile.TemporaryDirectory() as tmp:
        study_copy = Path(tmp) / TUNE_DB
        copy_sqlite(out / TUNE_DB, study_copy)
        run = start_run(model_dir, data_path, out, cfg, log=log)
        before = evaluate_run(run, run.inputs.loaded.model, "before")
        kept = record_filter(run, filtered, 0.0)  # reused: its seconds are in the tune block
        train, validation = split_data(kept, run.inputs.trusted, cfg, data_path)
        result = apply_strategy(run, train, validation, filtered)
        judge_run(run, result, before)
        run.report["tune"] = summary
        return export_run(run, result, filtered, extra_files={TUNE_DB: study_copy})
