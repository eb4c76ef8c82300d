"""Reading an untrusted text file line by line with a bound on each line, so one huge line is refused after at
most `max_line_bytes` bytes of it were read instead of costing gigabytes of memory further on."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import DataError

#: the default bound on one line of a data file (1 MiB); PURIFY_MAX_LINE_BYTES overrides it
MAX_LINE_BYTES = 1 << 20
MAX_LINE_ENV = "PURIFY_MAX_LINE_BYTES"


def max_line_bytes() -> int:
    """The per-line bound in force: PURIFY_MAX_LINE_BYTES when set (a positive integer), else MAX_LINE_BYTES."""
    raw = os.environ.get(MAX_LINE_ENV, "").strip()
    if not raw:
        return MAX_LINE_BYTES
    if not raw.isdigit() or int(raw) < 1:
        raise DataError(f"{MAX_LINE_ENV}={raw!r}: expected a positive number of bytes")
    return int(raw)


def read_text_bounded(path: Path, name: str, limit: int | None = None) -> str:
    """The file as UTF-8 text (a BOM tolerated), read in lines of at most `limit` bytes; DataError naming the line
    that is longer or not valid UTF-8."""
    limit = max_line_bytes() if limit is None else limit
    if not path.exists():
        raise DataError(f"{name}: no such file")
    if not path.is_file():
        raise DataError(f"{name}: not a regular file")
    parts: list[str] = []
    try:
        with open(path, "rb") as fh:
            lineno = 0
            while line := fh.readline(limit + 1):
                lineno += 1
                if len(line) - line.endswith(b"\n") > limit:
                    raise DataError(f"{name} line {lineno}: longer than {limit} bytes, the per-line limit "
                                    f"(set {MAX_LINE_ENV} to raise it)")
                try:
                    parts.append(line.decode("utf-8-sig" if lineno == 1 else "utf-8"))
                except UnicodeDecodeError as exc:
                    raise DataError(f"{name} line {lineno}: not valid UTF-8 ({exc.reason})") from None
    except OSError as exc:
        raise DataError(f"{name}: cannot read ({exc.strerror})") from None
    return "".join(parts)
