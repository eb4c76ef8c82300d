"""Where purify writes, and how: refuse a destination that would destroy an input or a folder purify did not write,
stage an export beside its destination and swap it in with renames, write plain files atomically, and remember
what an interrupt left behind so the CLI can say it truthfully.

An export is staged in ``.<name>.tmp-<token>`` next to ``<name>``; a journal ``.<name>.purify-export-<token>.json``
(pid, host, the three names) is written first and removed last. Replacing goes old -> ``.<name>.old-<token>``, new
-> ``<name>``, then the old one is deleted, so at every instant the old or the new export is whole. A later export
reads journals whose process is gone from this host and finishes or undoes what they left (`collect_stale`).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import ExportError

#: files that only purify writes: an export's report, a tune run's study and canary cache
PURIFY_MARKERS = ("purify_report.json", "tune_study.db", "tune_canary.json")
JOURNAL_INFIX = ".purify-export-"
#: test hook: PURIFY_TEST_PAUSE_AT=<stage>[:seconds] prints "purify: paused at <stage>" to stderr and sleeps there
PAUSE_ENV = "PURIFY_TEST_PAUSE_AT"
PAUSE_STAGES = ("load", "strategy", "staging", "swap")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


# -- what the destination holds now, for the interrupt message ---------------------------------------------------

@dataclass
class Progress:
    """The destination of the running command and what has happened to it (phase)."""

    dest: Path | None = None
    phase: str = "untouched"  # untouched | replaced | restored | aside
    detail: str = ""


PROGRESS = Progress()


def reset_progress(dest: Path | None = None) -> None:
    """Start a new command: nothing written yet (at `dest`, when known)."""
    PROGRESS.dest, PROGRESS.phase, PROGRESS.detail = dest, "untouched", ""


def interrupt_message() -> str:
    """What an interrupt left at the destination, in words that are true for the current phase."""
    dest, phase = PROGRESS.dest, PROGRESS.phase
    if dest is None or phase == "untouched":
        return "nothing was written at the destination" + (f" ({dest} is as it was)" if dest else "")
    if phase == "replaced":
        return f"the new output was already complete at {dest} when the interrupt came"
    if phase == "restored":
        return f"{dest} still holds the previous export (the swap was rolled back)"
    return f"{dest} is missing: {PROGRESS.detail}"


# -- checks before any work ---------------------------------------------------------------------------------------

def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.fspath(path))).resolve()


def _relation(out: Path, src: Path) -> str | None:
    if out == src:
        return "is"
    if src.is_relative_to(out):
        return "contains"
    if out.is_relative_to(src):
        return "lies inside"
    return None


def check_not_input(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], *,
                    option: str = "--out") -> None:
    """Refuse an output that is, contains or lies inside one of `inputs` (symlinks resolved)."""
    real = _real(out)
    for item in inputs:
        if item is None or os.fspath(item) == "":
            continue
        relation = _relation(real, _real(item))
        if relation:
            raise ExportError(f"{option} {out} {relation} the input {item}; writing there could change or "
                              "destroy it; choose a destination outside the inputs")


def _writable(folder: Path) -> bool:
    mode = folder.stat().st_mode
    return os.access(folder, os.W_OK | os.X_OK) and bool(mode & 0o222)


def check_parent(out: str | os.PathLike, *, need_bytes: int = 0, option: str = "--out") -> None:
    """Refuse an output whose parent folder is missing, is a file, is read-only or lacks `need_bytes` free."""
    real = _real(out)
    parent = real.parent
    if real == parent:
        raise ExportError(f"{option} {out} is the root of the file system; choose a folder")
    ancestor = parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ExportError(f"{option} {out}: {ancestor} is a file, not a folder")
    if ancestor != parent:
        raise ExportError(f"{option} {out}: the folder {parent} does not exist; create it first")
    if not _writable(parent):
        raise ExportError(f"{option} {out}: the folder {parent} is read-only")
    if need_bytes > 0:
        free = shutil.disk_usage(parent).free
        if free < need_bytes:
            raise ExportError(f"{option} {out}: only {free / 2**20:.1f} MiB free in {parent}, the output needs "
                              f"about {need_bytes / 2**20:.1f} MiB")


def is_purify_folder(folder: str | os.PathLike) -> bool:
    """True for a folder purify wrote: it holds an export report or a tune run's study or canary cache."""
    return any((Path(folder) / name).is_file() for name in PURIFY_MARKERS)


