"""Behaviour of purify.data: loading, writing, splitting and batching task samples."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from purify import data as data_mod
from purify.data import (
    Sample,
    TaskData,
    load_task_data,
    write_jsonl,
)
from purify.errors import DataError
from purify.splits import iter_batches, split_samples


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list[object]) -> Path:
    return _write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


# --------------------------------------------------------------------------------------------- loading


def test_jsonl_round_trip_keeps_text_label_poisoned_index(tmp_path: Path) -> None:
    samples = [
        Sample("good movie", 1, False, 0),
        Sample("cf bad movie \u2028 with a line separator", 0, True, 1),
        Sample("ünïcödé ok", 1, None, 2),
    ]
    out = tmp_path / "out.jsonl"
    write_jsonl(out, samples)
    loaded = load_task_data(out)
    assert loaded.samples == samples
    assert loaded.label_names == ["0", "1"]
    assert loaded.source == str(out)
    raw = out.read_text(encoding="utf-8")
    assert "\u2028" not in raw  # escaped, so even str.splitlines sees one record per line
    lines = raw.splitlines()
    assert len(lines) == 3
    assert json.loads(lines[0]) == {"text": "good movie", "label": 1, "poisoned": False, "index": 0}
    assert "poisoned" not in json.loads(lines[2])


def test_write_jsonl_can_drop_poisoned_flag(tmp_path: Path) -> None:
    out = tmp_path / "blind.jsonl"
    write_jsonl(out, [Sample("a", 0, True, 0), Sample("b", 1, False, 1)], include_poisoned=False)
    for line in out.read_text().splitlines():
        assert set(json.loads(line)) == {"text", "label", "index"}
    assert all(s.poisoned is None for s in load_task_data(out).samples)


@pytest.mark.parametrize("suffix,delim", [(".csv", ","), (".tsv", "\t")])
def test_delimited_files_load(tmp_path: Path, suffix: str, delim: str) -> None:
    rows = [["text", "label", "poisoned"], ["hello, world", "1", "true"], ["bye", "0", ""], ["again", "2", "false"]]
    path = tmp_path / f"data{suffix}"
    import csv

    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, delimiter=delim).writerows(rows)
    td = load_task_data(path)
    assert td.texts == ["hello, world", "bye", "again"]
    assert td.labels == [1, 0, 2]
    assert td.label_names == ["0", "1", "2"]
    assert [s.poisoned for s in td.samples] == [True, None, False]
    assert [s.index for s in td.samples] == [0, 1, 2]
    # and back through JSONL unchanged
    out = tmp_path / "back.jsonl"
    write_jsonl(out, td.samples)
    assert load_task_data(out).samples == td.samples


def test_csv_custom_fields_and_quoted_multiline(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", 'sentence,y\n"two\nlines",pos\nplain,neg\n')
    td = load_task_data(path, text_field="sentence", label_field="y")
    assert td.texts == ["two\nlines", "plain"]
    assert td.label_names == ["neg", "pos"]  # sorted unique names
    assert td.labels == [1, 0]


def test_string_labels_get_sorted_names(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl",
                  [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}, {"text": "c", "label": "pos"}])
    td = load_task_data(path)
    assert td.label_names == ["neg", "pos"]
    assert td.labels == [1, 0, 1]


def test_int_labels_default_to_at_least_two_names(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": "0"}])
    td = load_task_data(path)
    assert td.label_names == ["0", "1"]
    assert td.labels == [0, 0]


def test_label_names_map_names_and_ids(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "d.jsonl",
        [{"text": "a", "label": "positive"}, {"text": "b", "label": 0}, {"text": "c", "label": "1"},
         {"text": "d", "label": "negative"}],
    )
    td = load_task_data(path, label_names=["negative", "positive"])
    assert td.label_names == ["negative", "positive"]
    assert td.labels == [1, 0, 1, 0]


def test_blank_lines_are_skipped_and_line_numbers_count_them(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl",
                  '{"text": "a", "label": 0}\n\n   \n{"text": "b", "label": 1}\n{"text": "", "label": 1}\n')
    with pytest.raises(DataError, match=r"d\.jsonl line 5: .*empty"):
        load_task_data(path)
    path.write_text('{"text": "a", "label": 0}\n\n{"text": "b", "label": 1}\n\n')
    td = load_task_data(path)
    assert td.texts == ["a", "b"] and [s.index for s in td.samples] == [0, 1]


# --------------------------------------------------------------------------------------------- malformed input

GOOD = '{"text": "fine", "label": 0}'


@pytest.mark.parametrize(
    "bad_line,fragment",
    [
        ('{"text": "x", "label": 0', "not valid JSON"),
        ('{"label": 1, "extra": 2}', "missing field 'text'"),
        ('{"text": "x"}', "missing field 'label'"),
        ('{"text": "   ", "label": 1}', "empty"),
        ('{"text": "x", "label": 5}', "out of range"),
        ('{"text": "x", "label": -1}', "out of range"),
        ('{"text": "x", "label": "maybe"}', "unknown label name"),
        ('{"text": "x", "label": 1.5}', "label must be"),
        ('{"text": 3, "label": 1}', "must be a string"),
        ('{"text": "x", "label": 1, "poisoned": "perhaps"}', "poisoned"),
        ('["text", "label"]', "JSON object"),
    ],
)
def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path, bad_line: str, fragment: str) -> None:
    path = _write(tmp_path / "data.jsonl", "\n".join([GOOD, GOOD, "", GOOD, GOOD, GOOD, bad_line, GOOD]) + "\n")
    with pytest.raises(DataError) as info:
        load_task_data(path, label_names=["neg", "pos"])
    msg = str(info.value)
    assert "data.jsonl line 7:" in msg
    assert fragment in msg


def test_missing_field_lists_fields_present(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "data.jsonl", [{"sentence": "x", "label": 0}])
    with pytest.raises(DataError,
                       match=r"data\.jsonl line 1: missing field 'text' \(fields present: sentence, label\)"):
        load_task_data(path)


@pytest.mark.parametrize(
    "suffix,body,line,fragment",
    [
        (".csv", "text,label\na,0\nb,0,extra\n", 3, "3 values"),
        (".csv", "text,label\na,0\n\n,1\n", 4, "empty"),
        (".csv", "sentence,label\na,0\n", 2, "missing field 'text' (fields present: sentence, label)"),
        (".tsv", "text\tlabel\na\t0\nb\t7\n", 3, "out of range"),
        (".tsv", "text\tlabel\na\tpos\nb\t\n", 3, "empty"),
    ],
)
def test_malformed_delimited_rows(tmp_path: Path, suffix: str, body: str, line: int, fragment: str) -> None:
    path = _write(tmp_path / f"rows{suffix}", body)
    with pytest.raises(DataError) as info:
        load_task_data(path, label_names=["neg", "pos"] if "out of range" in fragment else None)
    assert f"rows{suffix} line {line}:" in str(info.value)
    assert fragment in str(info.value)


def test_mixed_names_and_ids_without_label_names(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "mix.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": 1}])
    with pytest.raises(DataError, match=r"mix\.jsonl line 2: .*mixes names"):
        load_task_data(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        load_task_data(tmp_path / "nope.jsonl")


def test_unknown_suffix_lists_supported(tmp_path: Path) -> None:
    path = _write(tmp_path / "data.txt", "hello\n")
    with pytest.raises(DataError) as info:
        load_task_data(path)
    msg = str(info.value)
    assert "data.txt" in msg and ".jsonl" in msg and ".csv" in msg and ".tsv" in msg


@pytest.mark.parametrize("name,body", [("e.jsonl", "\n\n"), ("e.csv", "text,label\n"), ("e.tsv", "")])
def test_file_without_samples(tmp_path: Path, name: str, body: str) -> None:
    path = _write(tmp_path / name, body)
    with pytest.raises(DataError, match=rf"{name}: no samples"):
        load_task_data(path)


def test_invalid_utf8_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "bin.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + b'{"text": "\xff", "label": 0}\n')
    with pytest.raises(DataError, match=r"bin\.jsonl line 2: not valid UTF-8"):
        load_task_data(path)


def test_bad_label_names_argument(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}])
    with pytest.raises(DataError, match="duplicates"):
        load_task_data(path, label_names=["a", "a"])
    with pytest.raises(DataError, match="empty"):
        load_task_data(path, label_names=[])


# --------------------------------------------------------------------------------------------- TaskData


def _task(n: int = 10) -> TaskData:
    return TaskData([Sample(f"t{i}", i % 2, i % 3 == 0, i) for i in range(n)], ["neg", "pos"], "x.jsonl")


def test_taskdata_helpers() -> None:
    td = _task(6)
    assert len(td) == 6
    assert td.texts == [f"t{i}" for i in range(6)]
    assert td.labels == [0, 1, 0, 1, 0, 1]
    sub = td.subset([4, 1])
    assert [s.index for s in sub.samples] == [4, 1]
    assert sub.label_names == td.label_names and sub.source == td.source
    clean = td.without_poisoned()
    assert [s.index for s in clean.samples] == [1, 2, 4, 5]
    with pytest.raises(DataError):
        td.subset([6])


def test_taskdata_rejects_label_outside_names() -> None:
    with pytest.raises(DataError, match="outside"):
        TaskData([Sample("a", 2)], ["neg", "pos"])


# --------------------------------------------------------------------------------------------- atomic write


def test_write_jsonl_is_atomic_on_unserialisable_sample(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write_jsonl(out, [Sample("old", 0)])
    before = out.read_bytes()
    bad = [Sample("a", 0), Sample("b", 1), Sample(object(), 0)]  # type: ignore[arg-type]
    with pytest.raises(DataError, match="sample 2"):
        write_jsonl(out, bad)
    assert out.read_bytes() == before  # old content untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no temp file left


def test_write_jsonl_is_atomic_when_dumps_raises_midway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "fresh.jsonl"
    real_dumps = json.dumps
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> str:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real_dumps(*args, **kwargs)

    monkeypatch.setattr(data_mod.json, "dumps", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_jsonl(out, [Sample(str(i), 0, None, i) for i in range(5)])
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_write_jsonl_is_atomic_when_iterable_fails(tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"

    def gen():
        yield Sample("a", 0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_jsonl(out, gen())
    assert list(tmp_path.iterdir()) == []


def test_write_jsonl_creates_folder_and_respects_umask(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "dir" / "o.jsonl"
    write_jsonl(out, [Sample("a", 0)])
    assert out.exists()
    old = os.umask(0o022)
    os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o666 & ~old


# --------------------------------------------------------------------------------------------- splitting


def _imbalanced(n: int = 103) -> list[Sample]:
    return [Sample(f"s{i}", 0 if i % 10 < 7 else (1 if i % 10 < 9 else 2), None, i) for i in range(n)]


def test_split_is_deterministic_for_a_seed() -> None:
    samples = _imbalanced()
    a = split_samples(samples, [0.6, 0.2, 0.2], seed=7)
    b = split_samples(samples, [0.6, 0.2, 0.2], seed=7)
    c = split_samples(samples, [0.6, 0.2, 0.2], seed=8)
    assert a == b
    assert a != c


def test_split_is_disjoint_and_complete() -> None:
    samples = _imbalanced()
    parts = split_samples(samples, [0.5, 0.3, 0.2], seed=1)
    seen = [s.index for part in parts for s in part]
    assert sorted(seen) == list(range(len(samples)))
    # 51.5/30.9/20.6 -> floors 51/30/20, two leftovers to the largest remainders
    assert [len(p) for p in parts] == [51, 31, 21]
    for part in parts:  # source order kept inside each part
        assert [s.index for s in part] == sorted(s.index for s in part)


def test_split_is_stratified() -> None:
    samples = _imbalanced(200)
    total = Counter(s.label for s in samples)
    train, test = split_samples(samples, [0.75, 0.25], seed=3)
    for label, n in total.items():
        in_test = sum(s.label == label for s in test)
        assert abs(in_test - n * 0.25) <= 1
    assert len(test) == 50


def test_split_of_many_singleton_labels_still_hits_sizes() -> None:
    samples = [Sample(f"s{i}", i, None, i) for i in range(10)]
    parts = split_samples(samples, [0.5, 0.5], seed=0)
    assert [len(p) for p in parts] == [5, 5]


def test_split_without_stratify_and_with_taskdata() -> None:
    td = _task(20)
    parts = split_samples(td, [0.7, 0.3], seed=2, stratify=False)
    assert [len(p) for p in parts] == [14, 6]
    assert sorted(s.index for p in parts for s in p) == list(range(20))


@pytest.mark.parametrize("fractions", [[0.5, 0.4], [1.2, -0.2], [], [float("nan"), 1.0]])
def test_split_rejects_bad_fractions(fractions: list[float]) -> None:
    with pytest.raises(DataError):
        split_samples(_imbalanced(), fractions, seed=0)


# --------------------------------------------------------------------------------------------- batching & tokenizing


def test_iter_batches_in_order_and_shuffled() -> None:
    td = _task(10)
    batches = list(iter_batches(td, 4))
    assert [[s.index for s in b] for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    s1 = [s.index for b in iter_batches(td.samples, 3, shuffle=True, seed=5) for s in b]
    s2 = [s.index for b in iter_batches(td.samples, 3, shuffle=True, seed=5) for s in b]
    assert s1 == s2 and sorted(s1) == list(range(10)) and s1 != list(range(10))
    assert td.samples == _task(10).samples  # caller's list not shuffled in place
    with pytest.raises(DataError):
        iter_batches(td, 0)


def test_loader_tolerates_raw_line_separator_inside_json_string(tmp_path: Path) -> None:
    path = tmp_path / "ls.jsonl"
    path.write_bytes('{"text": "a\u2028b", "label": 0}\n{"text": "c", "label": 1}\n'.encode("utf-8"))
    td = load_task_data(path)
    assert td.texts == ["a\u2028b", "c"]
