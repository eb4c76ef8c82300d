"""Shared fixtures: quiet progress bars, an isolated cache, offline hub."""
import os

import pytest

os.environ.setdefault("PURIFY_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """One purify cache for the whole test session (zoo entries, teachers and filter results are built once), for
    every test: no test writes into the user's cache."""
    path = tmp_path_factory.mktemp("purify-cache")
    os.environ["PURIFY_CACHE"] = str(path)
    return path
