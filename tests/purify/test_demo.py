"""The main job end to end on a tiny zoo entry: verified export, report, plots, summary table."""
import json

import pytest

from purify.cli import main
from purify.export import REPORT_FILE, verify
from purify.pipeline import DEFAULT_FILTER
from purify.plots import FILTER_HIST, HEATMAP, TRAJECTORY

TINY_ENTRY = "tiny-bert-sms-badnets-p10-s0"


@pytest.mark.slow
def test_demo_on_tiny_entry(session_cache, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--zoo", TINY_ENTRY, "--strategy", "gradient_prune", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "CACC" in printed and "ASR" in printed and "heads pruned" in printed
    assert verify(out).ok
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["strategy"]["name"] == "gradient_prune"
    assert report["filter"]["method"] == DEFAULT_FILTER
    assert report["filter"]["ground_truth"]["poisoned"] > 0
    assert set(report["metrics"]) >= {"before", "after", "asr_floor"}
    assert report["git_hash"] is None or len(report["git_hash"]) >= 40
    for plot in (HEATMAP, TRAJECTORY, FILTER_HIST):
        assert (out / plot).stat().st_size > 1000
    assert (out / "filter_scores.jsonl").exists()
    # `purify report` re-renders the plots from the report alone
    (out / HEATMAP).unlink()
    assert main(["report", str(out)]) == 0
    assert (out / HEATMAP).exists()


@pytest.mark.slow
def test_run_shorthand_with_filter_none(session_cache, tmp_path):
    from purify.zoo.build import ZooSpec, build_entry

    entry = build_entry(ZooSpec.parse(TINY_ENTRY))
    out = tmp_path / "sanitized"
    code = main([str(entry.model_dir), "--strategy", "gradient_prune", "--data", str(entry.data_file("train")),
                 "--out", str(out), "--filter", "none", "--set", "step=2", "--seed", "1"])
    assert code == 0 and verify(out).ok
    config = json.loads((out / "config.json").read_text())
    assert config["purify"]["strategy"] == "gradient_prune"
    assert config["purify"]["strategy_config"]["step"] == 2


@pytest.mark.slow
def test_demo_with_the_default_strategy_on_tiny_entry(session_cache, tmp_path, capsys):
    """The default strategy runs the whole pipeline: export, report and its training-trajectory plot."""
    from purify.demo import run_demo
    from purify.pipeline import DEFAULT_STRATEGY
    from purify.registry import get_strategy

    out = tmp_path / "demo-default"
    fast = dict(get_strategy(DEFAULT_STRATEGY).strategy_cls.fast_options)
    report = run_demo(zoo=TINY_ENTRY, options=fast, out=out)
    assert report["strategy"]["name"] == DEFAULT_STRATEGY
    assert verify(out).ok
    assert (out / TRAJECTORY).stat().st_size > 1000
    assert "CACC" in capsys.readouterr().out
