"""Task data I/O: load and write text-classification samples (splitting and batching: `purify.splits`).

Every malformed input raises `DataError` naming the file and the 1-based line, so a user can fix
the data without reading a traceback.
"""
from __future__ import annotations

import csv
import io
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from purify.errors import DataError
from purify.textfile import read_text_bounded

SUPPORTED_SUFFIXES = (".jsonl", ".csv", ".tsv")

_TRUE_STRINGS = {"true", "1", "yes", "y", "t"}
_FALSE_STRINGS = {"false", "0", "no", "n", "f"}


@dataclass(frozen=True)
class Sample:
    """One labelled text; `poisoned` is ground truth for evaluation only, `index` its position in the source file."""

    text: str
    label: int
    poisoned: bool | None = None
    index: int = 0


@dataclass
class TaskData:
    """Samples plus the label vocabulary, so ids can be shown as names and files can be traced."""

    samples: list[Sample]
    label_names: list[str]
    source: str | None = None

    def __post_init__(self) -> None:
        """Reject labels outside `label_names` early, before they reach a model head."""
        self.samples = list(self.samples)
        self.label_names = list(self.label_names)
        n = len(self.label_names)
        for pos, s in enumerate(self.samples):
            if not 0 <= s.label < n:
                raise DataError(
                    f"{self.source or 'task data'}: sample {pos} has label {s.label}, "
                    f"outside 0..{n - 1} for label names {self.label_names}"
                )

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.samples)

    @property
    def texts(self) -> list[str]:
        """The texts in sample order, ready for `purify.inference.encode`."""
        return [s.text for s in self.samples]

    @property
    def labels(self) -> list[int]:
        """The label ids in sample order, ready for metrics."""
        return [s.label for s in self.samples]

    def subset(self, indices: Iterable[int]) -> TaskData:
        """A TaskData holding the samples at these list positions (not `Sample.index`), same labels and source."""
        picked: list[Sample] = []
        n = len(self.samples)
        for i in indices:
            i = int(i)
            if not 0 <= i < n:
                raise DataError(f"{self.source or 'task data'}: subset position {i} outside 0..{n - 1}")
            picked.append(self.samples[i])
        return TaskData(picked, self.label_names, self.source)

    def one_class_warning(self) -> str | None:
        """A one-line warning when every sample carries the same label (nothing to tell classes apart), else None."""
        labels = set(self.labels)
        if len(self.samples) < 2 or len(labels) != 1:
            return None
        label = self.label_names[labels.pop()]
        return (f"{self.source or 'task data'}: all {len(self.samples)} samples have label {label!r}; a classifier "
                "trained on one class learns nothing about the others")

    def without_poisoned(self) -> TaskData:
        """Drop samples flagged poisoned by ground truth: only for upper-bound benchmarks, never for real
        purification."""
        return TaskData([s for s in self.samples if s.poisoned is not True], self.label_names, self.source)


# ---------------------------------------------------------------------------------------------
# Loading


