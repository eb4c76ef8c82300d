"""The run's backdoor probe end to end: the filter's findings reach the strategy, the report and the model card."""
from __future__ import annotations

import json

from purify.export import REPORT_FILE
from purify.pipeline import PipelineConfig, run_pipeline
from purify.testing.tiny_task import TRIGGER, lay_out_tiny_task
from strategies.w2s_distill import W2SDistill


def test_filter_findings_reach_the_strategy_and_the_card(tmp_path):
    model_dir, files, task = lay_out_tiny_task(tmp_path)
    cfg = PipelineConfig(strategy="w2s_distill", strategy_options=dict(W2SDistill.fast_options),
                         filter="trigger_words", filter_options={"probe_samples": 32, "candidates": 16},
                         trusted=str(files["trusted"]), eval_clean=str(files["test_clean"]),
                         eval_triggered=str(files["test_triggered"]), target=task.target)
    out = tmp_path / "sanitized"
    report = run_pipeline(model_dir, files["train"], out, cfg, log=lambda *_: None)
    probe = report["probe"]
    assert probe["source"] == "filter:trigger_words" and probe["suspected_target"] == task.target
    assert TRIGGER in [t["text"] for t in probe["triggers"]]
    assert report["result"]["inversion"]["source"] == "filter:trigger_words"  # no second inversion
    assert probe["after"]["lift"] < probe["before"]["lift"]
    after = report["metrics"]["after"]
    assert after["trigger_lift"] == after["asr"] - after["clean_target_rate"]
    verdict = report["verdict"]
    assert verdict["status"] in ("removed", "weakened", "survived") and "triggered test file" in verdict["evidence"]
    card = (out / "README.md").read_text()
    assert f"# {verdict['headline']}" in card and f"`{TRIGGER}`" in card
    assert json.loads((out / REPORT_FILE).read_text())["verdict"] == verdict


def test_a_surviving_backdoor_is_named_on_the_card(tmp_path):
    """A strategy that cannot touch the backdoor (no epochs of unlearning) gets a card that says so first."""
    model_dir, files, task = lay_out_tiny_task(tmp_path)
    cfg = PipelineConfig(strategy="gradient_prune", strategy_options={"step": 1, "max_prune_fraction": 0.125},
                         filter="trigger_words", filter_options={"probe_samples": 32, "candidates": 16},
                         trusted=str(files["trusted"]), eval_clean=str(files["test_clean"]),
                         eval_triggered=str(files["test_triggered"]), target=task.target)
    out = tmp_path / "sanitized"
    report = run_pipeline(model_dir, files["train"], out, cfg, log=lambda *_: None)
    assert report["verdict"]["status"] == "survived"
    first_heading = next(line for line in (out / "README.md").read_text().splitlines() if line.startswith("# "))
    assert "survived" in first_heading


def test_the_filters_removed_samples_reach_the_default_strategy(tmp_path):
    """What the filter removed travels with the probe, and anchor_unlearn unlearns on it (dirty-label poison)."""
    from strategies.anchor_unlearn import AnchorUnlearn

    model_dir, files, task = lay_out_tiny_task(tmp_path)
    cfg = PipelineConfig(strategy="anchor_unlearn", strategy_options={**AnchorUnlearn.fast_options, "epochs": 2,
                                                                      "flagged_weight": 1.0},
                         filter="trigger_words", filter_options={"probe_samples": 32, "candidates": 16},
                         trusted=str(files["trusted"]), eval_clean=str(files["test_clean"]),
                         eval_triggered=str(files["test_triggered"]), target=task.target)
    report = run_pipeline(model_dir, files["train"], tmp_path / "sanitized", cfg, log=lambda *_: None)
    removed = report["filter"]["n_removed"]
    assert removed > 0 and report["result"]["flagged_check"]["relabelled"]
    assert 0 < report["result"]["flagged_unlearned"] <= 2 * removed
    assert report["metrics"]["after"]["asr"] < 0.2
