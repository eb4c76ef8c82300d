"""The main job: safe load, filter the untrusted data, run one strategy on clean data, export, report."""
from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .checkpoint import LoadedModel, load_checkpoint
from .data import TaskData, load_task_data, split_samples
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


def load_inputs(model_dir: str | Path, data_path: str | Path, cfg: PipelineConfig
                ) -> tuple[LoadedModel, TaskData, TaskData | None]:
    """The suspicious classifier, its untrusted task data and the optional trusted data (labels by the model)."""
    loaded = load_checkpoint(model_dir, allow_pickle=cfg.allow_pickle)
    if loaded.task != "classification":
        raise ConfigError("purify purifies sequence classifiers; this checkpoint is a causal LM")
    data = _read(str(data_path), loaded, cfg)
    trusted = _read(cfg.trusted, loaded, cfg) if cfg.trusted else None
    if (warning := data.one_class_warning()) is not None:
        warn(warning)
    return loaded, data, trusted


def run_filter(name: str, options: dict, loaded: LoadedModel, data: TaskData, trusted: TaskData | None, *,
               seed: int | None = None):
    """Run filter `name` (None for "none"), seeded with `seed` when given; imported lazily so the pipeline works
    while filters load."""
    if name == "none":
        return None
    from .filters import build_filter

    options = options if seed is None else {**options, "seed": seed}
    return build_filter(name, options).run(loaded, data, trusted=trusted)


def _figures(ev: Evaluation) -> str:
    """CACC, and ASR with its trigger lift where a triggered file was given, for the log."""
    text = f"CACC {ev.cacc:.4f}"
    if ev.asr is not None:
        text += f", ASR {ev.asr:.4f}"
    if ev.trigger_lift is not None:
        text += f" (trigger lift {ev.trigger_lift:+.4f} over the clean target rate {ev.clean_target_rate:.4f})"
    return text


#: `run_pipeline(filtered=...)` default: run the configured filter
RUN_FILTER: Any = object()


