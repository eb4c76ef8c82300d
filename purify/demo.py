"""`purify demo`: build (or reuse) the default backdoored model, purify it, and show the before/after table."""
from __future__ import annotations

from pathlib import Path

from .export import update_report
from .outputs import check_destination
from .pipeline import DEFAULT_FILTER, DEFAULT_STRATEGY, PipelineConfig, run_pipeline
from .report import print_summary
from .zoo.build import ZooSpec, build_entry

DEFAULT_ZOO = "minilm-movie-badnets-p10-s0"


def run_demo(*, strategy: str | None = None, filter_name: str | None = None, zoo: str | None = None,
             options: dict | None = None, out: str | Path | None = None, seed: int = 0) -> dict:
    """Run the main job on a zoo entry (default: MiniLM-L6, movie reviews, badnets, 10% poison)."""
    strategy = strategy or DEFAULT_STRATEGY
    if out is None:
        out = Path("runs") / f"demo-{strategy}"
        out.parent.mkdir(parents=True, exist_ok=True)  # the default's own folder; a given --out must have one
    out = Path(out)
    check_destination(out, overwrite=True)  # the demo replaces its own earlier run only: checked before the build
    entry = build_entry(ZooSpec.parse(zoo or DEFAULT_ZOO))
    print(f"[demo] purifying zoo entry {entry.manifest['name']} ({entry.path})")
    cfg = PipelineConfig(
        strategy=strategy, strategy_options=dict(options or {}), filter=filter_name or DEFAULT_FILTER, seed=seed,
        eval_clean=str(entry.data_file("test_clean")), eval_triggered=str(entry.data_file("test_triggered")),
        target=entry.target, overwrite=True,
    )
    report = run_pipeline(entry.model_dir, entry.data_file("train"), out, cfg)
    floor = entry.manifest["metrics"]["clean"]["asr"]
    report = update_report(out, {"metrics": {**report.get("metrics", {}), "asr_floor": floor},
                                 "zoo_entry": entry.manifest["name"]})
    print_summary(report)
    return report
