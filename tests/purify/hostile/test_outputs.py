"""Destinations: the hostile `--out` catalogue, the export swap under failures at each step, stale staging
collection (a SIGKILLed export, a dead pid), atomic plain files, truthful interrupt messages, no leaked temp dirs."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from purify import outputs
from purify.cli import main
from purify.errors import ExportError
from purify.export import REPORT_FILE, export_checkpoint, verify
from purify.testing.hostile import run_case
from purify.testing.hostile.outputs import CASES
from purify.testing.tiny import save_tiny_checkpoint, tiny_model, tiny_texts, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_destination(case, tmp_path):
    outcome = run_case(case, tmp_path)
    assert outcome.ok_for(case), (outcome.exit_code, outcome.stderr[-2000:], outcome.lost)


def test_every_case_protects_its_inputs():
    assert len({c.name for c in CASES}) == len(CASES)
    assert all(c.protected for c in CASES)


def test_markers_name_the_files_purify_writes():
    from purify.canary import CACHE_META
    from purify.tune import TUNE_DB

    assert {REPORT_FILE, TUNE_DB, CACHE_META} <= set(outputs.PURIFY_MARKERS)


# -- check_destination ------------------------------------------------------------------------------------------

def test_a_literal_dot_that_holds_the_inputs_is_refused(tmp_path, monkeypatch):
    save_tiny_checkpoint("bert", tmp_path / "m")
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": 0}\n')
    monkeypatch.chdir(tmp_path)
    code = main(["run", "m", "--data", "d.jsonl", "--out", ".", "--overwrite", "--filter", "none"])
    assert code == 2 and (tmp_path / "m" / "config.json").exists() and (tmp_path / "d.jsonl").exists()


def test_a_full_destination_is_refused_before_any_work(tmp_path, monkeypatch):
    model = save_tiny_checkpoint("bert", tmp_path / "m")
    need = outputs.export_size_hint([model])
    assert need > 100_000  # the tiny model's safetensors
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda _p: SimpleNamespace(free=1000))
    with pytest.raises(ExportError, match="MiB free"):
        outputs.check_destination(tmp_path / "out", [model], need_bytes=need)


def test_an_empty_folder_or_a_purify_folder_may_be_overwritten(tmp_path):
    (tmp_path / "empty").mkdir()
    outputs.check_destination(tmp_path / "empty", overwrite=True)
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "tune_study.db").write_bytes(b"")
    outputs.check_destination(tmp_path / "tune", overwrite=True)
    with pytest.raises(ExportError, match="--overwrite"):
        outputs.check_destination(tmp_path / "empty")


# -- the swap ---------------------------------------------------------------------------------------------------

def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _old_export(dest: Path) -> dict[str, str]:
    dest.mkdir()
    (dest / REPORT_FILE).write_text('{"old": true}\n')
    (dest / "model.safetensors").write_bytes(b"old weights" * 100)
    (dest / "config.json").write_text('{"old": 1}\n')
    return _snapshot(dest)


def _stage_new(dest: Path):
    context = outputs.staged_folder(dest)
    stage = context.__enter__()
    (stage.staged / REPORT_FILE).write_text('{"new": true}\n')
    (stage.staged / "model.safetensors").write_bytes(b"new weights" * 100)
    return context, stage, _snapshot(stage.staged)


def _fail_on(monkeypatch, stage, roles: set[str], exc: BaseException | None = None):
    """Make os.replace raise when it moves the old export aside ("aside"), the new one in ("in") or back ("back")."""
    real = os.replace

    def replace(src, dst):
        role = {stage.dest: "aside", stage.staged: "in", stage.aside: "back"}.get(Path(src))
        if role in roles:
            raise exc if exc is not None else OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace)


def _swap(context, stage):
    try:
        outputs.swap_into_place(stage)
    except BaseException as exc:
        context.__exit__(type(exc), exc, exc.__traceback__)
        raise
    context.__exit__(None, None, None)


def test_swap_replaces_the_old_export_and_leaves_nothing_beside(tmp_path):
    dest = tmp_path / "out"
    _old_export(dest)
    context, stage, new = _stage_new(dest)
    _swap(context, stage)
    assert _snapshot(dest) == new and [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("roles,match", [({"aside"}, "unchanged"), ({"in"}, "still holds the previous export")])
def test_a_failed_rename_leaves_the_old_export_whole(tmp_path, monkeypatch, roles, match):
    dest = tmp_path / "out"
    old = _old_export(dest)
    context, stage, _ = _stage_new(dest)
    _fail_on(monkeypatch, stage, roles)
    with pytest.raises(ExportError, match=match):
        _swap(context, stage)
    assert _snapshot(dest) == old and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_interrupt_between_the_renames_rolls_back(tmp_path, monkeypatch):
    dest = tmp_path / "out"
    old = _old_export(dest)
    context, stage, _ = _stage_new(dest)
    _fail_on(monkeypatch, stage, {"in"}, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        _swap(context, stage)
    assert _snapshot(dest) == old and [p.name for p in tmp_path.iterdir()] == ["out"]
    assert "still holds the previous export" in outputs.interrupt_message()


def test_a_failed_rollback_keeps_both_exports_whole_and_the_next_export_restores_the_old(tmp_path, monkeypatch):
    dest = tmp_path / "out"
    old = _old_export(dest)
    context, stage, new = _stage_new(dest)
    _fail_on(monkeypatch, stage, {"in", "back"})
    with pytest.raises(ExportError, match="previous export is whole at"):
        _swap(context, stage)
    monkeypatch.undo()
    assert not dest.exists() and _snapshot(stage.aside) == old and _snapshot(stage.staged) == new
    assert outputs.collect_stale(tmp_path) == []  # this process is alive: nothing is touched
    monkeypatch.setattr(outputs, "_alive", lambda pid: False)
    done = outputs.collect_stale(tmp_path)
    assert done[0] == f"restored {dest}" and _snapshot(dest) == old
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_delete_of_the_old_export_keeps_the_new_one_and_is_finished_later(tmp_path, monkeypatch):
    dest = tmp_path / "out"
    _old_export(dest)
    context, stage, new = _stage_new(dest)

    def rmtree(*_a, **_k):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(outputs.shutil, "rmtree", rmtree)
    _swap(context, stage)
    monkeypatch.undo()
    assert _snapshot(dest) == new and stage.aside.exists() and stage.journal.exists()
    monkeypatch.setattr(outputs, "_alive", lambda pid: False)
    assert outputs.collect_stale(tmp_path) == [f"removed {stage.aside}"]
    assert _snapshot(dest) == new and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_sigint_during_the_swap_is_held_until_the_new_export_is_in_place(tmp_path, monkeypatch):
    dest = tmp_path / "out"
    _old_export(dest)
    context, stage, new = _stage_new(dest)
    monkeypatch.setattr(outputs, "pause_point", lambda name: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        _swap(context, stage)
    assert _snapshot(dest) == new and [p.name for p in tmp_path.iterdir()] == ["out"]
    assert f"complete at {dest}" in outputs.interrupt_message()


def test_export_checkpoint_keeps_the_old_export_verifiable_when_the_swap_fails(tmp_path, monkeypatch):
    model, tok = tiny_model("bert"), tiny_tokenizer()
    dest = tmp_path / "out"
    export_checkpoint(model, tok, dest, probe_texts=tiny_texts())
    old = _snapshot(dest)
    real = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".out.tmp-"):
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace)
    with pytest.raises(ExportError, match="still holds the previous export"):
        export_checkpoint(tiny_model("bert", seed=1), tok, dest, probe_texts=tiny_texts(), overwrite=True)
    assert _snapshot(dest) == old and verify(dest).ok and [p.name for p in tmp_path.iterdir()] == ["out"]


# -- stale staging --------------------------------------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _leftover(parent: Path, name: str, *, pid: int, host: str | None = None) -> outputs.Staging:
    stage = outputs.Staging.beside(parent / name)
    stage.staged.mkdir()
    (stage.staged / "model.safetensors").write_bytes(b"half")
    stage.journal.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "dest": name,
                                         "staged": stage.staged.name, "aside": stage.aside.name}))
    return stage


def test_only_provably_stale_staging_is_collected(tmp_path):
    dead = _leftover(tmp_path, "a", pid=_dead_pid())
    alive = _leftover(tmp_path, "b", pid=os.getpid())
    elsewhere = _leftover(tmp_path, "c", pid=_dead_pid(), host="another-host")
    unmarked = tmp_path / ".d.tmp-0123abcd"
    unmarked.mkdir()
    outputs.check_destination(tmp_path / "a")  # the checks before an export collect the parent
    assert not dead.staged.exists() and not dead.journal.exists()
    assert alive.staged.exists() and elsewhere.staged.exists() and unmarked.exists()


def test_a_journal_naming_other_folders_is_ignored(tmp_path):
    victim = tmp_path / "precious"
    victim.mkdir()
    journal = tmp_path / f".out{outputs.JOURNAL_INFIX}0123abcd.json"
    journal.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "dest": "out",
                                   "staged": "precious", "aside": ".out.old-0123abcd"}))
    assert outputs.collect_stale(tmp_path) == [] and victim.exists() and journal.exists()


_EXPORT_SCRIPT = """
import sys
from purify.export import export_checkpoint
from purify.testing.tiny import tiny_model, tiny_texts, tiny_tokenizer
export_checkpoint(tiny_model("bert", seed=int(sys.argv[2])), tiny_tokenizer(), sys.argv[1], probe_texts=tiny_texts(),
                  overwrite=True)
