"""Human-readable summaries of a run's report, and re-rendering of its plots."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from .errors import CheckpointError
from .export import REPORT_FILE, update_report
from .plots import render_report_plots
from .verify import HASHES_KEY, sha256_file


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def summary_rows(report: Mapping) -> list[tuple[str, str, str]]:
    """(metric, before, after) rows for the before/after table."""
    rows = []
    metrics = report.get("metrics") or {}
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    if before:
        rows.append(("CACC", _fmt(before.get("cacc")), _fmt(after.get("cacc"))))
        if before.get("asr") is not None:
            rows.append(("ASR", _fmt(before.get("asr")), _fmt(after.get("asr"))))
        if before.get("trigger_lift") is not None:
            rows.append(("trigger lift", _fmt(before.get("trigger_lift")), _fmt(after.get("trigger_lift"))))
    floor = metrics.get("asr_floor")
    if floor is not None:
        rows.append(("ASR of the clean reference (floor)", _fmt(floor), _fmt(floor)))
    filt = report.get("filter") or {}
    if filt.get("method") not in (None, "none"):
        text = f"{filt.get('n_removed')} of {filt.get('n')}"
        truth = filt.get("ground_truth") or {}
        if truth:
            text += f" ({truth.get('removed_poisoned')} of {truth.get('poisoned')} truly poisoned)"
        rows.append((f"samples filtered out ({filt.get('method')})", "", text))
    result = report.get("result") or {}
    rows.append(("heads pruned", "0", str(result.get("num_pruned", 0))))
    timings = report.get("timings") or {}
    if timings:
        seconds = timings.get("total_before_export")
        rows.append(("time (s)", "", "-" if seconds is None else f"{seconds:.0f}"))
    return rows


def print_summary(report: Mapping) -> None:
    """Print the before/after table of a run."""
    from rich.console import Console
    from rich.table import Table

    strategy = (report.get("strategy") or {}).get("name", "?")
    table = Table(title=f"purify: {strategy}")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for row in summary_rows(report):
        table.add_row(*row)
    console = Console()
    console.print(table)
    verdict = report.get("verdict")
    if verdict:
        console.print(f"{verdict['headline']} ({verdict['evidence']})")
    stages = time_rows(report)
    if stages:
        times = Table(title="where the time went")
        for name in ("stage", "seconds", "epoch floors"):
            times.add_column(name, justify="left" if name == "stage" else "right")
        for row in stages:
            times.add_row(*row)
        console.print(times)


def time_rows(report: Mapping) -> list[tuple[str, str, str]]:
    """(stage, seconds, multiple of the run's epoch floor) rows; the floor is one forward+backward pass over the
    training data, measured in the same run."""
    timings = report.get("timings") or {}
    compute = report.get("compute") or {}
    floors = compute.get("timings_in_floors") or {}
    rows = [(stage, f"{seconds:.1f}", _fmt(floors.get(stage))) for stage, seconds in timings.items()]
    if compute.get("epoch_floor_seconds") is not None:
        rows.append(("(epoch floor)", f"{compute['epoch_floor_seconds']:.1f}", "1"))
    return rows


def load_report(folder: str | Path) -> dict:
    """The purify_report.json of an export folder."""
    path = Path(folder) / REPORT_FILE
    if not path.exists():
        raise CheckpointError(f"{folder} has no {REPORT_FILE}; is it a folder written by purify?")
    return json.loads(path.read_text())


def rerender(folder: str | Path) -> dict:
    """Re-draw a run's plots from its report (and filter scores file) and print its summary."""
    folder = Path(folder)
    report = load_report(folder)
    scores = None
    scores_file = folder / "filter_scores.jsonl"
    if scores_file.exists():
        scores = [json.loads(line)["score"] for line in scores_file.read_text().splitlines() if line.strip()]
    written = render_report_plots(report, folder, scores)
    if isinstance(report.get(HASHES_KEY), dict):  # the redrawn plots are purify's own: keep `verify` in step
        redrawn = {Path(p).resolve().relative_to(folder.resolve()).as_posix(): sha256_file(Path(p)) for p in written}
        report = update_report(folder, {HASHES_KEY: {**report[HASHES_KEY], **redrawn}})
    print_summary(report)
    for path in written:
        print(f"wrote {path}")
    return report
