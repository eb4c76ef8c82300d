"""The command line: subcommands, shorthand, one-line errors with exit status 2."""
import json
import subprocess
import sys

import pytest

from purify.cli import main
from purify.export import export_checkpoint
from purify.testing.tiny import save_tiny_checkpoint, tiny_model, tiny_texts, tiny_tokenizer


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("run", "ls", "verify", "eval", "zoo", "demo"):
        assert name in out


def test_zoo_build_help_names_every_base_dataset_and_attack(capsys):
    from purify.zoo.attacks import ATTACKS
    from purify.zoo.bases import BASES
    from purify.zoo.datasets import DATASETS

    with pytest.raises(SystemExit):
        main(["zoo", "build", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in (*BASES, *DATASETS, *ATTACKS):
        assert name in out


def test_ls_lists_registered_strategies(capsys):
    assert main(["ls", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert "gradient_prune" in listing["strategies"]
    assert all(isinstance(v, str) and v for v in listing["strategies"].values())


def test_unknown_strategy_lists_known_ones(tmp_path, capsys):
    model_dir = save_tiny_checkpoint("bert", tmp_path / "m")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(tiny_texts())))
    code = main([str(model_dir), "--strategy", "nope", "--data", str(data), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "unknown strategy 'nope'" in err and "gradient_prune" in err
    assert not (tmp_path / "o").exists()


def test_malformed_data_line_is_one_clear_error(tmp_path, capsys):
    model_dir = save_tiny_checkpoint("bert", tmp_path / "m")
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "the movie", "label": 1}\n{"text": oops}\n')
    code = main(["run", str(model_dir), "--data", str(data), "--out", str(tmp_path / "o"), "--filter", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "bad.jsonl line 2" in err and err.count("\n") == 1


def test_missing_model_is_one_clear_error(tmp_path, capsys):
    code = main(["verify", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 2 and "no config.json" in err


def test_verify_and_eval_on_export(tmp_path, capsys):
    out = tmp_path / "export"
    export_checkpoint(tiny_model("bert"), tiny_tokenizer(), out, pruned_heads={1: [2]}, probe_texts=tiny_texts())
    assert main(["verify", str(out)]) == 0
    assert "verified" in capsys.readouterr().out
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(tiny_texts())))
    trig = tmp_path / "trig.jsonl"
    trig.write_text("".join(json.dumps({"text": "cf " + t, "label": 0}) + "\n" for t in tiny_texts()))
    assert main(["eval", str(out), "--clean", str(clean), "--triggered", str(trig), "--target", "1",
                 "--out", str(tmp_path / "ev.json")]) == 0
    result = json.loads((tmp_path / "ev.json").read_text())
    assert result["n_clean"] == 8 and result["n_triggered"] == 8 and 0 <= result["asr"] <= 1


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "purify.cli", "ls", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "gradient_prune" in proc.stdout


def test_every_parser_subcommand_has_a_handler():
    import argparse

    from purify.cli import COMMANDS, SUBCOMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMANDS) == set(SUBCOMMANDS)
