"""The test folders never stand in for the real top-level packages they are named after."""
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["purify", "strategies", "teachers"])
def test_top_level_packages_are_the_real_ones(name):
    module = importlib.import_module(name)
    assert module.__file__ is not None, f"{name} resolved to a namespace package: {list(module.__path__)}"
    assert Path(module.__file__).resolve().parent == ROOT / name


def test_every_test_folder_is_a_package():
    folders = {p.parent for p in (ROOT / "tests").rglob("test_*.py")}
    assert all((folder / "__init__.py").exists() for folder in folders)
