"""The main job: safe load, filter the untrusted data, run one strategy on clean data, export, report.

`run_pipeline` is a short sequence of the public steps below; `purify tune` composes the same steps around its
study, so both purify alike.
"""
from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoint import LoadedModel, load_checkpoint
from .data import TaskData, load_task_data
from .splits import split_samples
from .device import seed_everything
from .errors import ConfigError, DataError
from .evaluate import Evaluation, evaluate_model
from .export import REPORT_FILE, export_checkpoint
from .floor import epoch_floor_seconds, in_floors, set_threads
from .outputs import check_run_destination, pause_point
from .plots import render_report_plots
from .pruning import pruned_heads_of, report_summary
from .registry import build_strategy
from .terminal import warn
from .verdict import judge

if TYPE_CHECKING:
    from torch import nn

    from .filters.base import FilterResult
    from .probe import BackdoorProbe
    from .registry import Strategy, StrategyResult

#: the rule: lowest trigger lift at a CACC drop <= 1 point, speed breaking ties (benchmarks/pipeline.md and the
#: README say what was measured)
DEFAULT_STRATEGY = "anchor_unlearn"
#: chosen from benchmarks/filters.md: trigger_words removed every poisoned sample of movie badnets and insertsent
#: (10%) while keeping >= 99.9% of the clean ones; GradSentry removed no poisoned sample anywhere, GradShield some
#: only where it also removed most clean samples or few poisoned ones
DEFAULT_FILTER = "trigger_words"
FILTER_SCORES_FILE = "filter_scores.jsonl"


@dataclass
class PipelineConfig:
    """What `purify run` does: which filter and strategy, with which options, and how data is read."""

    strategy: str = DEFAULT_STRATEGY
    strategy_options: dict[str, Any] = field(default_factory=dict)
    filter: str = DEFAULT_FILTER  # or "none"
    filter_options: dict[str, Any] = field(default_factory=dict)
    trusted: str | None = None  # small trusted clean set: validation data and the GradShield probe
    val_fraction: float = 0.1
    seed: int = 0
    allow_pickle: bool = False
    text_field: str = "text"
    label_field: str = "label"
    eval_clean: str | None = None  # optional clean test file for the before/after table
    eval_triggered: str | None = None  # optional triggered test file (the user's own red-team data)
    target: int | None = None
    overwrite: bool = False
    threads: int | None = None  # torch CPU threads; None = one per available core
    filter_cache: bool = True  # reuse the filter's cached result for the same model, data and options

    def validate(self) -> None:
        if "seed" in self.strategy_options or "seed" in self.filter_options:
            raise ConfigError("'seed' is not a strategy or filter option here: PipelineConfig.seed (--seed) seeds "
                              "the filter, the split and the strategy alike")
        if self.filter == "none" and self.filter_options:
            raise ConfigError(f"--filter-set {', '.join(sorted(self.filter_options))}: filter options have no "
                              "effect with --filter none")
        if not 0 < self.val_fraction < 0.5:
            raise ConfigError("val_fraction must be in (0, 0.5)")
        if self.eval_triggered and self.target is None:
            raise ConfigError("--eval-triggered needs --target (the label the trigger forces)")


def _label_names(loaded: LoadedModel) -> list[str] | None:
    id2label = getattr(loaded.model.config, "id2label", None) or {}
    names = [id2label[i] for i in sorted(id2label)] if id2label else None
    return names


def _read(path: str, loaded: LoadedModel, cfg: PipelineConfig) -> TaskData:
    return load_task_data(path, text_field=cfg.text_field, label_field=cfg.label_field,
                          label_names=_label_names(loaded))


@dataclass
class Inputs:
    """What a run reads: the suspicious model, the untrusted data, the optional trusted data and test files."""

    loaded: LoadedModel
    data: TaskData
    trusted: TaskData | None = None
    clean_test: TaskData | None = None
    triggered: TaskData | None = None


