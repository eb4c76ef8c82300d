"""`purify bench --suite pipeline`: exactly what a user runs, on every zoo entry, in the realistic setting.

Each cell runs the pipeline of `purify run`: the entry's untrusted training split goes through the configured
filter, its 200-sample trusted split is the validation data, and no ground-truth flag is read. The flags are used
afterwards, for the filter's recall in the table, and by one reference row: `upper_bound` trains on the split
minus its flagged lines (labelled as such, never the headline). Cells of the default pipeline carry
`"default": true`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

#: the issue's matrix: every 10%-poison entry of MiniLM (movie, SMS, BBC) and SmolLM2 (movie)
PIPELINE_ENTRIES: tuple[str, ...] = tuple(
    [f"minilm-movie-{a}-p10-s0" for a in ("badnets", "insertsent", "syntactic", "style", "clean_label")]
    + [f"minilm-{d}-{a}-p10-s0" for d in ("sms", "bbc") for a in ("badnets", "insertsent", "syntactic", "style")]
    + [f"smollm2-movie-{a}-p10-s0" for a in ("badnets", "insertsent")]
    + [f"minilm-movie-{a}-p10-s0" for a in ("rarepieces", "plainsent")]  # frozen variants (purify.zoo.variants)
)
MULTI_SEED = ("minilm-movie-badnets-p10-s0", "minilm-movie-style-p10-s0")
#: rows: the default pipeline, the flag-removed upper bound of the default strategy, and the reference strategies a
#: user could pick instead (behind the default filter; they need what a user often lacks, e.g. the base model)
PIPELINE_ROWS = ("default", "upper_bound")
REFERENCE_ROWS = ("retrain_base",)
ROWS = PIPELINE_ROWS + REFERENCE_ROWS
#: a pruning strategy's record of its objective kept in a cell (purify.pruning.objective_facts)
OBJECTIVE_FACTS = ("objective", "signal", "proxy_clean_rate", "proxy_stop_at", "proxy_before", "proxy_after",
                   "stop_reason", "proxy_after_pruning", "recovery")


def _config(cell: Any, entry: Any, options: dict) -> Any:
    """The `purify run` configuration of a cell: options go to the strategy, "filter.KEY" ones to the filter."""
    from ..pipeline import DEFAULT_FILTER, DEFAULT_STRATEGY, PipelineConfig

    strategy = options.pop("strategy", DEFAULT_STRATEGY)
    filter_name = options.pop("filter", DEFAULT_FILTER if cell.method == "default" else "none")
    if cell.method not in PIPELINE_ROWS:
        strategy = cell.method  # a reference row or any registered strategy, behind the default filter
        filter_name = options.pop("filter", DEFAULT_FILTER)
    filter_options = {k.split(".", 1)[1]: options.pop(k) for k in list(options) if k.startswith("filter.")}
    return PipelineConfig(strategy=strategy, strategy_options=options, filter=filter_name,
                          filter_options=filter_options if filter_name != "none" else {}, seed=cell.seed,
                          trusted=str(entry.data_file("trusted")), eval_clean=str(entry.data_file("test_clean")),
                          eval_triggered=str(entry.data_file("test_triggered")), target=entry.target,
                          overwrite=True)


def run_pipeline_cell(cell: Any, work: Path) -> dict:
    """Run the pipeline on one entry; the cell record keeps the report's figures and where the time went."""
    from ..zoo.build import entry_named
    from .matrix import _device_name, _peak_mb
    from ..data import write_jsonl
    from ..pipeline import run_pipeline

    entry = entry_named(cell.entry)
    options = {k: v for k, v in cell.options.items() if not k.startswith("_")}
    cfg = _config(cell, entry, options)
    data = entry.data_file("train")
    work.mkdir(parents=True, exist_ok=True)
    if cell.method == "upper_bound":  # the reference row: flagged lines removed, nothing filtered
        data = work / "train_unflagged.jsonl"
        write_jsonl(data, entry.load("train").without_poisoned().samples)
    started = time.time()
    report = run_pipeline(entry.model_dir, data, work / "export", cfg)
    return _record(cell, entry, report, time.time() - started) | {"device": _device_name(), "peak_rss_mb": _peak_mb()}


