"""Copy each suite's table from benchmarks/<suite>.md into README.md, between its `<!-- bench:SUITE -->` markers.

`purify bench` writes benchmarks/<suite>.md and leaves the README alone; run this afterwards to refresh the README:

    python benchmarks/readme_tables.py [SUITE ...]
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!-- bench:([a-z0-9_]+) -->")


def suite_table(markdown: str) -> str:
    """The part of a suite's markdown below its header (title, command, machine line): the table and its notes."""
    parts = markdown.split("\n\n", 4)
    if len(parts) < 5 or not parts[3].startswith("Machine:"):
        raise ValueError("not a `purify bench` markdown file (no 'Machine:' paragraph after the command)")
    return parts[4]


def replace_block(readme: str, suite: str, table: str) -> str:
    """`readme` with the text between the suite's markers replaced by `table`."""
    start, end = f"<!-- bench:{suite} -->", f"<!-- /bench:{suite} -->"
    if start not in readme or end not in readme:
        raise ValueError(f"README.md has no {start} ... {end} block")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{table.rstrip()}\n{end}{tail}"


def refresh(readme_path: Path, bench_dir: Path, suites: list[str] | None = None) -> list[str]:
    """Refresh the README's blocks (every marked suite, or `suites`); the names of the blocks rewritten."""
    readme = readme_path.read_text()
    chosen = suites or MARKER.findall(readme)
    for suite in chosen:
        source = bench_dir / f"{suite}.md"
        if not source.is_file():
            raise FileNotFoundError(f"{source}: no such file (run `purify bench --suite {suite}` first)")
        readme = replace_block(readme, suite, suite_table(source.read_text()))
    tmp = readme_path.with_suffix(".md.tmp")
    tmp.write_text(readme)
    tmp.replace(readme_path)
    return chosen


if __name__ == "__main__":
    try:
        done = refresh(ROOT / "README.md", ROOT / "benchmarks", sys.argv[1:] or None)
    except (OSError, ValueError) as exc:
        sys.exit(f"readme_tables: {exc}")
    print(f"README.md: refreshed {', '.join(done)}")
