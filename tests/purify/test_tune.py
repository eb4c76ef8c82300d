"""`purify tune`: valid search spaces; a study on a tiny model runs, resumes from SQLite, and its choice is applied."""
import json
import shutil

import optuna
import pytest

import purify.tune as tune_module
from purify.canary import CACHE_META, CACHE_WEIGHTS, CanaryConfig
from purify.cli import main
from purify.data import write_jsonl
from purify.errors import ConfigError
from purify.export import REPORT_FILE, verify
from purify.pipeline import PipelineConfig
from purify.plots import TUNE_TRADEOFF
from purify.registry import StrategyConfig, available_strategies
from purify.testing.tiny_task import tiny_backdoored
from purify.knobs import suggest, validate_search_space
from purify.study import choose, pareto_front
from purify.tune import TUNE_DB, TuneConfig, run_tune

TINY_CANARY = dict(lr=3e-3, epochs=10, poison_rate=0.15, max_length=32, max_cacc_drop=0.1)
FAST = {"val_samples": "64", "score_samples": "64"}  # gradient_prune on the tiny task


# -- search spaces ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(available_strategies()))
def test_every_registered_search_space_is_valid(name):
    entry = available_strategies()[name]
    space = validate_search_space(entry.config_cls)
    assert space, f"{name} declares no knob to tune"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    corners = [{k: s["low"] if s["type"] != "categorical" else s["choices"][0] for k, s in space.items()},
               {k: s["high"] if s["type"] != "categorical" else s["choices"][-1] for k, s in space.items()}]
    points = corners + [suggest(study.ask(), space) for _ in range(8)]
    for base in ({}, dict(entry.strategy_cls.fast_options)):
        for point in points:
            options = {**base, **point}
            config = entry.config_cls.from_dict(options)  # from_dict validates
            config.validate()
            assert all(getattr(config, k) == v for k, v in point.items())