def _record(cell: Any, entry: Any, report: dict, seconds: float) -> dict:
    """The cell's JSON fields, from the pipeline's report."""
    before, after = report["metrics"]["before"], report["metrics"]["after"]
    filt = report.get("filter", {})
    truth = filt.get("ground_truth", {})
    probe = report.get("probe") or {}
    return {
        "default": cell.method == "default" and not cell.options,
        "strategy": report["strategy"]["name"], "filter": filt.get("method"),
        "asr_before": before["asr"], "asr_after": after["asr"], "asr_floor": entry.manifest["metrics"]["clean"]["asr"],
        "clean_reference_cacc": entry.manifest["metrics"]["clean"]["cacc"],
        "cacc_before": before["cacc"], "cacc_after": after["cacc"],
        "trigger_lift_before": before.get("trigger_lift"), "trigger_lift": after.get("trigger_lift"),
        "clean_target_rate": after.get("clean_target_rate"),
        "filter_removed": filt.get("n_removed"), "filter_removed_poisoned": truth.get("removed_poisoned"),
        "poisoned": entry.manifest["counts"]["poisoned"], "n_train": filt.get("n_kept"),
        "probe_triggers": [t["text"] for t in probe.get("triggers", [])],
        "probe_target": probe.get("suspected_target"), "probe_before": probe.get("before"),
        "probe_after": probe.get("after"), "verdict": report.get("verdict", {}).get("status"),
        "seconds": round(seconds, 1), "timings": report.get("timings"), "compute": report.get("compute"),
        "heads_pruned": (report.get("result") or {}).get("num_pruned", 0),
        "objective": {k: v for k, v in (report.get("result") or {}).items() if k in OBJECTIVE_FACTS},
        "train_data": ("zoo train split minus flagged-poisoned lines (upper bound)" if cell.method == "upper_bound"
                       else "zoo train split through the filter, trusted split as validation (realistic)"),
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def pipeline_table(ok: list[dict]) -> list[str]:
    """Markdown rows: one per cell, the default pipeline first on each entry, a mean ± sd row under a row with
    several seeds, and the zoo's clean reference last on each entry."""
    lines = ["| entry | row | seed | ASR before | ASR after | floor | trigger lift | CACC before -> after | "
             "removed (poisoned / all) | triggers found | verdict | s | git |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {row: i for i, row in enumerate(ROWS)}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in sorted(ok, key=lambda r: (r["cell"]["entry"], order.get(r["cell"]["method"], 9), r["cell"]["method"],
                                       r["cell"]["seed"])):
        groups.setdefault((r["cell"]["entry"], r["cell"]["method"]), []).append(r)
    entries = list(dict.fromkeys(entry for entry, _ in groups))
    for entry in entries:
        for (e, _method), rows in groups.items():
            if e != entry:
                continue
            lines += [_cell_row(r) for r in rows]
            if len(rows) > 1:
                lines.append(_spread_row(rows))
        last = [rows[-1] for (e, _), rows in groups.items() if e == entry][-1]
        lines.append(_clean_reference_row(entry, last))
    return lines


def _cell_row(r: dict) -> str:
    c = r["cell"]
    removed = "-" if r.get("filter_removed") is None else \
        f"{r.get('filter_removed_poisoned', '?')}/{r['poisoned']} / {r['filter_removed']}"
    triggers = ", ".join(r.get("probe_triggers") or [])[:60] or "-"
    row = c["method"] + (" (default)" if r.get("default") else "")
    return (f"| {c['entry']} | {row} | {c['seed']} | {_pct(r['asr_before'])} | {_pct(r['asr_after'])} | "
            f"{_pct(r['asr_floor'])} | {_pct(r.get('trigger_lift'))} | {_pct(r['cacc_before'])} -> "
            f"{_pct(r['cacc_after'])} | {removed} | {triggers} | {r.get('verdict') or '-'} | {r['seconds']:.0f} | "
            f"{_commit(r)} |")


def _commit(r: dict) -> str:
    """The code a cell ran (cells are cached by options, not by code: rows of one table may differ)."""
    return ((r.get("provenance") or {}).get("git_hash") or "-")[:7]


def _spread_row(rows: list[dict]) -> str:
    """Mean ± sample standard deviation over the seeds of one entry and row."""
    from .tables import mean_sd

    def ms(key: str) -> str:
        return mean_sd([r.get(key) for r in rows])

    c = rows[0]["cell"]
    seconds = sum(r["seconds"] for r in rows) / len(rows)
    return (f"| {c['entry']} | {c['method']}: mean ± sd | {len(rows)} seeds | {ms('asr_before')} | {ms('asr_after')} | "
            f"{_pct(rows[0]['asr_floor'])} | {ms('trigger_lift')} | {ms('cacc_before')} -> {ms('cacc_after')} | "
            f"- | - | - | {seconds:.0f} | {', '.join(dict.fromkeys(_commit(r) for r in rows))} |")


def _clean_reference_row(entry: str, record: dict) -> str:
    """The zoo's clean model on this entry (trained on the split before poisoning): the bar, not a product row."""
    cacc = _pct(record.get("clean_reference_cacc"))
    return (f"| {entry} | zoo clean reference | - | - | {_pct(record['asr_floor'])} | {_pct(record['asr_floor'])} | - "
            f"| - -> {cacc} | - | - | - | - | - |")
