"""The zdef filter on cached zoo entries' training splits: recall of the poisoned samples and share of clean kept.

    python benchmarks/experiments/zdef/check.py [--set key=value ...] [ENTRY ...]

It reads only data (the model argument is ignored, so none is loaded): the untrusted training split, and the
entry's validation split as the trusted clean data, as the filter bench passes it; a row "no trusted" runs without
it. The poisoned flags are read only here, to score the result. Entries are opened, never built.
"""
from __future__ import annotations

import sys

import numpy as np

from purify.filters import build_filter
from purify.zoo.build import open_entry

ENTRIES = [f"minilm-movie-{a}-p10-s0" for a in ("badnets", "insertsent", "syntactic", "style", "clean_label")]


def _row(name: str, setting: str, options: dict[str, str], trusted: bool) -> str:
    entry = open_entry(name)
    data = entry.load("train")
    trusted_data = entry.load("validation") if trusted else None
    result = build_filter("zdef", options).run(None, data, trusted_data)  # type: ignore[arg-type]  # no model read
    poisoned = np.array([bool(s.poisoned) for s in data.samples])
    recall = float(result.flagged[poisoned].mean()) if poisoned.any() else float("nan")
    kept = float((~result.flagged[~poisoned]).mean())
    top = ", ".join(f"{r['feature']}->{r['label']} {r['z']:.1f}" for r in result.details["suspicious"][:4])
    return (f"{name:34s} {setting:10s} line {result.threshold:6.2f}  removed {len(result.removed):4d}  "
            f"recall {recall:.3f}  clean kept {kept:.3f}  {result.seconds:5.2f}s  top: {top}")


def main(argv: list[str]) -> None:
    options: dict[str, str] = {}
    names: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--set":
            key, _, value = next(args).partition("=")
            options[key] = value
        else:
            names.append(arg)
    print(f"# zdef options {options or 'defaults'}")
    for name in names or ENTRIES:
        for setting, trusted in (("trusted", True), ("no trusted", False)):
            print(_row(name, setting, options, trusted), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