@pytest.mark.parametrize("spec, message", [
    ({"nope": {"type": "int", "low": 1, "high": 2}}, "has no field"),
    ({"step": {"type": "int", "low": 3, "high": 2}}, "low 3 > high 2"),
    ({"step": {"type": "integer", "low": 1, "high": 2}}, "needs a 'type'"),
    ({"step": {"type": "int", "low": 1.5, "high": 2}}, "integers"),
    ({"lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "low > 0"),
    ({"lr": {"type": "float", "low": 0.1, "high": 1.0, "scale": "log"}}, "unknown key"),
    ({"mode": {"type": "categorical", "choices": []}}, "non-empty"),
    ({"seed": {"type": "int", "low": 0, "high": 9}}, "seed is not a knob"),
])
def test_bad_search_spaces_are_refused(spec, message):
    from dataclasses import dataclass

    @dataclass
    class Config(StrategyConfig):
        step: int = 1
        lr: float = 0.1
        mode: str = "a"

    with pytest.raises(ConfigError, match=message):
        validate_search_space(Config, spec)


def test_choice_and_pareto_front():
    records = [{"number": 0, "canary_asr": 0.9, "cacc_drop": 0.0}, {"number": 1, "canary_asr": 0.2, "cacc_drop": 3.0},
               {"number": 2, "canary_asr": 0.5, "cacc_drop": 0.5}, {"number": 3, "canary_asr": 0.6, "cacc_drop": 0.8}]
    assert choose(records, tolerance=1.0) == (records[2], True)
    assert choose(records, tolerance=5.0) == (records[1], True)
    assert choose(records[1:2], tolerance=1.0) == (records[1], False)  # nothing feasible: smallest drop
    assert pareto_front({r["number"]: (r["canary_asr"], r["cacc_drop"]) for r in records}) == [0, 1, 2]


# -- a study on a tiny model ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    loaded, task = tiny_backdoored("bert")
    loaded.model.save_pretrained(root / "model")
    loaded.tokenizer.save_pretrained(root / "model")
    write_jsonl(root / "data.jsonl", task.clean_train.samples + task.validation.samples, include_poisoned=False)
    return root


def _tune(root, out, trials, *, overwrite=False):
    cfg = PipelineConfig(strategy="gradient_prune", strategy_options={**FAST, "step": "2"}, filter="none",
                         val_fraction=0.2, overwrite=overwrite)
    tune = TuneConfig(trials=trials, tolerance=5.0, startup_trials=10, canary=CanaryConfig(**TINY_CANARY))
    return run_tune(root / "model", root / "data.jsonl", out, cfg, tune, log=lambda _msg: None)


def _keep_only_the_study(out):
    for path in out.iterdir():
        if path.name != TUNE_DB:
            path.unlink() if path.is_file() else shutil.rmtree(path)


def test_study_runs_resumes_from_sqlite_and_its_best_knobs_reach_the_strategy(tiny_files, monkeypatch):
    out = tiny_files / "sanitized"
    report = _tune(tiny_files, out, trials=2)
    tune = report["tune"]
    assert tune["canary"]["asr"] >= 0.9 and tune["n_trials"] == 2 and tune["resumed_from"] == 0
    assert [t["number"] for t in tune["trials"]] == [0, 1] and tune["trials"][0]["origin"] == "defaults"
    assert all(t["state"] == "COMPLETE" and 0 <= t["canary_asr"] <= 1 for t in tune["trials"])
    assert set(tune["best_params"]) == {"max_acc_drop", "max_prune_fraction"}  # step is pinned with --set
    assert tune["pinned"] == {"step": "2"} and tune["options"] == {**FAST, "step": "2"}
    # the chosen knobs are the ones the exported model was purified with
    assert {k: report["strategy"]["config"][k] for k in tune["best_params"]} == tune["best_params"]
    purify_block = json.loads((out / "config.json").read_text())["purify"]
    assert {k: purify_block["strategy_config"][k] for k in tune["best_params"]} == tune["best_params"]
    assert report["strategy"]["config"]["score_samples"] == 64 and report["strategy"]["config"]["step"] == 2
    assert verify(out).ok and (out / TUNE_TRADEOFF).stat().st_size > 1000
    assert json.loads((out / REPORT_FILE).read_text())["tune"]["best"]["number"] == tune["best"]["number"]
    first_params = [t["params"] for t in tune["trials"]]

    # a finished export is not silently replaced
    with pytest.raises(ConfigError, match="--overwrite"):
        _tune(tiny_files, out, trials=3)

    # an interrupted run leaves only the study behind; the same command resumes it (trial count grows). Here it
    # also left a running trial and a waiting one, both of knobs trial 1 measured: the first is not retried, the
    # second reuses trial 1's figures and does not count towards --trials
    _keep_only_the_study(out)
    study = optuna.load_study(study_name=tune["study_name"], storage=f"sqlite:///{out / TUNE_DB}")
    study.enqueue_trial(first_params[1])
    study.ask(study.trials[1].distributions)
    study.enqueue_trial(first_params[1])
    report = _tune(tiny_files, out, trials=3)
    tune = report["tune"]
    assert tune["resumed_from"] == 2 and tune["n_trials"] == 5 and not tune["canary"]["reused"]
    trials = tune["trials"]
    assert [t["params"] for t in trials[:2]] == first_params
    assert trials[2]["state"] == "FAIL" and trials[2]["params"] == first_params[1] and "origin" not in trials[2]
    assert trials[3]["origin"] == "repeat of trial 1"
    assert trials[3]["params"] == first_params[1] and trials[3]["seconds"] == 0.0
    figures = ("canary_asr", "cacc_drop")
    assert {k: trials[3][k] for k in figures} == {k: trials[1][k] for k in figures}
    # the resumed sampler does not replay the first run's proposals (seeded alike, it proposed trial 1's knobs again)
    assert trials[4]["state"] == "COMPLETE" and "origin" not in trials[4] and trials[4]["params"] != first_params[1]
    # the export keeps the study but not the canaried weights; a run stopped before the export keeps both and a
    # rerun reuses the planted canary instead of fine-tuning again
    assert not (out / CACHE_WEIGHTS).exists() and not (out / CACHE_META).exists()
    _keep_only_the_study(out)

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tune_module, "start_run", interrupted)  # stopped after the study, before the final run
    with pytest.raises(KeyboardInterrupt):
        _tune(tiny_files, out, trials=4)
    assert {CACHE_WEIGHTS, CACHE_META, TUNE_DB} <= {p.name for p in out.iterdir()}
    monkeypatch.undo()
    canary = tune["canary"]
    tune = _tune(tiny_files, out, trials=4)["tune"]
    assert tune["resumed_from"] == 4 and tune["n_trials"] == 6 and tune["canary"]["reused"]
    assert {k: tune["canary"][k] for k in ("trigger", "target", "asr", "cacc")} == {
        k: canary[k] for k in ("trigger", "target", "asr", "cacc")}
    study = optuna.load_study(study_name=tune["study_name"], storage=f"sqlite:///{out / TUNE_DB}")
    assert len(study.trials) == 6
    assert {k: report["strategy"]["config"][k] for k in tune["best_params"]} == tune["best_params"]


def test_cli_tune(tiny_files, capsys):
    out = tiny_files / "cli"
    args = ["tune", str(tiny_files / "model"), "--data", str(tiny_files / "data.jsonl"), "--out", str(out),
            "--strategy", "gradient_prune", "--filter", "none", "--set", "val_samples=64", "--set", "score_samples=64",
            "--trials", "2",
            "--tolerance", "5", "--canary", "sentence", "--canary-max-drop", "10"]
    # a canary that cannot be planted: one line, status 2, nothing left at --out
    assert main(args + ["--canary-lr", "1e-7", "--canary-epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not be planted" in err and not out.exists()
    assert main(args + ["--canary-lr", "3e-3", "--canary-epochs", "10"]) == 0
    printed = capsys.readouterr().out
    assert "tune: trial" in printed and "chosen" in printed
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["tune"]["canary"]["family"] == "sentence" and report["tune"]["n_trials"] == 2
