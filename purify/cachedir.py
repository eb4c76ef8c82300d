"""Where purify caches things, and how a finished cache folder (a trained teacher, a zoo model, a converted base)
is published so that concurrent processes agree.

Several benchmark processes may train the same cached artefact at once. The first complete copy wins: a later one is
discarded rather than swapped in, because another process may be loading the copy already in place.
"""
from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    """Where purify caches zoo entries, converted bases and teachers: $PURIFY_CACHE or ~/.cache/purify."""
    return Path(os.environ.get("PURIFY_CACHE") or Path.home() / ".cache" / "purify")


def private_tmp(dest: Path) -> Path:
    """A temporary sibling of `dest` that no other process uses (same filesystem, so the final move is atomic)."""
    return dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")


def publish_dir(tmp: Path, dest: Path, is_complete: Callable[[Path], bool]) -> bool:
    """Move the finished folder `tmp` to `dest`, unless a complete copy is already there; True when ours was placed.

    An incomplete leftover at `dest` (a writer that crashed under older code) is moved aside in one rename, then
    deleted, so no reader ever sees a folder being emptied. `tmp` is gone afterwards either way.
    """
    try:
        if is_complete(dest):
            return False
        if dest.exists():
            stale = dest.with_name(f".{dest.name}.stale-{uuid.uuid4().hex[:8]}")
            try:
                os.replace(dest, stale)
            except FileNotFoundError:
                pass
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, dest)
        except OSError:
            # another process placed its copy between the check and the move (a folder cannot replace a non-empty one)
            if not is_complete(dest):
                raise
            return False
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def publishing(dest: Path, is_complete: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield a private folder to write into; on success publish it at `dest` (see `publish_dir`), on error remove it."""
    tmp = private_tmp(dest)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, dest, is_complete)
