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
