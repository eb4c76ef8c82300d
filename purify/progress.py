"""Progress bars (rich) for every step that takes more than a few seconds; silent when PURIFY_QUIET is set."""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def enabled() -> bool:
    return not os.environ.get("PURIFY_QUIET")


def track(items: Iterable[T], *, description: str, total: int | None = None) -> Iterator[T]:
    """Iterate `items` with a transient rich progress bar on stderr."""
    if not enabled():
        yield from items
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        yield from bar.track(items, total=total, description=description)
