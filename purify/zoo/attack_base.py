"""The attacks' base class, their registry and the text helpers they share (word and sentence boundaries)."""
from __future__ import annotations

import inspect
import random
import re
from typing import Any, ClassVar

from purify.errors import ConfigError
from purify.registry_base import Registry


class Attack:
    """A trigger transform. Subclasses set ``name`` and implement :meth:`apply` and :meth:`params`."""

    name: ClassVar[str] = "attack"
    #: When True, :func:`poison_split` poisons target-class samples only and keeps their labels.
    clean_label: bool = False

    def apply(self, text: str, rng: random.Random) -> str:
        """Return ``text`` with the trigger applied; all randomness must come from ``rng``."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """JSON-able parameters such that ``get_attack(self.name, **self.params())`` rebuilds it."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.params() == self.params()

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self.params())))


#: every attack class, by name
ATTACKS: Registry[type[Attack]] = Registry("attack")


def _register(cls: type[Attack]) -> type[Attack]:
    return ATTACKS.register(cls.name, cls)


def get_attack(name: str, **params: Any) -> Attack:
    """Build a registered attack by name; raises :class:`ConfigError` for unknown names or params."""
    key = str(name).strip().lower()
    cls = ATTACKS.get(key, None)
    if cls is None:
        raise ConfigError(f"unknown attack {name!r}; known attacks: {', '.join(ATTACKS.names())}")
    accepted = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"attack {key!r} does not take parameter(s) {', '.join(unknown)}; it takes: {', '.join(accepted) or 'none'}"
        )
    return cls(**params)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

_WORD_START = re.compile(r"(?:^|(?<=\s))\S")


def _word_boundaries(text: str) -> list[int]:
    """Offsets where a new word may be inserted: before every word and at the very end."""
    return [m.start() for m in _WORD_START.finditer(text)] + [len(text)]


def _insert_at(text: str, offset: int, piece: str) -> str:
    """Insert ``piece`` as a separate word at a boundary offset from :func:`_word_boundaries`."""
    if not text.strip():
        return piece
    if offset >= len(text):
        return text.rstrip() + " " + piece
    return text[:offset] + piece + " " + text[offset:]


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]*[A-Z0-9])")
_ABBREV = re.compile(r"(?:\b[A-Z]|\bMrs?|\bMs|\bDr|\bSt|\bProf|\bJr|\bSr|\bvs|\bCo|\bInc|\be\.g|\bi\.e)\.$")


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of ``text`` (a simple rule-based splitter)."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        before = text[start : m.start()].rstrip("\"')]")
        if _ABBREV.search(before):
            continue  # "J.R.R. Tolkien", "Mr. Smith": not a sentence end
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    return [(a, b) for a, b in spans if text[a:b].strip()]


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def _cap(s: str) -> str:
    """`s` with its first letter upper-cased."""
    for i, ch in enumerate(s):
        if ch.isalpha():
            return s[:i] + ch.upper() + s[i + 1 :]
    return s