def _jsonl_rows(text: str, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank JSONL line."""
    # split on "\n" only: str.splitlines would also break on U+2028, which JSON strings may hold.
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name} line {lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{name} line {lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _delimited_rows(text: str, name: str, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, row dict) for each non-blank CSV/TSV row after the header."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    prev_end = 0
    try:
        for row in reader:
            start, prev_end = prev_end + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [h.strip() for h in row]
                if len(set(header)) != len(header):
                    raise DataError(f"{name} line {start}: header has duplicate field names: {header}")
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{name} line {start}: {len(row)} values but the header has {len(header)} fields "
                    f"({', '.join(header)})"
                )
            yield start, dict(zip(header, row))
    except csv.Error as exc:
        raise DataError(f"{name} line {reader.line_num}: malformed {delimiter!r}-separated row: {exc}") from None


def _parse_poisoned(value: Any, name: str, lineno: int) -> bool | None:
    """Turn a `poisoned` cell (bool, null, or a true/false string) into bool | None."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        v = value.strip().lower()
        if v == "":
            return None
        if v in _TRUE_STRINGS:
            return True
        if v in _FALSE_STRINGS:
            return False
    raise DataError(f"{name} line {lineno}: field 'poisoned' must be true, false or empty, got {value!r}")


def _label_as_int(value: Any) -> int | None:
    """The integer a label denotes (int, integral float, or numeric string), else None when it is a name."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        v = value.strip()
        if v.lstrip("+-").isdigit() and v.isascii():
            return int(v)
    return None


def _resolve_labels(
    raw: list[tuple[int, Any]], label_names: list[str] | None, name: str
) -> tuple[list[int], list[str]]:
    """Map raw label values to ids and decide the label vocabulary."""
    for lineno, value in raw:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise DataError(f"{name} line {lineno}: label must be an integer or a name, got {value!r}")
        if isinstance(value, float) and not value.is_integer():
            raise DataError(f"{name} line {lineno}: label must be an integer or a name, got {value!r}")
    if label_names is not None:
        lookup = {n: i for i, n in enumerate(label_names)}
        ids: list[int] = []
        for lineno, value in raw:
            key = value.strip() if isinstance(value, str) else None
            if key is not None and key in lookup:
                ids.append(lookup[key])
                continue
            as_int = _label_as_int(value)
            if as_int is None:
                raise DataError(f"{name} line {lineno}: unknown label name {value!r} (known: {', '.join(label_names)})")
            if not 0 <= as_int < len(label_names):
                raise DataError(
                    f"{name} line {lineno}: label {as_int} out of range 0..{len(label_names) - 1} "
                    f"for label names {label_names}"
                )
            ids.append(as_int)
        return ids, list(label_names)

    as_ints = [_label_as_int(v) for _, v in raw]
    ints = [i for i in as_ints if i is not None]
    if len(ints) == len(as_ints):
        for (lineno, _), i in zip(raw, ints):
            if i < 0:
                raise DataError(f"{name} line {lineno}: label {i} out of range (label ids start at 0)")
        n = max(max(ints) + 1, 2)
        return ints, [str(i) for i in range(n)]
    if all(i is None for i in as_ints):
        names = sorted({v.strip() for _, v in raw})
        lookup = {n: i for i, n in enumerate(names)}
        return [lookup[v.strip()] for _, v in raw], names
    first_is_int = as_ints[0] is not None
    for (lineno, value), label_id in zip(raw, as_ints):
        if (label_id is not None) != first_is_int:
            raise DataError(
                f"{name} line {lineno}: label {value!r} mixes names and integer ids in one file; "
                "pass label_names to say how names map to ids"
            )
    raise AssertionError("unreachable")  # pragma: no cover


def _validate_label_names(label_names: Sequence[str], name: str) -> list[str]:
    """Check a user-given label vocabulary: non-empty, unique, strings."""
    names = list(label_names)
    if not names:
        raise DataError(f"{name}: label_names is empty")
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise DataError(f"{name}: label_names must be non-empty strings, got {names!r}")
    names = [n.strip() for n in names]
    if len(set(names)) != len(names):
        raise DataError(f"{name}: label_names has duplicates: {names!r}")
    return names


def load_task_data(
    path: str | os.PathLike[str],
    *,
    text_field: str = "text",
    label_field: str = "label",
    label_names: Sequence[str] | None = None,
    max_line_bytes: int | None = None,
) -> TaskData:
    """Load a .jsonl/.csv/.tsv classification file into TaskData, rejecting malformed lines with file and line.

    No line may be longer than `max_line_bytes` (default purify.textfile.MAX_LINE_BYTES, 1 MiB, or the
    PURIFY_MAX_LINE_BYTES environment variable): a longer one is refused after reading that much of it.
    """
    p = Path(path)
    name = str(path)
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"{name}: unsupported file type {p.suffix or '(no suffix)'!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    names = _validate_label_names(label_names, name) if label_names is not None else None
    content = read_text_bounded(p, name, max_line_bytes)
    if suffix == ".jsonl":
        rows: Iterable[tuple[int, dict[str, Any]]] = _jsonl_rows(content, name)
    else:
        rows = _delimited_rows(content, name, "," if suffix == ".csv" else "\t")

    texts: list[str] = []
    raw_labels: list[tuple[int, Any]] = []
    flags: list[bool | None] = []
    for lineno, row in rows:
        for f in (text_field, label_field):
            if f not in row:
                present = ", ".join(map(str, row)) or "none"
                raise DataError(f"{name} line {lineno}: missing field {f!r} (fields present: {present})")
            if row[f] is None:
                raise DataError(f"{name} line {lineno}: field {f!r} is null")
        text = row[text_field]
        if not isinstance(text, str):
            raise DataError(f"{name} line {lineno}: field {text_field!r} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise DataError(f"{name} line {lineno}: field {text_field!r} is empty")
        label = row[label_field]
        if isinstance(label, str) and not label.strip():
            raise DataError(f"{name} line {lineno}: field {label_field!r} is empty")
        texts.append(text)
        raw_labels.append((lineno, label))
        flags.append(_parse_poisoned(row.get("poisoned"), name, lineno))

    if not texts:
        raise DataError(f"{name}: no samples (the file holds no data lines)")
    ids, vocab = _resolve_labels(raw_labels, names, name)
    samples = [Sample(t, i, f, pos) for pos, (t, i, f) in enumerate(zip(texts, ids, flags))]
    return TaskData(samples, vocab, name)


# ---------------------------------------------------------------------------------------------
# Writing


def _sample_record(sample: Sample, include_poisoned: bool) -> dict[str, Any]:
    """The JSON object one sample is written as."""
    rec: dict[str, Any] = {"text": sample.text, "label": sample.label}
    if include_poisoned and sample.poisoned is not None:
        rec["poisoned"] = sample.poisoned
    rec["index"] = sample.index
    return rec


def write_jsonl(path: str | os.PathLike[str], samples: Iterable[Sample], *, include_poisoned: bool = True) -> None:
    """Write samples as JSONL atomically (temp file in the same folder, then os.replace): readers never see half a
    file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 lets the umask decide permissions, like a plain open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            for pos, sample in enumerate(samples):
                try:
                    line = json.dumps(_sample_record(sample, include_poisoned), ensure_ascii=False)
                except (TypeError, ValueError, AttributeError) as exc:
                    raise DataError(f"{target}: cannot write sample {pos}: {exc}") from exc
                # escape the two JSON-legal line separators so line-splitting readers still see one record per line
                fh.write(line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029") + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
