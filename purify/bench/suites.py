"""The suites, a registry of matrices: which cells each runs, which runner measures a cell, and the outputs."""
from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..provenance import provenance
from ..registry_base import Registry
from .matrix import Cell, cell_path, run_matrix, save_json
from .pipeline import MULTI_SEED, PIPELINE_ENTRIES, ROWS
from .tables import finished, markdown_table, plot_suite


MINILM_ATTACKS = ("badnets", "insertsent", "syntactic", "style")
ZOO_ENTRIES = (
    [f"minilm-{d}-{a}-p10-s0" for d in ("movie", "sms", "bbc") for a in MINILM_ATTACKS]
    + ["minilm-movie-clean_label-p10-s0", "smollm2-movie-badnets-p10-s0", "smollm2-movie-insertsent-p10-s0"]
)
#: the pruning suite's strategies in the order of its table rows (a test keeps it equal to the registry's
#: PruningStrategy subclasses)
PRUNING_STRATEGIES = ("gradient_prune", "variance_prune", "sparse_prune", "ensemble_prune", "rl_prune", "bayes_prune")
#: trials per tuned strategy in the tune suite (a w2s_distill trial costs ten gradient_prune trials on the CPU)
TUNE_TRIALS = {"gradient_prune": 12, "w2s_distill": 4}


Cells = Callable[[list[str] | None, list[str] | None, int], list[Cell]]


@dataclass(frozen=True)
class Suite:
    """A benchmark matrix: `cells(entries, methods, seeds)` lists its cells (narrowed when given); `runner`, a
    "module:function" imported only inside a cell's subprocess, measures one cell as `runner(cell, work)` (`work`
    is the cell's scratch folder, kept across an interruption)."""

    name: str
    cells: Cells
    runner: str

    def run_cell(self, cell: Cell, work: Path) -> dict:
        """Measure `cell` with this suite's runner."""
        module, function = self.runner.split(":")
        return getattr(importlib.import_module(module), function)(cell, work)


#: every suite, by name; `purify bench --suite NAME` and a cell's subprocess look them up here
SUITES: Registry[Suite] = Registry("benchmark suite")


def _per_seed(suite: str, entries: list[str], methods: list[str], seeds: int) -> list[Cell]:
    """One cell per entry, method and seed (`seeds` on the multi-seed entries, 1 elsewhere)."""
    return [Cell(suite, e, m, s) for e in entries for m in methods for s in range(seeds if e in MULTI_SEED else 1)]


def _zoo_cells(entries: list[str] | None, methods: list[str] | None, seeds: int) -> list[Cell]:
    return [Cell("zoo", e, "build") for e in (entries or ZOO_ENTRIES)]


def _pruning_cells(entries: list[str] | None, methods: list[str] | None, seeds: int) -> list[Cell]:
    """Every pruning strategy in both objectives on each entry (`seeds` on the multi-seed entries)."""
    from .pruning import PRUNING_ENTRIES, objective_options

    return [Cell("pruning", e, m, s, options) for e in entries or PRUNING_ENTRIES
            for m in methods or PRUNING_STRATEGIES for options in objective_options()
            for s in range(seeds if e in MULTI_SEED else 1)]


def _w2s_variants(entry: str) -> dict[str, tuple[str, dict]]:
    """The w2s suite's rows on an entry: label -> (strategy, options)."""
    teacher = "minilm-l6" if entry.startswith("smollm2") else "minilm-l3"
    return {"baseline_finetune": ("baseline_finetune", {}),
            "plain_lora": ("w2s_distill", {"teacher": teacher, "beta": 0.0, "gamma": 0.0}),
            "w2s_distill": ("w2s_distill", {"teacher": teacher}),
            "w2s_distill+safegrad": ("w2s_distill", {"teacher": teacher, "surgery": "safegrad"})}


def _w2s_cells(entries: list[str] | None, methods: list[str] | None, seeds: int) -> list[Cell]:
    default = [f"minilm-movie-{a}-p10-s0" for a in MINILM_ATTACKS + ("clean_label",)] + \
        [f"smollm2-movie-{a}-p10-s0" for a in ("badnets", "insertsent")]
    cells = []
    for e in entries or default:
        n = seeds if e in MULTI_SEED else 1
        for label, (method, options) in _w2s_variants(e).items():
            if methods and label not in methods:
                continue
            # the clean fine-tune is the same computation in both suites: share the pruning suite's cells
            suite_of = "pruning" if method == "baseline_finetune" else "w2s"
            cells += [Cell(suite_of, e, method, s, {**options, "_label": label} if label != method else options)
                      for s in range(n)]
    return cells


def _filter_cells(entries: list[str] | None, methods: list[str] | None, seeds: int) -> list[Cell]:
    from ..filters import FILTERS

    default = ([f"minilm-movie-{a}-p{r}-s0" for a in ("badnets", "insertsent") for r in (1, 10, 50)]
               + [f"minilm-movie-{a}-p10-s0" for a in ("syntactic", "style", "clean_label")]
               + ["smollm2-movie-badnets-p10-s0"])
    return [Cell("filters", e, m) for e in entries or default for m in (methods or FILTERS.names())]


def _tune_cells(entries: list[str] | None, methods: list[str] | None, seeds: int) -> list[Cell]:
    default = [f"minilm-movie-{a}-p10-s0" for a in ("badnets", "insertsent", "style")]
    return [Cell("tune", e, m, 0, {"trials": TUNE_TRIALS.get(m, 12)})
            for e in entries or default for m in (methods or ("gradient_prune", "w2s_distill"))]


def _pipeline_cells(entries: list[str] | None, methods: list[str] | None, seeds: int) -> list[Cell]:
    return _per_seed("pipeline", entries or list(PIPELINE_ENTRIES), list(methods or ROWS), seeds)


_CELLS = "purify.bench.cells"
for _suite in (Suite("zoo", _zoo_cells, f"{_CELLS}:run_zoo_cell"),
               Suite("pruning", _pruning_cells, "purify.bench.pruning:run_pruning_cell"),
               Suite("w2s", _w2s_cells, f"{_CELLS}:run_strategy_cell"),
               Suite("filters", _filter_cells, "purify.bench.filters:run_filter_cell"),
               Suite("tune", _tune_cells, f"{_CELLS}:run_tune_cell"),
               Suite("pipeline", _pipeline_cells, "purify.bench.pipeline:run_pipeline_cell")):
    SUITES.register(_suite.name, _suite)


def suite_cells(suite: str, *, entries: list[str] | None = None, methods: list[str] | None = None,
                seeds: int = 3) -> list[Cell]:
    """The cells of a suite, optionally narrowed to some entries / methods; `seeds` on the multi-seed entries."""
    return SUITES.get(suite).cells(entries, methods, seeds)


def default_knob_cell(entry: str, method: str) -> Cell | None:
    """The seed-0 cell that runs `method` with its default knobs on `entry` (pruning or w2s suite), if either has it.

    A tune row is compared with it: same entry, same data, only the knobs differ. For a pruning strategy that is
    the cell without an objective option: the strategy's defaults on the flag-cleaned split, as the tune reads it.
    """
    if method in PRUNING_STRATEGIES:
        return Cell("pruning", entry, method)
    suite = "w2s" if method == "w2s_distill" else None
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