def check_replaceable(out: str | os.PathLike, overwrite: bool, *, option: str = "--out") -> None:
    """Refuse an existing `out` without `overwrite`, and with it anything but an empty folder or one purify wrote."""
    path = Path(out)
    if not (path.exists() or path.is_symlink()):
        return
    if not path.is_dir():
        raise ExportError(f"{option} {out} exists and is not a folder; choose another {option}")
    if not overwrite:
        raise ExportError(f"{out} already exists; choose another {option} or pass --overwrite")
    if any(path.iterdir()) and not is_purify_folder(path):
        raise ExportError(f"{option} {out} is not empty and purify did not write it (no {PURIFY_MARKERS[0]}); "
                          "--overwrite only replaces purify's own folders, choose another " + option)


def check_destination(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), *,
                      overwrite: bool = False, need_bytes: int = 0, option: str = "--out") -> Path:
    """Every check on an export folder before any work starts; finishes stale exports first. Returns `out`."""
    check_not_input(out, inputs, option=option)
    check_parent(out, need_bytes=need_bytes, option=option)
    collect_stale(_real(out).parent)
    check_replaceable(out, overwrite, option=option)
    reset_progress(Path(out))
    return Path(out)


def check_output_files(paths: Sequence[str | os.PathLike], inputs: Iterable[str | os.PathLike | None], *,
                       overwrite: bool, option: str = "--out") -> None:
    """Checks for a command that writes plain files: none an input, each one's folder writable, none in the way."""
    inputs = list(inputs)
    for path in paths:
        check_not_input(path, inputs, option=option)
        check_parent(path, option=option)
        if Path(path).is_dir():
            raise ExportError(f"{option}: {path} is a folder; name a file")
        if Path(path).exists() and not overwrite:
            raise ExportError(f"{path} already exists; choose another {option} or pass --overwrite")
    reset_progress(Path(paths[0]) if paths else None)


def export_size_hint(folders: Iterable[str | os.PathLike | None]) -> int:
    """Bytes of the weight files in `folders`: a lower bound on what exporting a model read from them writes."""
    total = 0
    for folder in folders:
        if folder is None or not Path(folder).is_dir():
            continue
        total += sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return total


