"""`purify bench`: run a benchmark matrix cell by cell, cache every finished cell, write JSON + markdown + plot.

Each cell runs in its own subprocess (so peak memory is the cell's own and a crash loses one cell), and its
result is cached as JSON under ``<out>/cells/<suite>/``; a second run reuses finished cells, and an interrupted
tune cell resumes its optuna study from the cell's ``.work`` folder. No knob of any
defense is computed from triggered data: cells see triggered files only to *measure* ASR after the fact.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ConfigError
from .bench_pipeline import pipeline_cells, run_pipeline_cell
from .bench_tables import finished, markdown_table, plot_suite, update_readme
from .provenance import provenance


@dataclass(frozen=True)
class Cell:
    """One benchmark measurement: a method on a zoo entry with options and a seed."""

    suite: str
    entry: str
    method: str
    seed: int = 0
    options: dict = field(default_factory=dict, hash=False)

    @property
    def key(self) -> str:
        raw = json.dumps([self.suite, self.entry, self.method, self.seed, self.options], sort_keys=True)
        return f"{self.entry}__{self.method}__s{self.seed}__{hashlib.sha1(raw.encode()).hexdigest()[:8]}"


# -- cell runners (executed inside the subprocess) ------------------------------------------------------------

def _peak_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _device_name() -> str:
    """Where a cell ran: timings are only comparable on the same device."""
    import torch

    from .device import select_device

    device = select_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def _entry(name: str):
    from .zoo.build import ZooSpec, build_entry

    return build_entry(ZooSpec.parse(name))


def run_zoo_cell(cell: Cell, work: Path) -> dict:  # runs in one go: `work` is not needed
    """Build (or reuse) a zoo entry and report its manifest's figures."""
    entry = _entry(cell.entry)
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
    """Run a strategy (or the clean fine-tuning baseline) on an entry; CACC/ASR before and after."""
    from .checkpoint import load_checkpoint
    from .device import seed_everything
    from .evaluate import evaluate_model
    from .pruning import pruned_heads_of
    from .registry import build_strategy

    entry = _entry(cell.entry)
    seed_everything(cell.seed)
    loaded = load_checkpoint(entry.model_dir)
    clean_test, triggered = entry.load("test_clean"), entry.load("test_triggered")
    before = evaluate_model(loaded.model, loaded.tokenizer, clean_test, triggered, entry.target)
    train, validation = _clean_training_data(entry, cell.seed)
    options = {k: v for k, v in cell.options.items() if not k.startswith("_")}  # "_label" names a variant
    started = time.time()
    pruned = 0
    if cell.method == "baseline_finetune":
        from .training import TrainConfig, train_classifier

        config = TrainConfig(**{"epochs": 2, "lr": 5e-5, "seed": cell.seed, "max_length": 64, **options})
        train_classifier(loaded.model, loaded.tokenizer, train.texts, train.labels, config,
                         val=(validation.texts, validation.labels), description="clean fine-tune")
        model = loaded.model
        extras = {}
    else:
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


def run_filter_cell(cell: Cell, work: Path) -> dict:  # runs in one go: `work` is not needed
    """Score an entry's poisoned training set with a filter; detection metrics against the ground-truth flags."""
    from .checkpoint import load_checkpoint
    from .filters import build_filter
    from .filters.per_sample import gradient_timings, token_lengths
    from .metrics import auroc, detection_metrics, length_matched_auroc

    entry = _entry(cell.entry)
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