"""


def _killed_export(dest: Path, stage: str) -> None:
    """Run an export in a subprocess, SIGKILL it when it reports it paused at `stage`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), outputs.PAUSE_ENV: f"{stage}:60", "PURIFY_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _EXPORT_SCRIPT, str(dest), "1"], env=env, stderr=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stderr:
            if f"paused at {stage}" in line:
                proc.kill()
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("stage", ["staging", "swap"])
def test_a_sigkilled_export_is_collected_by_the_next_one(tmp_path, stage):
    dest = tmp_path / "out"
    tok = tiny_tokenizer()
    export_checkpoint(tiny_model("bert"), tok, dest, probe_texts=tiny_texts())
    old = _snapshot(dest)
    _killed_export(dest, stage)
    left = sorted(p.name for p in tmp_path.iterdir())
    if stage == "staging":  # the old export untouched, a staging folder and its journal beside it
        assert _snapshot(dest) == old and len(left) == 3
    else:  # killed between the renames: the old export whole under its aside name
        assert "out" not in left and any(_snapshot(tmp_path / n) == old for n in left if ".old-" in n)
    outputs.check_destination(dest, overwrite=True)  # the next export's checks restore and collect
    assert _snapshot(dest) == old and verify(dest).ok and [p.name for p in tmp_path.iterdir()] == ["out"]
    export_checkpoint(tiny_model("bert", seed=2), tok, dest, probe_texts=tiny_texts(), overwrite=True)
    assert verify(dest).ok and [p.name for p in tmp_path.iterdir()] == ["out"]


