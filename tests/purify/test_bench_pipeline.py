"""`purify bench --suite pipeline`: the realistic setting (filter + trusted split, no flags), on a tiny entry."""
from __future__ import annotations

import json

import pytest

from purify.bench import Cell, run_suite, suite_cells
from purify.bench.pipeline import MULTI_SEED, PIPELINE_ENTRIES, PIPELINE_ROWS, _config

TINY_ENTRY = "tiny-bert-sms-badnets-p10-s0"


def test_the_matrix_covers_every_ten_percent_entry_with_three_seeds_where_asked():
    cells = suite_cells("pipeline")
    assert {c.entry for c in cells} == set(PIPELINE_ENTRIES) and len(PIPELINE_ENTRIES) == 17
    for entry in MULTI_SEED:
        assert {c.seed for c in cells if c.entry == entry and c.method == "default"} == {0, 1, 2}
    assert {c.method for c in cells} == {"default", "upper_bound", "retrain_base"}


@pytest.mark.slow
def test_a_pipeline_cell_runs_what_a_user_runs(session_cache, tmp_path):
    fast = {"strategy": "gradient_prune", "step": "2", "filter.probe_samples": "16", "filter.candidates": "16",
            "filter.phrases": "4"}
    md = run_suite("pipeline", tmp_path, entries=[TINY_ENTRY], methods=list(PIPELINE_ROWS), seeds=1, options=fast,
                   log=lambda *_: None)
    results = json.loads((tmp_path / "pipeline.json").read_text())["cells"]
    by_row = {r["cell"]["method"]: r for r in results}
    default, upper = by_row["default"], by_row["upper_bound"]
    assert default["filter"] == "trigger_words" and upper["filter"] == "none"
    assert default["n_train"] + default["filter_removed"] == upper["n_train"] + default["poisoned"]
    assert "realistic" in default["train_data"] and "upper bound" in upper["train_data"]
    for r in (default, upper):
        assert r["trigger_lift"] == pytest.approx(r["asr_after"] - r["clean_target_rate"])
        assert 0 <= r["clean_target_rate"] <= 1
        assert r["compute"]["epoch_floor_seconds"] > 0 and "strategy" in r["compute"]["timings_in_floors"]
        assert r["verdict"] in ("removed", "weakened", "survived", "unknown")
    assert default["default"] is False  # options were given: not the default pipeline
    table = md.read_text()
    assert f"| {TINY_ENTRY} | default |" in table and f"| {TINY_ENTRY} | upper_bound |" in table
    assert f"| {TINY_ENTRY} | zoo clean reference |" in table and default["clean_reference_cacc"] > 0.5
    assert Cell("pipeline", TINY_ENTRY, "default").key != Cell("pipeline", TINY_ENTRY, "default", 0, fast).key


def test_a_reference_row_runs_its_strategy_behind_the_default_filter(session_cache):
    from purify.zoo.build import entry_named
    from purify.pipeline import DEFAULT_FILTER

    cfg = _config(Cell("pipeline", TINY_ENTRY, "retrain_base"), entry_named(TINY_ENTRY), {"base": "scratch"})
    assert cfg.strategy == "retrain_base" and cfg.filter == DEFAULT_FILTER
    assert cfg.strategy_options == {"base": "scratch"} and cfg.trusted.endswith("trusted.jsonl")
