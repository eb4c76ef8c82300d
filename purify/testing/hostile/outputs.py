"""Hostile destinations: an `--out` that is, holds or lies inside an input (symlinks too), a folder purify did not
write, an existing file, a read-only or missing parent; for `run`, `tune`, `demo`, `filter`, `eval` and `invert`.

Every refusal must come before the model is loaded and leave the inputs byte for byte; two cases check that a
legitimate `--overwrite` (an empty folder, an earlier export) still works.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from . import Case

MODEL, DATA = "model", "data.jsonl"


def _data(path: Path, n: int = 40) -> Path:
    from ..tiny import tiny_texts

    texts = tiny_texts()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": texts[i % len(texts)], "label": i % 2}) + "\n" for i in range(n)))
    return path


def _inputs(tmp: Path, where: str = "") -> tuple[Path, Path]:
    """A tiny bert checkpoint and a tiny data file under `tmp/where`."""
    from ..tiny import save_tiny_checkpoint

    root = tmp / where if where else tmp
    return save_tiny_checkpoint("bert", root / MODEL), _data(root / DATA)


def _run(model: Path, data: Path, out: str | Path, *extra: str) -> list[str]:
    return ["run", str(model), "--data", str(data), "--strategy", "gradient_prune", "--filter", "none",
            "--out", str(out), *extra]


def _purify_folder(folder: Path) -> Path:
    """A folder that looks like an earlier export (its report file), without the cost of making one."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "purify_report.json").write_text("{}\n")
    return folder