def load_inputs(model_dir: str | Path, data_path: str | Path, cfg: PipelineConfig, *, tests: bool = True) -> Inputs:
    """The suspicious classifier and the data files `cfg` names, labels named by the model (`tests`: the test files
    too, which `purify tune`'s study never reads)."""
    loaded = load_checkpoint(model_dir, allow_pickle=cfg.allow_pickle)
    if loaded.task != "classification":
        raise ConfigError("purify purifies sequence classifiers; this checkpoint is a causal LM")
    data = _read(str(data_path), loaded, cfg)
    trusted = _read(cfg.trusted, loaded, cfg) if cfg.trusted else None
    if (warning := data.one_class_warning()) is not None:
        warn(warning)
    inputs = Inputs(loaded, data, trusted)
    if tests:
        inputs.clean_test = _read(cfg.eval_clean, loaded, cfg) if cfg.eval_clean else None
        inputs.triggered = _read(cfg.eval_triggered, loaded, cfg) if cfg.eval_triggered else None
    return inputs


def run_filter(name: str, options: dict, loaded: LoadedModel, data: TaskData, trusted: TaskData | None, *,
               seed: int | None = None, cache: bool = True, log: Callable[[str], None] = print
               ) -> FilterResult | None:
    """Run filter `name` (None for "none"), seeded with `seed` when given, its result reused from the filter cache
    unless `cache` is off; imported lazily so the pipeline works while filters load."""
    if name == "none":
        return None
    from .filters import build_filter

    options = options if seed is None else {**options, "seed": seed}
    filt = build_filter(name, options)
    if not cache:
        return filt.run(loaded, data, trusted=trusted)
    from .filter_cache import cached_run

    return cached_run(filt, loaded, data, trusted, log=log)


def kept_data(filtered: FilterResult | None, data: TaskData, cfg: PipelineConfig, data_path: str | Path) -> TaskData:
    """The samples the filter kept (all of them without a filter); refuses a filter that kept none."""
    kept = filtered.kept if filtered is not None else data
    if not len(kept):
        raise DataError(f"filter {cfg.filter} removed all {len(data)} samples of {data_path}: nothing is left to "
                        "train on (check its threshold, or use --filter none)")
    return kept


def split_data(kept: TaskData, trusted: TaskData | None, cfg: PipelineConfig, data_path: str | Path
               ) -> tuple[TaskData, TaskData]:
    """Training and validation data: the kept samples and the trusted set, else a seeded split of the kept ones."""
    if trusted is not None:
        return kept, trusted
    parts = split_samples(kept.samples, [1 - cfg.val_fraction, cfg.val_fraction], seed=cfg.seed)
    train, validation = TaskData(parts[0], kept.label_names), TaskData(parts[1], kept.label_names)
    if not len(train) or not len(validation):
        raise DataError(f"{len(kept)} samples of {data_path} are too few to split into training and validation "
                        "data; give more data or a --trusted validation set")
    return train, validation


def _figures(ev: Evaluation) -> str:
    """CACC, and ASR with its trigger lift where a triggered file was given, for the log."""
    text = f"CACC {ev.cacc:.4f}"
    if ev.asr is not None:
        text += f", ASR {ev.asr:.4f}"
    if ev.trigger_lift is not None:
        text += f" (trigger lift {ev.trigger_lift:+.4f} over the clean target rate {ev.clean_target_rate:.4f})"
    return text


# -- the steps of one run ---------------------------------------------------------------------------------------

@dataclass
class Run:
    """One purification under way: what its steps share (config, strategy, inputs) and the report they fill in."""

    model_dir: str | Path
    data_path: str | Path
    out_dir: str | Path
    cfg: PipelineConfig
    strategy: Strategy
    inputs: Inputs
    log: Callable[[str], None]
    started: float
    threads: int  # torch threads in force
    floor: float  # seconds of one forward+backward epoch over the data: the unit of the report's compute block
    report: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    probe: BackdoorProbe | None = None  # the filter's findings, set by `apply_strategy`