def run_tune_cell(cell: Cell, work: Path) -> dict:
    """`purify tune` (canary calibration) on an entry, then the chosen knobs on the real model: real CACC/ASR.

    Same data as the strategy cells (training split minus flagged lines, validation split as trusted data), so the
    row compares with the strategy's default-knob row of the pruning / w2s suites. The triggered test file is read
    only by the final before/after evaluation, never by the study. Options "trials" and "canary_<field>" go to the
    tune and canary configs, the rest to the strategy. The study lives in `work` until the cell finishes, so an
    interrupted cell resumes from its finished trials (the canary is planted again, deterministically).
    """
    from .canary import CanaryConfig
    from .data import write_jsonl
    from .pipeline import PipelineConfig
    from .tune import TuneConfig, run_tune

    entry = _entry(cell.entry)
    train, _ = _clean_training_data(entry, cell.seed)
    options = {k: v for k, v in cell.options.items() if not k.startswith("_")}
    trials = int(options.pop("trials", 12))
    canary = {k[len("canary_"):]: options.pop(k) for k in list(options) if k.startswith("canary_")}
    defaults = CanaryConfig()
    unknown = sorted(set(canary) - set(vars(defaults)))
    if unknown:
        raise ConfigError(f"unknown canary options {unknown}; known: {sorted(vars(defaults))}")
    canary_config = CanaryConfig(**{k: type(getattr(defaults, k) if getattr(defaults, k) is not None else 0)(v)
                                    for k, v in canary.items()})
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


#: suite -> runner(cell, work): `work` is the cell's scratch folder, kept across an interruption, removed on success
RUNNERS: dict[str, Callable[[Cell, Path], dict]] = {"zoo": run_zoo_cell, "pruning": run_strategy_cell,
                                              "w2s": run_strategy_cell, "filters": run_filter_cell,
                                              "tune": run_tune_cell, "pipeline": run_pipeline_cell}


# -- the matrix, resumable ---------------------------------------------------------------------------------------

