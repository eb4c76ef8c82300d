"""The resumable matrix: run each cell in its own subprocess, cache its JSON, lock a running cell, save a suite."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..provenance import provenance


@dataclass(frozen=True)
class Cell:
    """One benchmark measurement: a method on a zoo entry with options and a seed."""

    suite: str
    entry: str
    method: str
    seed: int = 0
    options: dict = field(default_factory=dict, hash=False)

    @property
    def key(self) -> str:
        raw = json.dumps([self.suite, self.entry, self.method, self.seed, self.options], sort_keys=True)
        return f"{self.entry}__{self.method}__s{self.seed}__{hashlib.sha1(raw.encode()).hexdigest()[:8]}"


def _peak_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _device_name() -> str:
    """Where a cell ran: timings are only comparable on the same device."""
    import torch

    from ..device import select_device

    device = select_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"

# -- the matrix, resumable ---------------------------------------------------------------------------------------

def cell_path(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.suite / f"{cell.key}.json"


def cell_output(out: Path, cell: Cell) -> Path:
    """Where a running (or failed) cell's stdout and stderr go."""
    return cell_path(out, cell).with_suffix(".log")


def run_cell_subprocess(cell: Cell, out: Path, *, timeout: float | None = None) -> dict:
    """Run one cell in a fresh interpreter; its JSON result is cached at `cell_path`.

    The cell's output goes to `cell_output(...)` while it runs (follow a long cell with `tail -f`); the file is
    removed when the cell succeeds and kept when it fails.
    """
    path = cell_path(out, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    output = cell_output(out, cell)
    payload = json.dumps(asdict(cell))
    # unbuffered, with progress as plain lines (stderr is a file), so the log follows the cell as it runs
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.time()
    with output.open("w") as sink:
        proc = subprocess.run([sys.executable, "-m", "purify.bench", payload, str(path)], env=env, timeout=timeout,
                              stdout=sink, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not path.exists():
        tail = output.read_text(errors="replace").strip().splitlines()[-5:]
        return {"error": " | ".join(tail), "output": str(output), "wall_seconds": round(time.time() - started, 1)}
    output.unlink()
    return json.loads(path.read_text())


def run_matrix(cells: list[Cell], out: Path, *, log=print, timeout: float | None = None,
               cached_only: bool = False) -> list[dict]:
    """Run every cell not cached yet (in order), then return all results.

    `cached_only` runs nothing: a cell without a cached result is returned as {"missing": True}, so a long matrix
    can be reported part way with its missing cells named. Two bench processes may share `out`: a cell another
    process is running is skipped (reported as missing), never run twice at once.
    """
    results = []
    for i, cell in enumerate(cells, 1):
        path = cell_path(out, cell)
        record, busy = None, False
        if not path.exists() and not cached_only:
            with _claim(path) as claimed:
                busy = not claimed
                if claimed and not path.exists():  # the other process may have finished it meanwhile
                    log(f"[bench] {i}/{len(cells)} running {cell.key} (output: {cell_output(out, cell)})")
                    record = run_cell_subprocess(cell, out, timeout=timeout)
                    if "error" in record:
                        log(f"[bench]   failed: {record['error']} (whole output: {record['output']})")
        if record is None and path.exists():
            record = json.loads(path.read_text())
            log(f"[bench] {i}/{len(cells)} cached  {cell.key}")
        elif record is None:
            record = {"missing": True}
            why = " (another bench process is running it)" if busy else ""
            log(f"[bench] {i}/{len(cells)} missing {cell.key}{why}")
        results.append({"cell": asdict(cell), **record})
    return results


@contextlib.contextmanager
def _claim(path: Path) -> Iterator[bool]:
    """An exclusive, non-blocking lock on a cell (released when the holder exits, even by a crash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_suffix(".lock")
    with lock.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            lock.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _main_cell(payload: str, path: str) -> None:
    """Run one cell (inside its subprocess) and write its record atomically to `path`."""
    from .suites import SUITES

    cell = Cell(**json.loads(payload))
    suite = SUITES.get(cell.suite, None)
    if suite is None:
        raise ConfigError(f"unknown suite {cell.suite!r}; known: {', '.join(SUITES.names())}")
    started = time.time()
    origin = provenance()  # the code the cell starts with, not whatever the tree holds when it ends
    work = Path(path).with_suffix(".work")
    record = suite.run_cell(cell, work)
    record["wall_seconds"] = round(time.time() - started, 1)
    record["provenance"] = origin
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)
    shutil.rmtree(work, ignore_errors=True)


def save_json(results: list[dict], path: Path, command: str, prov: dict) -> None:
    """The suite's JSON: the command that produced it, its provenance and every cell's record."""
    path.write_text(json.dumps({"command": command, "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                **prov, "cells": results}, indent=2, sort_keys=True, default=float) + "\n")
