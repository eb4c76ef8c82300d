"""`purify bench`: the matrices it runs, its table on a tiny selection, and its cache of finished cells."""
import json
import shutil
from dataclasses import asdict

import pytest

from purify.bench import (PRUNING_STRATEGIES, Cell, _claim, _main_cell, cell_output, cell_path, default_knob_cell,
                          run_cell_subprocess, run_matrix, run_suite, suite_cells)
from purify.bench.cells import run_tune_cell, study_cost
from purify.bench.suites import default_knob_results
from purify.bench.tables import markdown_table
from purify.cli import main
from purify.errors import ConfigError
from purify.tune import TUNE_DB

TINY_ENTRY = "tiny-bert-sms-badnets-p10-s0"
TINY_TUNE = {"val_samples": "64", "score_samples": "64",  # a canary that plants on the tiny entry
             "canary_lr": 3e-3, "canary_epochs": 15, "canary_num_tokens": 1, "canary_poison_rate": 0.3,
             "canary_max_length": 32, "canary_max_cacc_drop": 0.1}


def test_suites_name_their_cells():
    tune = suite_cells("tune")
    assert {c.entry for c in tune} == {f"minilm-movie-{a}-p10-s0" for a in ("badnets", "insertsent", "style")}
    assert {c.method for c in tune} == {"gradient_prune", "w2s_distill"}
    assert all(c.options["trials"] >= 1 for c in tune)
    filters = suite_cells("filters", entries=[TINY_ENTRY], methods=["gradsentry"])
    assert filters == [Cell("filters", TINY_ENTRY, "gradsentry")]
    with pytest.raises(ConfigError, match="unknown benchmark suite .nope.; known benchmark suites: filters, pipeline"):
        suite_cells("nope")


def test_pruning_matrix_has_both_objectives_and_three_seeds_on_the_multi_seed_entries():
    cells = suite_cells("pruning")
    per_entry = {e: {(c.method, c.options["objective"], c.seed) for c in cells if c.entry == e}
                 for e in {c.entry for c in cells}}
    assert len(per_entry["minilm-movie-badnets-p10-s0"]) == 6 * 2 * 3
    assert len(per_entry["minilm-movie-style-p10-s0"]) == 36
    assert per_entry["smollm2-movie-insertsent-p10-s0"] == {(m, o, 0) for m in PRUNING_STRATEGIES
                                                             for o in ("backdoor", "informative")}
    chosen = suite_cells("pruning", entries=["minilm-movie-badnets-p10-s0"], methods=["gradient_prune"], seeds=1)
    assert chosen == [Cell("pruning", "minilm-movie-badnets-p10-s0", "gradient_prune", 0, {"objective": o})
                      for o in ("backdoor", "informative")]  # only what was chosen


def test_pruning_table_reports_the_removable_cut_and_the_proxy_removed():
    from purify.bench.pruning import proxy_removed, pruning_table, removable_cut

    record = {"cell": {"entry": "e", "method": "gradient_prune", "seed": 0, "options": {"objective": "backdoor"}},
              "asr_before": 1.0, "asr_after": 0.2, "asr_floor": 0.1, "trigger_lift": 0.05, "cacc_before": 0.84,
              "cacc_after": 0.83, "heads_pruned": 9, "seconds": 60.0, "peak_rss_mb": 900.0,
              "objective": {"proxy_before": 0.9, "proxy_after": 0.3, "proxy_clean_rate": 0.1}}
    assert removable_cut(record) == pytest.approx(0.8 / 0.9)
    assert proxy_removed(record) == pytest.approx(0.75)
    row = pruning_table([record])[-1]
    assert "| e | gradient_prune | backdoor | 1 | 100.0 | 20.0 | 10.0 | 88.9 | 5.0 | 84.0 -> 83.0 |" in row
    assert "| 90.0 -> 30.0 (10.0) | 75.0 | 9.0 |" in row
    assert proxy_removed({**record, "objective": {}}) is None and removable_cut({**record, "asr_before": 0.1}) is None


def test_w2s_suite_shares_the_clean_fine_tune_cells_of_the_pruning_suite():
    entry = "minilm-movie-style-p10-s0"
    w2s = suite_cells("w2s", entries=[entry], methods=["baseline_finetune"])
    # cached with the pruning suite's cells, without an objective: its runner gives them the flag-cleaned split
    assert {(c.suite, c.method) for c in w2s} == {("pruning", "baseline_finetune")}
    assert all("objective" not in c.options for c in w2s)
    assert {c.suite for c in suite_cells("w2s", entries=[entry], methods=["plain_lora", "w2s_distill"])} == {"w2s"}


def test_cells_with_other_options_are_cached_apart():
    a, b = Cell("filters", TINY_ENTRY, "gradsentry"), Cell("filters", TINY_ENTRY, "gradsentry", 0, {"top_k": 8})
    assert a.key != b.key and a.key == Cell("filters", TINY_ENTRY, "gradsentry").key


