"""What produced a result: package versions and the git hash of the purify checkout, for reports."""
from __future__ import annotations

import os
import subprocess
from importlib import metadata
from pathlib import Path

_PACKAGES = ("purify-backdoor", "torch", "transformers", "peft", "safetensors", "numpy")


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Installed versions of the packages that decide purify's numbers ('missing' when not installed)."""
    versions = {}
    for name in _PACKAGES + tuple(extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


#: what "-dirty" looks at: the code and its build settings, not result files (a benchmark run rewrites its own
#: tables and the README's copy of them, which would otherwise mark every later table of the same run dirty)
SOURCE_PATHSPEC = ("*.py", "*.toml", "*.cfg", "Makefile", ".ci/*")


def git_hash(root: Path | None = None) -> str | None:
    """The commit of the purify source tree (with '-dirty' when tracked source differs from it), or None outside git.

    $PURIFY_GIT_HASH, when set, names it instead: a copy of the tree shipped to another machine may carry no .git,
    or a stale one. `root` defaults to this checkout.
    """
    if os.environ.get("PURIFY_GIT_HASH"):
        return os.environ["PURIFY_GIT_HASH"]
    root = root or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *SOURCE_PATHSPEC],
                               cwd=root, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    """Versions plus git hash, as recorded in every report and exported config."""
    return {"versions": package_versions(), "git_hash": git_hash()}