def _foreign(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("the user's own file\n")
    return folder


def _run_case(name: str, out, *extra: str, protected=(MODEL, DATA), mentions: str | None = "--out", **kw) -> Case:
    """A `purify run` case whose `out(tmp, model, data)` lays out the destination and returns it."""

    def build(tmp: Path) -> list[str]:
        model, data = _inputs(tmp)
        return _run(model, data, out(tmp, model, data), *extra)

    return Case(name, build, protected=tuple(protected), mentions=mentions, **kw)


def _parent_of_inputs(tmp: Path) -> list[str]:
    model, data = _inputs(tmp, "work")
    return _run(model, data, tmp / "work", "--overwrite")


def _export_holds_trusted(tmp: Path) -> list[str]:
    model, data = _inputs(tmp)
    trusted = _data(_purify_folder(tmp / "prev") / "trusted.jsonl", 8)
    return _run(model, data, tmp / "prev", "--overwrite", "--trusted", str(trusted))


def _out_is_eval_file(tmp: Path) -> list[str]:
    model, data = _inputs(tmp)
    clean = _data(tmp / "test.jsonl", 8)
    return _run(model, data, clean, "--overwrite", "--eval-clean", str(clean))


def _read_only_parent(tmp: Path) -> list[str]:
    model, data = _inputs(tmp)
    folder = tmp / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return _run(model, data, folder / "sanitized")


def _symlink(tmp: Path, name: str, target: Path) -> Path:
    link = tmp / name
    os.symlink(target, link)
    return link


def _own_export(tmp: Path) -> list[str]:
    from ...export import export_checkpoint
    from ..tiny import tiny_model, tiny_texts, tiny_tokenizer

    model, data = _inputs(tmp)
    export_checkpoint(tiny_model("bert"), tiny_tokenizer(), tmp / "prev", probe_texts=tiny_texts())
    return _run(model, data, tmp / "prev", "--overwrite")


def _filter_case(name: str, out, *extra: str, data_name: str = DATA, protected=(MODEL, DATA),
                 mentions: str | None = "--out") -> Case:
    """A `purify filter` case whose `out(tmp, model, data)` returns the --out path."""

    def build(tmp: Path) -> list[str]:
        from ..tiny import save_tiny_checkpoint

        model, data = save_tiny_checkpoint("bert", tmp / MODEL), _data(tmp / data_name)
        return ["filter", str(data), "--model", str(model), "--method", "trigger_words",
                "--out", str(out(tmp, model, data)), *extra]

    return Case(name, build, protected=tuple(protected), mentions=mentions)


def _other_command(name: str, argv, protected=(MODEL, DATA), mentions: str | None = "--out") -> Case:
    def build(tmp: Path) -> list[str]:
        model, data = _inputs(tmp)
        return argv(tmp, model, data)

    return Case(name, build, protected=tuple(protected), mentions=mentions)


def _filter_out_is_trusted(tmp: Path) -> list[str]:
    from ..tiny import save_tiny_checkpoint

    model, data, trusted = save_tiny_checkpoint("bert", tmp / MODEL), _data(tmp / DATA), _data(tmp / "trusted.jsonl")
    return ["filter", str(data), "--model", str(model), "--trusted", str(trusted), "--out", str(trusted),
            "--overwrite"]


CASES: list[Case] = [
    # --out is, holds or lies inside an input
    _run_case("run_out_dot_holds_model_and_data", lambda tmp, m, d: f"{tmp}/.", "--overwrite"),
    Case("run_out_parent_of_model_and_data", _parent_of_inputs, protected=(f"work/{MODEL}", f"work/{DATA}"),
         mentions="--out"),
    _run_case("run_out_is_model_dir", lambda tmp, m, d: m, "--overwrite"),
    _run_case("run_out_inside_model_dir", lambda tmp, m, d: m / "sanitized"),
    _run_case("run_out_is_data_file", lambda tmp, m, d: d, "--overwrite"),
    _run_case("run_out_symlink_to_model_dir", lambda tmp, m, d: _symlink(tmp, "link", m), "--overwrite"),
    _run_case("run_out_inside_model_via_symlink", lambda tmp, m, d: _symlink(tmp, "link", m) / "sanitized"),
    _run_case("run_out_inside_data_file", lambda tmp, m, d: d / "sanitized"),
    Case("run_out_export_holding_trusted_file", _export_holds_trusted,
         protected=(MODEL, DATA, "prev/trusted.jsonl"), mentions="trusted.jsonl"),
    Case("run_out_is_eval_file", _out_is_eval_file, protected=(MODEL, DATA, "test.jsonl"), mentions="--out"),
    # --out is in the way, or cannot be written
    _run_case("run_overwrite_folder_purify_did_not_write", lambda tmp, m, d: _foreign(tmp / "mine"), "--overwrite",
              protected=(MODEL, DATA, "mine"), mentions="purify did not write"),
    _run_case("run_out_exists_without_overwrite", lambda tmp, m, d: _purify_folder(tmp / "prev"),
              protected=(MODEL, DATA, "prev"), mentions="--overwrite"),
    _run_case("run_overwrite_a_file", lambda tmp, m, d: _data(tmp / "notes.jsonl", 2), "--overwrite",
              protected=(MODEL, DATA, "notes.jsonl"), mentions="not a folder"),
    Case("run_read_only_parent", _read_only_parent, protected=(MODEL, DATA), mentions="read-only"),
    _run_case("run_missing_parent", lambda tmp, m, d: tmp / "nope" / "deeper" / "sanitized",
              mentions="does not exist"),
    _run_case("run_parent_is_a_file", lambda tmp, m, d: _data(tmp / "notes.jsonl", 2) / "sanitized",
              protected=(MODEL, DATA, "notes.jsonl"), mentions="is a file"),
    # purify filter: four output files, none may be an input
    _filter_case("filter_out_is_its_input", lambda tmp, m, d: d, "--overwrite"),
    _filter_case("filter_out_symlink_to_its_input", lambda tmp, m, d: _symlink(tmp, "kept.jsonl", d), "--overwrite"),
    _filter_case("filter_scores_file_is_its_input", lambda tmp, m, d: tmp / "kept.jsonl", data_name="kept.scores.jsonl",
                 protected=(MODEL, "kept.scores.jsonl")),
    _filter_case("filter_out_inside_model_dir", lambda tmp, m, d: m / "kept.jsonl"),
    _filter_case("filter_out_exists_without_overwrite", lambda tmp, m, d: _data(tmp / "kept.jsonl", 3),
                 protected=(MODEL, DATA, "kept.jsonl"), mentions="--overwrite"),
    _filter_case("filter_missing_parent", lambda tmp, m, d: tmp / "nope" / "kept.jsonl", mentions="does not exist"),
    Case("filter_out_is_trusted_file", _filter_out_is_trusted, protected=(MODEL, DATA, "trusted.jsonl"),
         mentions="--out"),
    # the other commands that take --out
    _other_command("tune_out_is_model_dir", lambda tmp, m, d: [
        "tune", str(m), "--data", str(d), "--strategy", "gradient_prune", "--filter", "none", "--out", str(m),
        "--overwrite"]),
    _other_command("tune_overwrite_folder_purify_did_not_write", lambda tmp, m, d: [
        "tune", str(m), "--data", str(d), "--strategy", "gradient_prune", "--filter", "none",
        "--out", str(_foreign(tmp / "mine")), "--overwrite"], protected=(MODEL, DATA, "mine"),
        mentions="purify did not write"),
    _other_command("demo_out_folder_purify_did_not_write", lambda tmp, m, d: [
        "demo", "--out", str(_foreign(tmp / "mine"))], protected=(MODEL, DATA, "mine"),
        mentions="purify did not write"),
    _other_command("demo_out_missing_parent", lambda tmp, m, d: ["demo", "--out", str(tmp / "nope" / "demo")],
                   mentions="does not exist"),
    _other_command("eval_out_is_model_config", lambda tmp, m, d: [
        "eval", str(m), "--clean", str(d), "--out", str(m / "config.json")]),
    _other_command("invert_out_is_data_file", lambda tmp, m, d: [
        "invert", str(m), "--data", str(d), "--out", str(d)]),
    # what --overwrite is for still works
    _run_case("ok_overwrite_empty_folder", lambda tmp, m, d: (tmp / "empty").mkdir() or tmp / "empty", "--overwrite",
              expect="ok", mentions=None),
    Case("ok_overwrite_earlier_export", _own_export, expect="ok", protected=(MODEL, DATA)),
]
