"""Provenance: versions and the git hash recorded in every result."""
from __future__ import annotations

import subprocess

from purify import provenance


def test_git_hash_inside_the_checkout_is_a_commit(monkeypatch):
    monkeypatch.delenv("PURIFY_GIT_HASH", raising=False)
    sha = provenance.git_hash()
    assert sha is None or len(sha.removesuffix("-dirty")) == 40


def test_the_environment_names_the_commit_of_a_shipped_copy(monkeypatch):
    def no_git(*args, **kwargs):
        raise OSError("git is not installed")

    monkeypatch.setattr(subprocess, "run", no_git)
    monkeypatch.delenv("PURIFY_GIT_HASH", raising=False)
    assert provenance.git_hash() is None
    monkeypatch.setenv("PURIFY_GIT_HASH", "abc123")
    assert provenance.git_hash() == "abc123"
    assert provenance.provenance()["git_hash"] == "abc123"
    monkeypatch.undo()  # a stale .git beside the variable: the variable wins
    monkeypatch.setenv("PURIFY_GIT_HASH", "abc123")
    assert provenance.git_hash() == "abc123"


def test_dirty_means_changed_source_not_changed_results(tmp_path, monkeypatch):
    monkeypatch.delenv("PURIFY_GIT_HASH", raising=False)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "code.py").write_text("x = 1\n")
    (tmp_path / "table.md").write_text("| a |\n")
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "c"], cwd=tmp_path, check=True)
    clean = provenance.git_hash(tmp_path)
    assert clean is not None and len(clean) == 40
    (tmp_path / "table.md").write_text("| b |\n")  # a benchmark rewrote its table: still the same code
    assert provenance.git_hash(tmp_path) == clean
    (tmp_path / "pkg" / "code.py").write_text("x = 2\n")
    assert provenance.git_hash(tmp_path) == clean + "-dirty"
