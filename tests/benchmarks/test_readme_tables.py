"""benchmarks/readme_tables.py: a suite's table reaches the README between its markers, and nothing else moves."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "readme_tables.py"


def _module():
    spec = importlib.util.spec_from_file_location("readme_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SUITE_MD = ("# Benchmark: zoo\n\nProduced by:\n\n    purify bench --suite zoo --out b\n\n"
            "Machine: 2 CPU cores; git abc.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nA note.\n")


def test_refresh_copies_the_table_and_keeps_the_rest(tmp_path):
    rt = _module()
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "zoo.md").write_text(SUITE_MD)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:zoo -->\nold table\n<!-- /bench:zoo -->\noutro\n")
    assert rt.refresh(readme, tmp_path / "bench") == ["zoo"]
    assert readme.read_text() == ("intro\n<!-- bench:zoo -->\n| a | b |\n|---|---|\n| 1 | 2 |\n\nA note.\n"
                                  "<!-- /bench:zoo -->\noutro\n")
    before = readme.read_text()
    rt.refresh(readme, tmp_path / "bench")
    assert readme.read_text() == before  # idempotent


def test_refresh_names_what_is_missing(tmp_path):
    rt = _module()
    readme = tmp_path / "README.md"
    readme.write_text("<!-- bench:w2s -->\n<!-- /bench:w2s -->\n")
    with pytest.raises(FileNotFoundError, match="w2s.md"):
        rt.refresh(readme, tmp_path)
    (tmp_path / "w2s.md").write_text("not a bench file")
    with pytest.raises(ValueError, match="Machine"):
        rt.refresh(readme, tmp_path)
    assert readme.read_text() == "<!-- bench:w2s -->\n<!-- /bench:w2s -->\n"  # untouched on error


def test_the_committed_readme_matches_the_committed_tables(tmp_path):
    rt = _module()
    root = SCRIPT.parents[1]
    copy = tmp_path / "README.md"
    copy.write_text((root / "README.md").read_text())
    rt.refresh(copy, root / "benchmarks")
    assert copy.read_text() == (root / "README.md").read_text()