def run_pipeline(model_dir: str | Path, data_path: str | Path, out_dir: str | Path, cfg: PipelineConfig,
                 *, log=print, filtered: Any = RUN_FILTER, report_extra: Mapping[str, Any] | None = None,
                 extra_files: Mapping[str, Path] | None = None) -> dict:
    """Purify `model_dir` with `cfg` using the untrusted data at `data_path`; write the export to `out_dir`.

    `filtered` is a filter result already computed on the same model and data (None: no filter), so a caller
    that filtered once (`purify tune`) does not pay for it twice; `report_extra` is merged into the report
    before the plots are drawn, and `extra_files` are copied into the export folder.
    """
    cfg.validate()
    check_run_destination(model_dir, data_path, out_dir, cfg)  # before any work: a bad --out costs nothing
    strategy = build_strategy(cfg.strategy, {**cfg.strategy_options, "seed": cfg.seed})
    timings: dict[str, float] = {}
    started = time.time()
    seed_everything(cfg.seed)
    pause_point("load")
    loaded, data, trusted = load_inputs(model_dir, data_path, cfg)
    clean_test = _read(cfg.eval_clean, loaded, cfg) if cfg.eval_clean else None
    triggered = _read(cfg.eval_triggered, loaded, cfg) if cfg.eval_triggered else None
    timings["load"] = time.time() - started
    report_threads = set_threads(cfg.threads)
    floor = epoch_floor_seconds(loaded.model, loaded.tokenizer, data.texts, data.labels, seed=cfg.seed)

    report: dict[str, Any] = {
        "model": str(model_dir), "data": str(data_path), "seed": cfg.seed, "pipeline": asdict(cfg),
        "strategy": {"name": cfg.strategy, "config": strategy.config.to_dict()},
    }
    before = None
    if clean_test is not None:
        t0 = time.time()
        before = evaluate_model(loaded.model, loaded.tokenizer, clean_test, triggered, cfg.target, progress=True)
        timings["eval_before"] = time.time() - t0
        log(f"[purify] before: {_figures(before)}")

    t0 = time.time()
    if filtered is RUN_FILTER:
        filtered = run_filter(cfg.filter, cfg.filter_options, loaded, data, trusted, seed=cfg.seed)
    timings["filter"] = time.time() - t0
    kept = filtered.kept if filtered is not None else data
    if not len(kept):
        raise DataError(f"filter {cfg.filter} removed all {len(data)} samples of {data_path}: nothing is left to "
                        "train on (check its threshold, or use --filter none)")
    if filtered is not None:
        report["filter"] = filtered.summary()
        flags = [s.poisoned for s in data.samples]
        if all(f is not None for f in flags):  # ground truth shipped with zoo data: for the report only
            report["filter"]["ground_truth"] = {
                "poisoned": sum(flags),
                "removed_poisoned": int(sum(bool(f) and bool(r) for f, r in zip(flags, filtered.flagged))),
            }
        log(f"[purify] filter {cfg.filter}: kept {len(kept)} of {len(data)} samples "
            f"(threshold {filtered.threshold:.4g}, {filtered.threshold_method})")
    else:
        report["filter"] = {"method": "none", "n": len(data), "n_kept": len(data), "n_removed": 0}

    if trusted is not None:
        train, validation = kept, trusted
    else:
        parts = split_samples(kept.samples, [1 - cfg.val_fraction, cfg.val_fraction], seed=cfg.seed)
        train, validation = TaskData(parts[0], kept.label_names), TaskData(parts[1], kept.label_names)
        if not len(train) or not len(validation):
            raise DataError(f"{len(kept)} samples of {data_path} are too few to split into training and validation "
                            "data; give more data or a --trusted validation set")

    probe = filtered.probe if filtered is not None else None
    if probe is not None:
        probe = replace(probe, flagged=filtered.removed)  # the removed samples travel with the findings
        report["probe"] = {**probe.summary(), "before": probe.measure(loaded.model, loaded.tokenizer, validation,
                                                                      seed=cfg.seed)}
        log(f"[purify] backdoor probe ({probe.source}): {probe.describe(kept.label_names)}")
    t0 = time.time()
    log(f"[purify] strategy {cfg.strategy} on {len(train)} clean training and {len(validation)} validation samples")
    pause_point("strategy")
    result = strategy.run(loaded, train, validation, probe=probe)
    timings["strategy"] = time.time() - t0
    report["result"] = report_summary(result)
    if probe is not None:
        report["probe"]["after"] = probe.measure(result.model, loaded.tokenizer, validation, seed=cfg.seed)
    report.update(report_extra or {})

    if clean_test is not None:
        t0 = time.time()
        after = evaluate_model(result.model, loaded.tokenizer, clean_test, triggered, cfg.target, progress=True)
        timings["eval_after"] = time.time() - t0
        report["metrics"] = {"before": before.to_dict(), "after": after.to_dict()}
        log(f"[purify] after: {_figures(after)}")
    verdict = judge((report.get("metrics") or {}).get("after"),
                    report["probe"]["after"] if probe is not None and probe.found else None)
    report["verdict"] = verdict.to_dict()
    log(f"[purify] {'WARNING: ' if verdict.survived else ''}verdict {verdict.status}: {verdict.evidence}")

    with result, tempfile.TemporaryDirectory() as extra:  # `result` deletes its temporary files on the way out
        extra_files = {**dict(result.files), **dict(extra_files or {})}
        extra_dir = Path(extra)
        scores = None
        if filtered is not None:
            scores = filtered.scores
            scores_path = extra_dir / FILTER_SCORES_FILE
            with open(scores_path, "w") as fh:
                for sample, score, flag in zip(data.samples, filtered.scores, filtered.flagged):
                    fh.write(json.dumps({"index": sample.index, "score": float(score), "removed": bool(flag)}) + "\n")
            extra_files[FILTER_SCORES_FILE] = scores_path
        for plot in render_report_plots(report, extra_dir, scores):
            extra_files[plot.name] = plot
        timings["total_before_export"] = time.time() - started
        report["timings"] = {k: round(v, 2) for k, v in timings.items()}
        report["compute"] = {"threads": report_threads, "epoch_floor_seconds": round(floor, 2),
                             "timings_in_floors": in_floors(timings, floor)}
        t0 = time.time()
        outcome = export_checkpoint(
            result.model, loaded.tokenizer, out_dir, pruned_heads=pruned_heads_of(result),
            metadata={"strategy": cfg.strategy, "strategy_config": strategy.config.to_dict(),
                      "filter": report["filter"]},
            report=report, overwrite=cfg.overwrite, extra_files=extra_files,
        )
    report["export"] = {"verify": outcome.__dict__, "path": str(out_dir), "seconds": round(time.time() - t0, 2)}
    log(f"[purify] {outcome.message}; wrote {out_dir}")
    saved = json.loads((Path(out_dir) / REPORT_FILE).read_text())
    return saved
