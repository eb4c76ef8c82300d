"""The filter cache: a filter's result is stored by content and reused for the same model, data, options and code."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from purify.checkpoint import load_checkpoint
from purify.cli import _pipeline_config, main
from purify.cli_parser import build_parser
from purify.data import TaskData
from purify.filter_cache import cached_run, entry_path, filter_key
from purify.filters import TriggerWords, build_filter
from purify.filters.base import _jsonable
from purify.pipeline import FILTER_SCORES_FILE, PipelineConfig, run_pipeline
from purify.testing.tiny_task import lay_out_tiny_task
from purify.verify import PROBE_FILE

OPTIONS = {**TriggerWords.fast_options, "seed": 0}


class Recomputed(Exception):
    """Raised by a filter that must not have been run."""


@pytest.fixture
def laid_out(tmp_path):
    """The tiny backdoored model saved as a folder, its task, and the task's files as a user has them."""
    return lay_out_tiny_task(tmp_path)


def _run(model_dir, data, trusted, logs=None):
    """The trigger_words filter through the cache, on a quarter of the data."""
    filt = build_filter("trigger_words", OPTIONS)
    return cached_run(filt, load_checkpoint(model_dir), data, trusted, log=(logs if logs is not None else []).append)


def test_a_reloaded_result_equals_the_computed_one(laid_out):
    model_dir, _, task = laid_out
    data = task.train.subset(range(0, len(task.train), 4))
    computed = _run(model_dir, data, task.validation)
    logs: list[str] = []
    reused = _run(model_dir, data, task.validation, logs)
    path = entry_path(filter_key(build_filter("trigger_words", OPTIONS), load_checkpoint(model_dir), data,
                                 task.validation))
    assert computed.cached_from is None and reused.cached_from == str(path) and path.is_file()
    assert logs == [f"[purify] filter trigger_words: reused the cached result {path} "
                    f"(computed in {computed.seconds:.1f} s)"]
    assert len(computed.removed) and len(computed.kept)
    assert reused.kept.samples == computed.kept.samples and reused.removed.samples == computed.removed.samples
    assert reused.scores.dtype == np.float64 and reused.scores.tobytes() == computed.scores.tobytes()
    assert reused.flagged.dtype == bool and np.array_equal(reused.flagged, computed.flagged)
    for name in ("threshold", "threshold_method", "method", "seconds"):
        assert getattr(reused, name) == getattr(computed, name)
    assert reused.options == _jsonable(computed.options) and reused.details == _jsonable(computed.details)
    assert computed.probe is not None and computed.probe.found and reused.probe == computed.probe
    assert json.dumps(reused.summary(include_scores=True)) == json.dumps(computed.summary(include_scores=True))


def test_the_key_follows_the_options_the_data_and_the_model_files(laid_out, tmp_path):
    model_dir, _, task = laid_out
    loaded = load_checkpoint(model_dir)

    def key(options=OPTIONS, data=task.train, trusted=task.validation, model=loaded):
        return filter_key(build_filter("trigger_words", options), model, data, trusted)

    base = key()
    assert key() == base and key({k: str(v) for k, v in OPTIONS.items()}) == base  # resolved options
    copy = shutil.copytree(model_dir, tmp_path / "copy")
    assert key(model=load_checkpoint(copy)) == base  # the content, not the folder's name
    relabelled = TaskData([dataclasses.replace(s, label=1 - s.label) if i == 0 else s
                           for i, s in enumerate(task.train.samples)], task.train.label_names)
    others = [key({**OPTIONS, "seed": 1}), key({**OPTIONS, "candidates": 8}), key({**OPTIONS, "threshold": 0.5}),
              key(data=task.train.subset(range(1, len(task.train)))), key(data=relabelled), key(trusted=None)]
    changed = load_checkpoint(model_dir)
    with torch.no_grad():
        next(changed.model.parameters()).add_(1e-3)
    changed.model.save_pretrained(copy)  # one changed weight file
    others.append(key(model=load_checkpoint(copy)))
    assert base not in others and len(set(others)) == len(others)


def test_a_corrupt_entry_is_ignored_with_a_warning_and_recomputed(laid_out, capsys):
    model_dir, _, task = laid_out
    data = task.train.subset(range(0, len(task.train), 4))
    computed = _run(model_dir, data, None)
    path = entry_path(filter_key(build_filter("trigger_words", OPTIONS), load_checkpoint(model_dir), data, None))
    entry = json.loads(path.read_text())
    capsys.readouterr()
    for garbage in ('{"format": 1, "sco', json.dumps({**entry, "scores": entry["scores"][:-1]})):
        path.write_text(garbage)
        again = _run(model_dir, data, None)
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and "ignoring the unreadable filter cache entry" in err[0] and str(path) in err[0]
        assert again.cached_from is None and again.scores.tobytes() == computed.scores.tobytes()
        assert json.loads(path.read_text())["scores"] == entry["scores"]  # written afresh
    assert _run(model_dir, data, None).cached_from == str(path)


def test_a_second_run_reuses_the_filter_and_exports_the_same_model(laid_out, tmp_path, monkeypatch):
    from strategies.anchor_unlearn import AnchorUnlearn

    model_dir, files, task = laid_out
    cfg = PipelineConfig(strategy="anchor_unlearn", strategy_options={**AnchorUnlearn.fast_options, "epochs": 2},
                         filter="trigger_words", filter_options=dict(TriggerWords.fast_options),
                         trusted=str(files["trusted"]), eval_clean=str(files["test_clean"]),
                         eval_triggered=str(files["test_triggered"]), target=task.target)
    first = run_pipeline(model_dir, files["train"], tmp_path / "first", cfg, log=lambda *_: None)

    def recompute(*args, **kwargs):
        raise Recomputed("the filter ran again")

    monkeypatch.setattr(TriggerWords, "score_with_details", recompute)
    logs: list[str] = []
    second = run_pipeline(model_dir, files["train"], tmp_path / "second", cfg, log=logs.append)
    assert first["filter"]["cached"] is False and second["filter"]["cached"] is True
    assert second["filter"] == {**first["filter"], "cached": True}  # the original seconds included
    assert any("reused the cached result" in line for line in logs)
    assert second["timings"]["filter"] < first["filter"]["seconds"]
    for block in ("metrics", "probe", "verdict"):
        assert second[block] == first[block]
    timing = ("seconds", "phase_seconds")  # wall clock, not figures
    assert {k: v for k, v in second["result"].items() if k not in timing} == \
        {k: v for k, v in first["result"].items() if k not in timing}
    for name in ("model.safetensors", FILTER_SCORES_FILE):
        assert (tmp_path / "second" / name).read_bytes() == (tmp_path / "first" / name).read_bytes()
    assert torch.equal(load_file(tmp_path / "second" / PROBE_FILE)["logits"],
                       load_file(tmp_path / "first" / PROBE_FILE)["logits"])

    # --no-filter-cache (run and tune share it) runs the filter although its result is cached
    argv = ["run", str(model_dir), "--data", str(files["train"]), "--out", str(tmp_path / "third"),
            *[a for k, v in TriggerWords.fast_options.items() for a in ("--filter-set", f"{k}={v}")]]
    assert _pipeline_config(build_parser().parse_args(argv)).filter_cache is True
    for command in ("run", "tune"):
        args = build_parser().parse_args([command, *argv[1:], "--no-filter-cache"])
        assert _pipeline_config(args).filter_cache is False
    with pytest.raises(Recomputed):
        main([*argv, "--no-filter-cache", "--trusted", str(files["trusted"])])