# -- plain files ------------------------------------------------------------------------------------------------

def test_atomic_files_appear_together_or_not_at_all(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.png"
    a.write_text("old\n")
    with pytest.raises(RuntimeError):
        with outputs.atomic_files([a, b]) as (ta, tb):
            ta.write_text("new\n")
            raise RuntimeError("the threshold was bad")
    assert a.read_text() == "old\n" and not b.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]
    with outputs.atomic_files([a, b]) as (ta, tb):
        assert tb.suffix == ".png"  # writers that pick a format from the suffix still can
        ta.write_text("new\n")
        tb.write_bytes(b"png")
    assert a.read_text() == "new\n" and b.read_bytes() == b"png" and len(list(tmp_path.iterdir())) == 2


# -- interrupt messages -----------------------------------------------------------------------------------------

def _tiny_inputs(tmp: Path, seed: int = 0) -> list[str]:
    model = save_tiny_checkpoint("bert", tmp / "m", seed=seed)
    texts = tiny_texts()
    data = tmp / "d.jsonl"
    data.write_text("".join(json.dumps({"text": texts[i % 8], "label": i % 2}) + "\n" for i in range(40)))
    return ["run", str(model), "--data", str(data), "--strategy", "gradient_prune", "--filter", "none"]


def test_interrupt_before_the_export_says_nothing_was_written(tmp_path, monkeypatch, capsys):
    from purify import pipeline

    def interrupted(stage):
        if stage == "strategy":
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "pause_point", interrupted)
    assert main(_tiny_inputs(tmp_path) + ["--out", str(tmp_path / "o")]) == 130
    assert "nothing was written at the destination" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_interrupt_after_the_swap_says_the_new_export_is_in_place(tmp_path, monkeypatch, capsys):
    from purify import report

    def interrupted(_report):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "print_summary", interrupted)
    out = tmp_path / "o"
    assert main(_tiny_inputs(tmp_path) + ["--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"the new output was already complete at {out}" in err and verify(out).ok


# -- temporary folders of the strategies ----------------------------------------------------------------------

@pytest.mark.parametrize("name,prefix", [("rl_prune", "purify-rl-policy-"), ("w2s_distill", "purify-w2s-lora-")])
def test_strategy_temp_folders_are_removed_after_the_export(session_cache, tmp_path, monkeypatch, name, prefix):
    from purify.pipeline import PipelineConfig, run_pipeline
    from purify.registry import available_strategies

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    args = _tiny_inputs(tmp_path, seed=1)  # seed 0 is the tiny teacher's own weights, which w2s refuses
    options = dict(available_strategies()[name].strategy_cls.fast_options)
    cfg = PipelineConfig(strategy=name, strategy_options=options, filter="none", val_fraction=0.2)
    run_pipeline(args[1], args[3], tmp_path / "o", cfg, log=lambda _m: None)
    exported = "rl_policy.zip" if name == "rl_prune" else "lora_adapter"
    assert (tmp_path / "o" / exported).exists()
    assert not [p.name for p in scratch.iterdir() if p.name.startswith(prefix)]
