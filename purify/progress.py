"""Progress for every step that takes more than a few seconds: a rich bar on a terminal, a start and an end line
elsewhere (a log file, CI), nothing when PURIFY_QUIET is set."""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def enabled() -> bool:
    return not os.environ.get("PURIFY_QUIET")


def track(items: Iterable[T], *, description: str, total: int | None = None) -> Iterator[T]:
    """Iterate `items` with a transient rich progress bar on stderr, or two plain lines when it is not a terminal."""
    if not enabled():
        yield from items
        return
    if not sys.stderr.isatty():  # a live bar renders nothing useful in a file: say when the step starts and ends
        of = f" ({total} steps)" if total is not None else ""
        print(f"[progress] {description}: started{of}", file=sys.stderr, flush=True)
        started, done = time.time(), 0
        for item in items:
            yield item
            done += 1
        print(f"[progress] {description}: {done} steps in {time.time() - started:.1f} s", file=sys.stderr, flush=True)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        yield from bar.track(items, total=total, description=description)