def start_run(model_dir: str | Path, data_path: str | Path, out_dir: str | Path, cfg: PipelineConfig, *,
              log: Callable[[str], None] = print) -> Run:
    """Check the config and `out_dir` (before any work: a bad --out costs nothing), build the strategy, seed, load."""
    cfg.validate()
    check_run_destination(model_dir, data_path, out_dir, cfg)
    strategy = build_strategy(cfg.strategy, {**cfg.strategy_options, "seed": cfg.seed})
    started = time.time()
    seed_everything(cfg.seed)
    pause_point("load")
    inputs = load_inputs(model_dir, data_path, cfg)
    timings = {"load": time.time() - started}
    threads = set_threads(cfg.threads)
    floor = epoch_floor_seconds(inputs.loaded.model, inputs.loaded.tokenizer, inputs.data.texts, inputs.data.labels,
                                seed=cfg.seed)
    report: dict[str, Any] = {
        "model": str(model_dir), "data": str(data_path), "seed": cfg.seed, "pipeline": asdict(cfg),
        "strategy": {"name": cfg.strategy, "config": strategy.config.to_dict()},
    }
    return Run(model_dir, data_path, out_dir, cfg, strategy, inputs, log, started, threads, floor, report, timings)


def evaluate_run(run: Run, model: nn.Module, when: str) -> Evaluation | None:
    """The model's figures on the test files (None without --eval-clean), timed as ``eval_<when>`` and logged."""
    if run.inputs.clean_test is None:
        return None
    t0 = time.time()
    ev = evaluate_model(model, run.inputs.loaded.tokenizer, run.inputs.clean_test, run.inputs.triggered,
                        run.cfg.target, progress=True)
    run.timings[f"eval_{when}"] = time.time() - t0
    run.log(f"[purify] {when}: {_figures(ev)}")
    return ev


def record_filter(run: Run, filtered: FilterResult | None, seconds: float) -> TaskData:
    """Report what the filter (which took `seconds`) removed, with the ground truth where zoo data ships it; return
    the samples it kept."""
    data = run.inputs.data
    run.timings["filter"] = seconds
    kept = kept_data(filtered, data, run.cfg, run.data_path)
    if filtered is None:
        run.report["filter"] = {"method": "none", "n": len(data), "n_kept": len(data), "n_removed": 0}
        return kept
    block = run.report["filter"] = {**filtered.summary(), "cached": filtered.cached_from is not None}
    flags = [s.poisoned for s in data.samples]
    if all(f is not None for f in flags):  # ground truth shipped with zoo data: for the report only
        block["ground_truth"] = {
            "poisoned": sum(flags),
            "removed_poisoned": int(sum(bool(f) and bool(r) for f, r in zip(flags, filtered.flagged))),
        }
    run.log(f"[purify] filter {run.cfg.filter}: kept {len(kept)} of {len(data)} samples "
            f"(threshold {filtered.threshold:.4g}, {filtered.threshold_method})")
    return kept


def apply_strategy(run: Run, train: TaskData, validation: TaskData, filtered: FilterResult | None
                   ) -> StrategyResult:
    """Run the strategy on the clean training data, handing it the filter's probe, measured before and after."""
    loaded, seed = run.inputs.loaded, run.cfg.seed
    probe = filtered.probe if filtered is not None else None
    if filtered is not None and probe is not None:
        probe = replace(probe, flagged=filtered.removed)  # the removed samples travel with the findings
        run.report["probe"] = {**probe.summary(), "before": probe.measure(loaded.model, loaded.tokenizer, validation,
                                                                          seed=seed)}
        run.log(f"[purify] backdoor probe ({probe.source}): {probe.describe(train.label_names)}")
    run.probe = probe
    t0 = time.time()
    run.log(f"[purify] strategy {run.cfg.strategy} on {len(train)} clean training and {len(validation)} validation "
            "samples")
    pause_point("strategy")
    result = run.strategy.run(loaded, train, validation, probe=probe)
    run.timings["strategy"] = time.time() - t0
    run.report["result"] = report_summary(result)
    if probe is not None:
        run.report["probe"]["after"] = probe.measure(result.model, loaded.tokenizer, validation, seed=seed)
    return result


