"""Text that reaches the terminal: untrusted label names, texts and file names are shown with their control
characters escaped, so data cannot move the cursor, recolour the screen or forge extra output lines."""
from __future__ import annotations

import sys
import unicodedata

#: bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069) can reorder what a line seems to say
_BIDI = frozenset(range(0x202A, 0x202F)) | frozenset(range(0x2066, 0x206A))


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """`text` as one safe line: control characters (newlines too), line separators and bidi controls escaped."""
    return "".join(_escape(c) if ord(c) in _BIDI or unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
                   for c in str(text))


def warn(message: str) -> None:
    """One `purify: warning: ...` line on stderr."""
    print(f"purify: warning: {printable(message)}", file=sys.stderr)