def test_failed_cells_are_listed_under_the_table():
    table = markdown_table("filters", [{"cell": {"entry": "x", "method": "gradsentry", "options": {}},
                                        "error": "boom"}])
    assert "FAILED x / gradsentry: boom" in table


def test_a_failed_cell_keeps_its_whole_output_and_is_not_cached(tmp_path):
    cell = Cell("nope", TINY_ENTRY, "gradsentry")
    record = run_cell_subprocess(cell, tmp_path)
    assert "unknown suite 'nope'" in record["error"] and not cell_path(tmp_path, cell).exists()
    output = cell_output(tmp_path, cell)
    assert record["output"] == str(output) and "Traceback" in output.read_text()


def test_a_cell_another_bench_process_is_running_is_skipped_not_run_twice(tmp_path):
    cell = Cell("nope", TINY_ENTRY, "gradsentry")  # would fail if it ran
    messages = []
    with _claim(cell_path(tmp_path, cell)) as claimed:
        assert claimed
        [skipped] = run_matrix([cell], tmp_path, log=messages.append)
    assert skipped["missing"] and "another bench process is running it" in messages[-1]
    [ran] = run_matrix([cell], tmp_path, log=messages.append)  # released: this process runs it
    assert "unknown suite" in ran["error"]


def test_cached_only_reports_the_cached_cells_and_names_the_missing_ones(tmp_path):
    out = tmp_path / "bench"
    entry = "minilm-movie-badnets-p10-s0"
    missing, done = suite_cells("w2s", entries=[entry], methods=["w2s_distill", "plain_lora"], seeds=1)
    assert (missing.options["_label"], done.method) == ("plain_lora", "w2s_distill")
    record = {"cacc_before": 0.8, "cacc_after": 0.79, "asr_before": 1.0, "asr_after": 0.2, "asr_floor": 0.1,
              "heads_pruned": 0, "seconds": 5.0, "device": "cpu", "peak_rss_mb": 100.0}
    cell_path(out, done).parent.mkdir(parents=True)
    cell_path(out, done).write_text(json.dumps(record))
    md = run_suite("w2s", out, entries=[entry], methods=["w2s_distill", "plain_lora"], seeds=1, cached_only=True,
                   log=lambda _: None)
    text = md.read_text()
    assert f"| {entry} | w2s_distill | 1 | 80.0 | 79.0 | 100.0 | 20.0 |" in text
    assert f"Not run yet (1 of 2 cells; the command without --cached-only runs them): {entry} / plain_lora" in text
    assert not cell_path(out, missing).exists()  # nothing ran
    cells = json.loads((out / "w2s.json").read_text())["cells"]
    assert [c.get("missing", False) for c in cells] == [True, False]


def test_tune_table_compares_the_tuned_row_with_the_default_knob_cell(tmp_path):
    out = tmp_path / "bench"
    entry = "minilm-movie-badnets-p10-s0"
    figures = {"cacc_before": 0.8, "asr_before": 1.0, "asr_floor": 0.1, "heads_pruned": 0, "device": "cpu",
               "peak_rss_mb": 100.0}
    tuned = {**figures, "cacc_after": 0.79, "asr_after": 0.25, "seconds": 900.0, "best_params": {"lr": 1e-4},
             "canary": {"asr": 0.99}, "chosen": {"canary_asr": 0.2, "cacc_drop": 0.5}, "n_complete": 4,
             "n_pruned": 1}
    default = default_knob_cell(entry, "w2s_distill")
    assert default == suite_cells("w2s", entries=[entry], methods=["w2s_distill"], seeds=1)[0]
    assert default_knob_cell(entry, "gradient_prune") == Cell("pruning", entry, "gradient_prune")
    cell_path(out, default).parent.mkdir(parents=True)
    cell_path(out, default).write_text(json.dumps({**figures, "cacc_after": 0.81, "asr_after": 0.3, "seconds": 60.0}))
    results = [{"cell": asdict(Cell("tune", entry, m, 0, {"trials": 4})), **tuned}
               for m in ("w2s_distill", "gradient_prune")]
    results[1].update(canary_seconds=None, trial_seconds=500.0, apply_seconds=100.0,  # canary cached by old code
                      study_trials=[{"number": 0, "origin": "defaults", "canary_asr": 0.33, "cacc_drop": 1.62}])
    table = markdown_table("tune", results, default_knob_results(results, out))
    assert f"| {entry} | w2s_distill | 25.0 | 30.0 | 79.0 | 81.0 | 900 | 60 |" in table
    assert "planted at ASR 99.0; the default knobs (trial 0): canary ASR 33.0, CACC drop 1.62 points)" in table
    assert f"| {entry} | gradient_prune | 25.0 | not measured | 79.0 | not measured | 600+? = ? + 500 + 100 | - |" \
        in table


