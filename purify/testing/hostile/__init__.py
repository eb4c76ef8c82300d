"""A probe kit of hostile inputs for the `purify` command line: each case lays out files, runs one command and
says what must happen (a one-line refusal with exit 2, or success), and which files must survive untouched.

The catalogue is split by area (`outputs`, `loading`, `inputs`); `all_cases()` gathers them. Tests run every
case in-process (`run_case`); `benchmarks/robustness.py` runs them in subprocesses and tallies the outcomes.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

AREAS = ("outputs", "loading", "inputs")


@dataclass(frozen=True)
class Case:
    """One hostile input: `build(tmp)` lays out files under `tmp` and returns the `purify` argv to run."""

    name: str
    build: Callable[[Path], list[str]]
    expect: str = "refused"  # "refused": exit 2 with a one-line error; "ok": exit 0
    #: paths (relative to tmp) whose bytes must be the same after the command, whatever it did
    protected: tuple[str, ...] = ()
    #: a text the error line must contain (case-insensitive), e.g. the option or file it names
    mentions: str | None = None


@dataclass
class Outcome:
    """What one case did: exit code, stderr lines, whether a traceback escaped, protected files lost or changed."""

    name: str
    exit_code: int
    stderr: str
    traceback: bool
    lost: list[str] = field(default_factory=list)

    def ok_for(self, case: Case) -> bool:
        """True when the case behaved as `case.expect` says and lost nothing."""
        if self.traceback or self.lost:
            return False
        if case.expect == "ok":
            return self.exit_code == 0
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        named = case.mentions is None or case.mentions.lower() in self.stderr.lower()
        return self.exit_code == 2 and len(lines) >= 1 and lines[-1].startswith("purify: error:") and named


def fingerprint(root: Path, paths: tuple[str, ...]) -> dict[str, str | None]:
    """sha256 of every file under each protected path (None where it is missing)."""
    prints: dict[str, str | None] = {}
    for rel in paths:
        target = root / rel
        files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
        for path in files:
            key = str(path.relative_to(root))
            prints[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return prints


def lost_files(before: dict[str, str | None], after: dict[str, str | None]) -> list[str]:
    """Protected files that vanished or changed."""
    return sorted(k for k, v in before.items() if after.get(k) != v)


def run_case(case: Case, tmp: Path) -> Outcome:
    """Build `case` under `tmp` and run it through `purify.cli.main` in this process."""
    from purify.cli import main

    argv = case.build(tmp)
    before = fingerprint(tmp, case.protected)
    err = io.StringIO()
    escaped = False
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - a traceback is exactly what the probe looks for
            escaped = True
            code = 1
            err.write(traceback.format_exc())
    return Outcome(case.name, int(code), err.getvalue(), escaped, lost_files(before, fingerprint(tmp, case.protected)))


def all_cases() -> Iterator[Case]:
    """Every case of every area module that exists (`purify.testing.hostile.<area>.CASES`)."""
    for area in AREAS:
        try:
            module = importlib.import_module(f"{__name__}.{area}")
        except ModuleNotFoundError:
            continue
        yield from module.CASES
