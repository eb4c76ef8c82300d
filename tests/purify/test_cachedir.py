"""Publishing cache folders: the first complete copy wins, leftovers are replaced, nothing half-written stays."""
from __future__ import annotations

from pathlib import Path

import pytest

from purify.cachedir import private_tmp, publish_dir, publishing


def _complete(folder: Path) -> bool:
    return (folder / "done").exists()


def _copy(dest: Path, text: str) -> Path:
    tmp = private_tmp(dest)
    tmp.mkdir(parents=True)
    (tmp / "weights").write_text(text)
    (tmp / "done").write_text("")
    return tmp


def test_places_the_folder_when_none_is_there(tmp_path):
    dest = tmp_path / "teacher"
    tmp = _copy(dest, "first")
    assert publish_dir(tmp, dest, _complete)
    assert (dest / "weights").read_text() == "first" and not tmp.exists()


def test_a_complete_copy_already_in_place_is_kept(tmp_path):
    # two processes trained the same teacher: the second must not pull the first's files from under a reader
    dest = tmp_path / "teacher"
    publish_dir(_copy(dest, "first"), dest, _complete)
    second = _copy(dest, "second")
    assert not publish_dir(second, dest, _complete)
    assert (dest / "weights").read_text() == "first" and not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]


def test_an_incomplete_leftover_is_replaced(tmp_path):
    dest = tmp_path / "teacher"
    dest.mkdir()
    (dest / "weights").write_text("half")
    assert publish_dir(_copy(dest, "new"), dest, _complete)
    assert (dest / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]


def test_publishing_removes_its_folder_on_error(tmp_path):
    dest = tmp_path / "teacher"
    with pytest.raises(RuntimeError):
        with publishing(dest, _complete) as tmp:
            (tmp).mkdir()
            (tmp / "weights").write_text("half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    with publishing(dest, _complete) as tmp:
        tmp.mkdir()
        (tmp / "done").write_text("")
    assert _complete(dest)