def cell_path(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.suite / f"{cell.key}.json"


def cell_output(out: Path, cell: Cell) -> Path:
    """Where a running (or failed) cell's stdout and stderr go."""
    return cell_path(out, cell).with_suffix(".log")


def run_cell_subprocess(cell: Cell, out: Path, *, timeout: float | None = None) -> dict:
    """Run one cell in a fresh interpreter; its JSON result is cached at `cell_path`.

    The cell's output goes to `cell_output(...)` while it runs (follow a long cell with `tail -f`); the file is
    removed when the cell succeeds and kept when it fails.
    """
    path = cell_path(out, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    output = cell_output(out, cell)
    payload = json.dumps(asdict(cell))
    # unbuffered, with progress as plain lines (stderr is a file), so the log follows the cell as it runs
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.time()
    with output.open("w") as sink:
        proc = subprocess.run([sys.executable, "-m", "purify.bench", payload, str(path)], env=env, timeout=timeout,
                              stdout=sink, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not path.exists():
        tail = output.read_text(errors="replace").strip().splitlines()[-5:]
        return {"error": " | ".join(tail), "output": str(output), "wall_seconds": round(time.time() - started, 1)}
    output.unlink()
    return json.loads(path.read_text())


def run_matrix(cells: list[Cell], out: Path, *, log=print, timeout: float | None = None,
               cached_only: bool = False) -> list[dict]:
    """Run every cell not cached yet (in order), then return all results.

    `cached_only` runs nothing: a cell without a cached result is returned as {"missing": True}, so a long matrix
    can be reported part way with its missing cells named. Two bench processes may share `out`: a cell another
    process is running is skipped (reported as missing), never run twice at once.
    """
    results = []
    for i, cell in enumerate(cells, 1):
        path = cell_path(out, cell)
        record, busy = None, False
        if not path.exists() and not cached_only:
            with _claim(path) as claimed:
                busy = not claimed
                if claimed and not path.exists():  # the other process may have finished it meanwhile
                    log(f"[bench] {i}/{len(cells)} running {cell.key} (output: {cell_output(out, cell)})")
                    record = run_cell_subprocess(cell, out, timeout=timeout)
                    if "error" in record:
                        log(f"[bench]   failed: {record['error']} (whole output: {record['output']})")
        if record is None and path.exists():
            record = json.loads(path.read_text())
            log(f"[bench] {i}/{len(cells)} cached  {cell.key}")
        elif record is None:
            record = {"missing": True}
            why = " (another bench process is running it)" if busy else ""
            log(f"[bench] {i}/{len(cells)} missing {cell.key}{why}")
        results.append({"cell": asdict(cell), **record})
    return results


@contextlib.contextmanager
def _claim(path: Path) -> Iterator[bool]:
    """An exclusive, non-blocking lock on a cell (released when the holder exits, even by a crash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_suffix(".lock")
    with lock.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            lock.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _main_cell(payload: str, path: str) -> None:
    cell = Cell(**json.loads(payload))
    runner = RUNNERS.get(cell.suite)
    if runner is None:
        raise ConfigError(f"unknown suite {cell.suite!r}")
    started = time.time()
    origin = provenance()  # the code the cell starts with, not whatever the tree holds when it ends
    work = Path(path).with_suffix(".work")
    record = runner(cell, work)
    record["wall_seconds"] = round(time.time() - started, 1)
    record["provenance"] = origin
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)
    shutil.rmtree(work, ignore_errors=True)


def save_json(results: list[dict], path: Path, command: str, prov: dict) -> None:
    """The suite's JSON: the command that produced it, its provenance and every cell's record."""
    path.write_text(json.dumps({"command": command, "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                **prov, "cells": results}, indent=2, sort_keys=True, default=float) + "\n")


# -- suites: the matrices the issues ask for -----------------------------------------------------------------------

MINILM_ATTACKS = ("badnets", "insertsent", "syntactic", "style")
ZOO_ENTRIES = (
    [f"minilm-{d}-{a}-p10-s0" for d in ("movie", "sms", "bbc") for a in MINILM_ATTACKS]
    + ["minilm-movie-clean_label-p10-s0", "smollm2-movie-badnets-p10-s0", "smollm2-movie-insertsent-p10-s0"]
)
#: the pruning suite's strategies in the order of its table rows (a test keeps it equal to the registry's
#: PruningStrategy subclasses)
PRUNING_STRATEGIES = ("gradient_prune", "variance_prune", "sparse_prune", "ensemble_prune", "rl_prune", "bayes_prune")
MULTI_SEED = ("minilm-movie-badnets-p10-s0", "minilm-movie-style-p10-s0")
#: trials per tuned strategy in the tune suite (a w2s_distill trial costs ten gradient_prune trials on the CPU)
TUNE_TRIALS = {"gradient_prune": 12, "w2s_distill": 4}


def suite_cells(suite: str, *, entries: list[str] | None = None, methods: list[str] | None = None,
                seeds: int = 3) -> list[Cell]:
    """The cells of a suite, optionally narrowed to some entries / methods; `seeds` on the multi-seed entries."""
    if suite == "zoo":
        return [Cell("zoo", e, "build") for e in (entries or ZOO_ENTRIES)]
    if suite == "pruning":
        default = [f"minilm-movie-{a}-p10-s0" for a in MINILM_ATTACKS] + ["smollm2-movie-badnets-p10-s0"]
        chosen = list(methods or ("baseline_finetune", *PRUNING_STRATEGIES))
        cells = []
        for e in entries or default:
            n = seeds if e in MULTI_SEED else 1
            cells += [Cell("pruning", e, m, s) for m in chosen for s in range(n)]
        return cells
    if suite == "w2s":
        default = [f"minilm-movie-{a}-p10-s0" for a in MINILM_ATTACKS + ("clean_label",)] + \
            [f"smollm2-movie-{a}-p10-s0" for a in ("badnets", "insertsent")]
        cells = []
        for e in entries or default:
            n = seeds if e in MULTI_SEED else 1
            teacher = "minilm-l6" if e.startswith("smollm2") else "minilm-l3"
            variants = {"baseline_finetune": ("baseline_finetune", {}),
                        "plain_lora": ("w2s_distill", {"teacher": teacher, "beta": 0.0, "gamma": 0.0}),
                        "w2s_distill": ("w2s_distill", {"teacher": teacher}),
                        "w2s_distill+safegrad": ("w2s_distill", {"teacher": teacher, "surgery": "safegrad"})}
            for label, (method, options) in variants.items():
                if methods and label not in methods:
                    continue
                # the clean fine-tune is the same computation in both suites: share the pruning suite's cells
                suite_of = "pruning" if method == "baseline_finetune" else "w2s"
                cells += [Cell(suite_of, e, method, s, {**options, "_label": label} if label != method else options)
                          for s in range(n)]
        return cells
    if suite == "filters":
        default = ([f"minilm-movie-{a}-p{r}-s0" for a in ("badnets", "insertsent") for r in (1, 10, 50)]
                   + [f"minilm-movie-{a}-p10-s0" for a in ("syntactic", "style", "clean_label")]
                   + ["smollm2-movie-badnets-p10-s0"])
        from .filters import FILTERS

        return [Cell("filters", e, m) for e in entries or default for m in (methods or FILTERS.names())]
    if suite == "tune":
        default = [f"minilm-movie-{a}-p10-s0" for a in ("badnets", "insertsent", "style")]
        return [Cell("tune", e, m, 0, {"trials": TUNE_TRIALS.get(m, 12)})
                for e in entries or default for m in (methods or ("gradient_prune", "w2s_distill"))]
    if suite == "pipeline":
        return pipeline_cells(Cell, entries, methods, seeds)
    raise ConfigError(f"unknown benchmark suite {suite!r}; choose zoo, pruning, w2s, filters, tune or pipeline")


def default_knob_cell(entry: str, method: str) -> Cell | None:
    """The seed-0 cell that runs `method` with its default knobs on `entry` (pruning or w2s suite), if either has it.

    A tune row is compared with it: same entry, same data, only the knobs differ.
    """
    suite = "pruning" if method in PRUNING_STRATEGIES else "w2s" if method == "w2s_distill" else None
    if suite is None:
        return None
    cells = [c for c in suite_cells(suite, entries=[entry], methods=[method], seeds=1) if c.method == method]
    return cells[0] if cells else None


def default_knob_results(results: list[dict], out: Path) -> dict[tuple[str, str], dict]:
    """(entry, method) -> the cached default-knob record for each finished tune row (absent when not measured)."""
    found = {}
    for r in finished(results):
        entry, method = r["cell"]["entry"], r["cell"]["method"]
        cell = default_knob_cell(entry, method)
        if cell is not None and cell_path(out, cell).exists():
            found[entry, method] = json.loads(cell_path(out, cell).read_text())
    return found


def write_outputs(suite: str, results: list[dict], out: Path, command: str) -> Path:
    """`<out>/<suite>.json`, `<out>/<suite>.md` (table + the command) and `<out>/<suite>.png`."""
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance()  # taken once, before this call's own files make the checkout look dirty
    save_json(results, out / f"{suite}.json", command, prov)
    table = markdown_table(suite, results, default_knob_results(results, out) if suite == "tune" else None)
    md = out / f"{suite}.md"
    units = "rates are fractions" if suite == "filters" else "figures are percentages unless a column says otherwise"
    md.write_text(f"# Benchmark: {suite}\n\nProduced by:\n\n    {command}\n\n"
                  f"Machine: {os.cpu_count()} CPU cores; "
                  f"{units}. "
                  f"git {prov['git_hash']}.\n\n{table}")
    plot_suite(suite, results, out / f"{suite}.png")
    update_readme(suite, table, out.resolve().parent / "README.md")  # benchmarks/ -> the repository's README
    return md


def run_suite(suite: str, out: Path, *, entries: list[str] | None = None, methods: list[str] | None = None,
              seeds: int = 3, command: str | None = None, options: dict | None = None, cached_only: bool = False,
              log=print) -> Path:
    """Run (or resume) a suite and write its outputs; returns the markdown path.

    `options` go to every cell's method on top of the suite's own (cells with other options are cached apart);
    `cached_only` writes the outputs from the cached cells alone and names the missing ones.
    """
    cells = suite_cells(suite, entries=entries, methods=methods, seeds=seeds)
    if options:
        cells = [Cell(c.suite, c.entry, c.method, c.seed, {**c.options, **options}) for c in cells]
    results = run_matrix(cells, out, log=log, cached_only=cached_only)
    return write_outputs(suite, results, out, command or f"purify bench --suite {suite} --out {out}")


if __name__ == "__main__":
    _main_cell(sys.argv[1], sys.argv[2])