def judge_run(run: Run, result: StrategyResult, before: Evaluation | None) -> None:
    """Evaluate the purified model and judge from its figures (or the probe's) whether the backdoor survived."""
    after = evaluate_run(run, result.model, "after")
    if before is not None and after is not None:  # both None without test data
        run.report["metrics"] = {"before": before.to_dict(), "after": after.to_dict()}
    found = run.probe is not None and run.probe.found
    verdict = judge(after.to_dict() if after is not None else None, run.report["probe"]["after"] if found else None)
    run.report["verdict"] = verdict.to_dict()
    run.log(f"[purify] {'WARNING: ' if verdict.survived else ''}verdict {verdict.status}: {verdict.evidence}")


def export_run(run: Run, result: StrategyResult, filtered: FilterResult | None, *,
               extra_files: Mapping[str, Path] | None = None) -> dict:
    """Export the purified model with the filter scores, the plots and `extra_files`; return the saved report."""
    report, timings = run.report, run.timings
    with result, tempfile.TemporaryDirectory() as extra:  # `result` deletes its temporary files on the way out
        files: dict[str, str | Path] = {**dict(result.files), **dict(extra_files or {})}
        extra_dir = Path(extra)
        scores = None
        if filtered is not None:
            scores = filtered.scores
            scores_path = extra_dir / FILTER_SCORES_FILE
            with open(scores_path, "w") as fh:
                for sample, score, flag in zip(run.inputs.data.samples, filtered.scores, filtered.flagged):
                    fh.write(json.dumps({"index": sample.index, "score": float(score), "removed": bool(flag)}) + "\n")
            files[FILTER_SCORES_FILE] = scores_path
        for plot in render_report_plots(report, extra_dir, scores):
            files[plot.name] = plot
        timings["total_before_export"] = time.time() - run.started
        report["timings"] = {k: round(v, 2) for k, v in timings.items()}
        report["compute"] = {"threads": run.threads, "epoch_floor_seconds": round(run.floor, 2),
                             "timings_in_floors": in_floors(timings, run.floor)}
        outcome = export_checkpoint(
            result.model, run.inputs.loaded.tokenizer, run.out_dir, pruned_heads=pruned_heads_of(result),
            metadata={"strategy": run.cfg.strategy, "strategy_config": run.strategy.config.to_dict(),
                      "filter": report["filter"]},
            report=report, overwrite=run.cfg.overwrite, extra_files=files,
        )
    run.log(f"[purify] {outcome.message}; wrote {run.out_dir}")
    return json.loads((Path(run.out_dir) / REPORT_FILE).read_text())


def run_pipeline(model_dir: str | Path, data_path: str | Path, out_dir: str | Path, cfg: PipelineConfig, *,
                 log: Callable[[str], None] = print) -> dict:
    """Purify `model_dir` with `cfg` using the untrusted data at `data_path`; export to `out_dir`, return the report."""
    run = start_run(model_dir, data_path, out_dir, cfg, log=log)
    before = evaluate_run(run, run.inputs.loaded.model, "before")
    t0 = time.time()
    inputs = run.inputs
    filtered = run_filter(cfg.filter, cfg.filter_options, inputs.loaded, inputs.data, inputs.trusted, seed=cfg.seed,
                          cache=cfg.filter_cache, log=log)
    kept = record_filter(run, filtered, time.time() - t0)
    train, validation = split_data(kept, inputs.trusted, cfg, data_path)
    result = apply_strategy(run, train, validation, filtered)
    judge_run(run, result, before)
    return export_run(run, result, filtered)