def test_a_tune_cell_counts_the_whole_study_across_resumes():
    study = {"canary": {"reused": True, "seconds": 3.0, "attempts": [{"seconds": 40.0}, {"seconds": 50.0}]},
             "trials": [{"seconds": 100.0}, {"seconds": 0.0}, {"seconds": None}, {"seconds": 20.5}],
             "seconds": {"total_before_apply": 10.0}}
    assert study_cost(study, 70.0) == {"canary_seconds": 90.0, "trial_seconds": 120.5, "apply_seconds": 60.0}
    study["canary"]["attempts"] = [{"asr": 1.0}]  # planted by code that did not time attempts, then reused
    assert study_cost(study, 70.0)["canary_seconds"] is None
    study["canary"]["reused"] = False
    assert study_cost(study, 70.0)["canary_seconds"] == 3.0


@pytest.mark.slow
def test_filters_suite_on_a_tiny_entry_writes_its_table_and_reuses_the_cache(session_cache, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--suite", "filters", "--zoo", TINY_ENTRY, "--filters", "gradsentry",
            "--set", "batch_size=32", "--out", str(out)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert f"| {TINY_ENTRY} | gradsentry | batch_size=32 |" in first
    record = json.loads((out / "filters.json").read_text())["cells"][0]
    assert 0 <= record["recall"] <= 1 and 0 <= record["clean_kept"] <= 1
    assert record["speed"]["loop_over_vmap"] > 0 and record["speed"]["vmap_over_floor"] > 0
    assert 0 <= record["length_matched_auroc"] <= 1
    assert (out / "filters.md").exists() and (out / "filters.png").stat().st_size > 1000
    cached = cell_path(out, Cell("filters", TINY_ENTRY, "gradsentry", 0, {"batch_size": "32"}))
    assert cached.exists()
    stamp = cached.stat().st_mtime_ns
    assert main(argv) == 0
    assert "cached" in capsys.readouterr().out and cached.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_filter_command_writes_kept_samples_scores_and_histogram(session_cache, tmp_path, capsys):
    from purify.zoo.build import ZooSpec, build_entry

    entry = build_entry(ZooSpec.parse(TINY_ENTRY))
    out = tmp_path / "clean.jsonl"
    assert main(["filter", str(entry.data_file("train")), "--model", str(entry.model_dir), "--method", "gradsentry",
                 "--set", "batch_size=32", "--threshold", "0.5", "--out", str(out)]) == 0
    total = len(entry.load("train"))
    kept = out.read_text().splitlines()
    scores = [json.loads(line) for line in out.with_suffix(".scores.jsonl").read_text().splitlines()]
    assert len(scores) == total and len(kept) == sum(not s["removed"] for s in scores)
    assert all((s["score"] > 0.5) == s["removed"] for s in scores)
    assert out.with_suffix(".hist.png").stat().st_size > 1000
    assert f"kept {len(kept)} of {total}" in capsys.readouterr().out


def test_an_interrupted_tune_cell_resumes_its_study_and_cleans_up(session_cache, tmp_path):
    options = {"trials": 2, **TINY_TUNE}
    cell = Cell("tune", TINY_ENTRY, "gradient_prune", 0, options)
    path = cell_path(tmp_path, cell)
    path.parent.mkdir(parents=True)
    work = path.with_suffix(".work")
    first = run_tune_cell(cell, work)
    assert first["resumed_from"] == 0 and first["n_complete"] + first["n_pruned"] == 2
    for left in (work / "out").iterdir():  # interrupted after the study: only its database is left
        if left.name != TUNE_DB:
            left.unlink() if left.is_file() else shutil.rmtree(left)
    _main_cell(json.dumps(asdict(cell)), str(path))
    record = json.loads(path.read_text())
    assert record["resumed_from"] == 2 and record["best_params"] == first["best_params"]
    assert record["asr_after"] == first["asr_after"] and not work.exists()
    # the trials ran in the first process; their cost is still counted (from the study's SQLite records)
    assert record["trial_seconds"] == first["trial_seconds"] > 0 and record["canary_seconds"] > 0
    assert [t["number"] for t in record["study_trials"]] == [0, 1] and record["study_trials"][0]["origin"] == "defaults"


def test_pruning_suite_lists_every_registered_pruning_strategy():
    from purify.pruning import PruningStrategy
    from purify.registry import available_strategies

    pruning = {n for n, e in available_strategies().items() if issubclass(e.strategy_cls, PruningStrategy)}
    assert set(PRUNING_STRATEGIES) == pruning and len(PRUNING_STRATEGIES) == len(pruning)


def test_filter_suite_defaults_to_every_registered_filter():
    from purify.filters import FILTERS

    assert [c.method for c in suite_cells("filters", entries=[TINY_ENTRY])] == FILTERS.names()
