"""Hostile inputs of area `inputs` (tampered exports, option values, data files), plus verify's named checks."""
import json

import pytest

from purify.cli import main
from purify.errors import CheckpointError, ConfigError, DataError
from purify.testing.hostile import run_case
from purify.testing.hostile.inputs import (
    CASES, HOSTILE_LABELS, edit_json, edit_weights, export_tiny, regenerate_probe, rehash,
)
from purify.verify import HASHES_KEY, REPORT_FILE, file_hashes, verify

CHECKS = ["config", "files_sha256", "no_custom_code", "safetensors_only", "pruned_heads_zero", "tokenizer_probe",
          "probe_logits"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case, tmp_path):
    outcome = run_case(case, tmp_path)
    assert outcome.ok_for(case), (outcome.exit_code, outcome.stderr[-2000:], outcome.lost)


def _failed(folder):
    return {c.name for c in verify(folder).checks if not c.passed}


def test_clean_export_passes_every_named_check(tmp_path):
    out = export_tiny(tmp_path)
    result = verify(out)
    assert [c.name for c in result.checks] == CHECKS
    assert all(c.passed for c in result.checks) and result.ok and result.pruned_zero
    report = json.loads((out / REPORT_FILE).read_text())
    assert report[HASHES_KEY] == file_hashes(out) and REPORT_FILE not in report[HASHES_KEY]
    assert {"config.json", "model.safetensors", "purify_probe.safetensors", "README.md"} <= set(report[HASHES_KEY])
    assert report["export"]["verify"]["checks"][0] == ["config", True, result.checks[0].detail]


def test_each_tamper_fails_its_own_check(tmp_path):
    out = export_tiny(tmp_path)
    edit_weights(out, lambda s: s["classifier.bias"].add_(1.0))
    assert _failed(out) == {"files_sha256", "probe_logits"}
    regenerate_probe(out)
    assert _failed(out) == {"files_sha256"}
    rehash(out)
    assert _failed(out) == set()  # a full rewrite in place is beyond what in-folder hashes can catch


def test_restored_heads_fail_even_with_everything_regenerated(tmp_path):
    out = export_tiny(tmp_path)
    edit_weights(out, lambda s: s["bert.encoder.layer.0.attention.output.dense.weight"][:, 8:16].fill_(0.5))
    # the head's value rows are still zero, so the logits do not move: only the weights themselves show it
    assert _failed(out) == {"files_sha256", "pruned_heads_zero"}
    regenerate_probe(out)
    rehash(out)
    result = verify(out)
    assert _failed(out) == {"pruned_heads_zero"} and not result.pruned_zero
    assert "layer 0 output.dense.weight (256 nonzero)" in result.message


def test_custom_code_is_never_loaded(tmp_path):
    out = export_tiny(tmp_path)
    (out / "nested").mkdir()
    (out / "nested" / "hook.py").write_text("raise SystemExit('imported')\n")
    rehash(out)
    checks = {c.name: c for c in verify(out).checks}
    assert not checks["no_custom_code"].passed and "nested/hook.py" in checks["no_custom_code"].detail
    assert checks["probe_logits"].detail == "not run: the folder carries custom code"


def test_missing_or_old_report_fails_the_hash_check(tmp_path):
    out = export_tiny(tmp_path)
    edit_json(out / REPORT_FILE, lambda r: r.pop(HASHES_KEY))
    assert _failed(out) == {"files_sha256"}
    (out / REPORT_FILE).unlink()
    assert "no purify_report.json" in verify(out).message


@pytest.mark.parametrize("text, match", [("[1, 2]", "must hold a JSON object"),
                                         ('{"architectures": "Bert"}', "list of class names"),
                                         ('{"architectures": ["BertModel"]}', "names no classification")])
def test_unusable_config_is_one_error(tmp_path, text, match):
    out = export_tiny(tmp_path)
    (out / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=match):
        verify(out)


def test_cli_prints_one_line_per_check_and_exits_2(tmp_path, capsys):
    out = export_tiny(tmp_path)
    assert main(["verify", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1].rstrip(":") for line in lines[:-1]] == CHECKS and lines[-1].startswith("verified")
    (out / "x.py").write_text("")
    assert main(["verify", str(out)]) == 2
    captured = capsys.readouterr()
    assert "FAIL no_custom_code: code files: x.py" in captured.out
    assert captured.err.count("\n") == 1 and "verification failed: files_sha256" in captured.err


def test_rerender_keeps_hashes_in_step(tmp_path):
    from purify.report import rerender

    out = export_tiny(tmp_path)
    edit_json(out / REPORT_FILE, lambda r: r.update(result={"head_scores": [[0.1, 0.2, 0.3, 0.4]] * 2}))
    rerender(out)
    assert verify(out).ok


def test_hostile_label_names_reach_the_terminal_escaped(tmp_path, capsys):
    case = next(c for c in CASES if c.name == "data_hostile_label_names_escaped")
    assert main(case.build(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and err.count("\n") == 1
    assert "pos\\n[purify] all clear" in err and HOSTILE_LABELS["1"] not in err


def test_one_class_data_warns_once(tmp_path, capsys):
    case = next(c for c in CASES if c.name == "data_one_class_runs_with_warning")
    assert main(case.build(tmp_path)) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("purify: warning:")]
    assert len(warnings) == 1 and "all 16 samples have label 'LABEL_1'" in warnings[0]


def test_line_bound_reads_at_most_the_bound(tmp_path, monkeypatch):
    from purify.data import load_task_data
    from purify.textfile import MAX_LINE_ENV

    path = tmp_path / "d.jsonl"
    line = json.dumps({"text": "good " * 30, "label": 1})
    path.write_text(f"{line}\n{line}\n")
    assert len(load_task_data(path, max_line_bytes=len(line))) == 2  # a line of exactly the bound is fine
    with pytest.raises(DataError, match=r"d.jsonl line 1: longer than 100 bytes"):
        load_task_data(path, max_line_bytes=100)
    monkeypatch.setenv(MAX_LINE_ENV, "100")
    with pytest.raises(DataError, match="longer than 100 bytes"):
        load_task_data(path)
    monkeypatch.setenv(MAX_LINE_ENV, "lots")
    with pytest.raises(DataError, match=MAX_LINE_ENV):
        load_task_data(path)


def test_printable_escapes_controls_and_bidi():
    from purify.terminal import printable

    assert printable("a\x1b[31mb\nc\u202ed\u2028") == "a\\x1b[31mb\\nc\\u202ed\\u2028"
    assert printable("café ok") == "café ok"


@pytest.mark.parametrize("options, match", [
    ({"lam": "nan"}, "lam must be a finite number"), ({"lr": float("-inf")}, "lr must be a finite number"),
    ({"seed": 2**32}, r"seed must be an integer in \[0, 4294967295\]"),
    ({"epochs": "none"}, "cannot read 'none' as int"), ({"epochs": True}, "expected int, got bool"),
    ({"val_samples": "x"}, "as int or none"),
])
def test_config_values_are_checked_in_the_base_class(options, match):
    from purify.registry import build_strategy

    with pytest.raises(ConfigError, match=match):
        build_strategy("sparse_prune", options)


def test_optional_fields_accept_none_and_floats_accept_ints():
    from purify.filters import build_filter
    from purify.registry import build_strategy

    config = build_strategy("gradient_prune", {"val_samples": "None", "max_acc_drop": 0}).config
    assert config.val_samples is None and config.max_acc_drop == 0.0 and isinstance(config.max_acc_drop, float)
    assert build_filter("gradsentry", {"threshold": "null", "target": "none"}).config.threshold is None