def _adapter_base(model_dir: str | os.PathLike) -> str | None:
    try:
        base = json.loads((Path(model_dir) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return base if isinstance(base, str) and Path(base).is_dir() else None


def check_run_destination(model_dir: str | os.PathLike, data_path: str | os.PathLike, out_dir: str | os.PathLike,
                          cfg) -> Path:
    """`check_destination` for `purify run`/`tune`: the inputs are the model (and an adapter's base), the data,
    and the trusted and evaluation files of the pipeline config `cfg`."""
    base = _adapter_base(model_dir)
    inputs = [model_dir, base, data_path, cfg.trusted, cfg.eval_clean, cfg.eval_triggered]
    return check_destination(out_dir, inputs, overwrite=cfg.overwrite, need_bytes=export_size_hint([model_dir, base]))


# -- staging, swap and collection ---------------------------------------------------------------------------------

@dataclass
class Staging:
    """The names one export uses beside its destination: staging folder, the old export's aside name, journal."""

    dest: Path
    staged: Path
    aside: Path
    journal: Path
    keep: bool = False  # a failed rollback: leave staged folder and journal for `collect_stale`

    @classmethod
    def beside(cls, dest: Path) -> Staging:
        token = secrets.token_hex(4)
        parent, name = dest.parent, dest.name
        return cls(dest, parent / f".{name}.tmp-{token}", parent / f".{name}.old-{token}",
                   parent / f".{name}{JOURNAL_INFIX}{token}.json")


def _write_journal(stage: Staging) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "dest": stage.dest.name,
              "staged": stage.staged.name, "aside": stage.aside.name}
    tmp = stage.journal.with_name(stage.journal.name + ".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, stage.journal)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


@contextmanager
def staged_folder(dest: str | os.PathLike) -> Iterator[Staging]:
    """A fresh staging folder beside `dest` (journal first); on failure it is removed and `dest` is untouched."""
    dest = Path(dest)
    dest = dest.resolve() if dest.is_symlink() else dest  # replace the folder a link points to, not the link
    stage = Staging.beside(dest)
    PROGRESS.dest = dest
    _write_journal(stage)
    stage.staged.mkdir()
    try:
        yield stage
    except BaseException:
        if not stage.keep:
            shutil.rmtree(stage.staged, ignore_errors=True)
            if not stage.staged.exists():
                stage.journal.unlink(missing_ok=True)
        raise


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends (they are re-sent then), so renames that belong together finish.

    A Python-level handler, not a signal mask: the mask is per thread, and torch's threads would take the signal.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not None:  # None: set outside Python, it could not be put back
            previous[sig] = signal.signal(sig, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(caught):
            os.kill(os.getpid(), signum)  # delivered now, to the handlers the command had


def _rename_in(stage: Staging, had_old: bool) -> None:
    """Old export aside (if any), new one in; rolled back when the second rename fails."""
    dest, staged, aside = stage.dest, stage.staged, stage.aside
    if not had_old:
        pause_point("swap")
        try:
            os.replace(staged, dest)
        except OSError as exc:
            raise ExportError(f"could not move the new export into {dest} ({exc}); nothing was written there") from None
        return
    try:
        os.replace(dest, aside)
    except OSError as exc:
        raise ExportError(f"could not move the previous export {dest} aside ({exc}); it is unchanged") from None
    try:
        pause_point("swap")
        os.replace(staged, dest)
    except BaseException as exc:
        try:
            os.replace(aside, dest)
        except OSError as back:
            stage.keep = True
            PROGRESS.phase = "aside"
            PROGRESS.detail = f"the previous export is whole at {aside}, the new one at {staged}"
            raise ExportError(f"could not move the new export into {dest} ({exc}) nor the previous one back "
                              f"({back}): the previous export is whole at {aside}, the new one at {staged}") from None
        PROGRESS.phase = "restored"
        if isinstance(exc, OSError):
            raise ExportError(f"could not move the new export into {dest} ({exc}); it still holds the previous "
                              "export") from None
        raise


def swap_into_place(stage: Staging) -> None:
    """Move the staged export to its destination (old -> aside, new -> dest), then delete the old one and journal."""
    had_old = stage.dest.exists() or stage.dest.is_symlink()
    PROGRESS.dest = stage.dest
    try:
        with _signals_deferred():
            _rename_in(stage, had_old)
            PROGRESS.phase = "replaced"
    finally:
        if PROGRESS.phase == "replaced":  # even when a held interrupt is raised as the block ends
            try:
                if had_old:
                    _remove(stage.aside)
                stage.journal.unlink(missing_ok=True)
            except OSError:
                pass  # the journal stays: a later export finishes deleting the old one


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_journal(journal: Path) -> dict | None:
    """The journal's record when it is ours to finish: this host, a process that is gone, names of our own making."""
    try:
        info = json.loads(journal.read_text())
        pid, dest = int(info["pid"]), str(info["dest"])
        names = [dest, str(info["staged"]), str(info["aside"])]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    token = journal.name[len(f".{dest}{JOURNAL_INFIX}"):-len(".json")]
    expected = [dest, f".{dest}.tmp-{token}", f".{dest}.old-{token}"]
    if info.get("host") != socket.gethostname() or pid <= 0 or _alive(pid) or names != expected or "/" in dest \
            or dest in ("", ".", ".."):
        return None
    return info


def collect_stale(parent: str | os.PathLike) -> list[str]:
    """Finish what killed exports left in `parent`: restore an old export moved aside, delete staging and old copies."""
    done: list[str] = []
    folder = Path(parent)
    try:
        journals = sorted(folder.glob(f".*{JOURNAL_INFIX}*.json"))
    except OSError:
        return done
    for journal in journals:
        info = _stale_journal(journal)
        if info is None:
            continue
        dest, staged, aside = folder / info["dest"], folder / info["staged"], folder / info["aside"]
        try:
            if aside.exists():
                if not dest.exists() and not dest.is_symlink():
                    os.replace(aside, dest)  # killed between the two renames: the old export goes back
                    done.append(f"restored {dest}")
                elif not staged.exists():
                    _remove(aside)  # killed after the new export was in place
                    done.append(f"removed {aside}")
                else:
                    continue  # both in place and staged exist: not a state an export leaves; touch nothing
            if staged.exists():
                _remove(staged)
                done.append(f"removed {staged}")
            journal.unlink()
        except OSError:
            continue
    return done


# -- plain files --------------------------------------------------------------------------------------------------

@contextmanager
def atomic_files(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Temporary siblings of `paths` to write; when the block succeeds they replace `paths` together (interrupts
    held), when it fails they are removed and `paths` are untouched."""
    token = secrets.token_hex(4)
    targets = [Path(p) for p in paths]
    temps = [p.with_name(f".{p.stem}.tmp-{token}{p.suffix}") for p in targets]
    try:
        yield temps
        with _signals_deferred():
            for tmp, target in zip(temps, targets):
                os.replace(tmp, target)
            PROGRESS.dest, PROGRESS.phase = (targets[0] if targets else None), "replaced"
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


# -- the interrupt test hook --------------------------------------------------------------------------------------

def pause_point(stage: str) -> None:
    """Test hook: when PURIFY_TEST_PAUSE_AT names `stage` (``stage`` or ``stage:seconds``, default 30 s), say so on
    stderr and sleep, so a signal sent on that line lands at this point (benchmarks/interrupts.py)."""
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    name, _, seconds = spec.partition(":")
    if name != stage:
        return
    print(f"purify: paused at {stage}", file=sys.stderr, flush=True)
    time.sleep(float(seconds or 30))
