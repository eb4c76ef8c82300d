"""Hostile inputs against the `purify` command line, each case in its own process, tallied into one table.

    python benchmarks/robustness.py [--subprocess] [--interrupts benchmarks/interrupts.json] [--out FILE]

Every case of the probe kit (`purify.testing.hostile.all_cases()`: outputs, loading, inputs) lays out its files in
a fresh folder and runs its `purify` command there: through `purify.cli.main` in this process (an exception that
escapes main is a traceback), or with `--subprocess` as `python -m purify.cli ...` in its own process (a traceback
is any "Traceback (most recent call last)" on stderr; about 5 s more per case for the imports). A case is refused
cleanly when it exits 2 and the last line of stderr is one `purify: error: ...` line; data lost is any protected
input whose bytes changed or vanished. The interrupt rows come from the JSON that
`benchmarks/interrupts.py --json` writes (SIGINT and SIGKILL at each stage of a real run, the overwrite swap
included).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from purify.provenance import git_hash  # noqa: E402
from purify.testing.hostile import AREAS, Case, Outcome, all_cases, fingerprint, lost_files, run_case  # noqa: E402

CASE_TIMEOUT = 300
INTERRUPT_COLUMNS = ("stage", "signal", "destination", "after_collection", "inputs_intact", "next_export_ok", "ok")


def run_in_process(case: Case, tmp: Path) -> tuple[Outcome, float]:
    """Build `case` under `tmp`, run it as `python -m purify.cli` in a subprocess; (outcome, seconds)."""
    argv = case.build(tmp)
    before = fingerprint(tmp, case.protected)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PURIFY_QUIET": "1"}
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "purify.cli", *argv], cwd=tmp, env=env, capture_output=True,
                              text=True, timeout=CASE_TIMEOUT, stdin=subprocess.DEVNULL)
        code, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, stderr = -9, f"timed out after {CASE_TIMEOUT} s\n{exc.stderr or ''}"
    seconds = time.perf_counter() - started
    escaped = "Traceback (most recent call last)" in stderr
    outcome = Outcome(case.name, code, stderr, escaped, lost_files(before, fingerprint(tmp, case.protected)))
    return outcome, seconds


def area_of(case: Case, areas: dict[str, set[str]]) -> str:
    return next((area for area, names in areas.items() if case.name in names), "?")


def run_here(case: Case, tmp: Path) -> tuple[Outcome, float]:
    """`case` through `purify.cli.main` in this process; (outcome, seconds)."""
    started = time.perf_counter()
    outcome = run_case(case, tmp)
    return outcome, time.perf_counter() - started


def run_all(runner=run_here) -> list[dict]:
    """One row per case: area, name, expectation, exit code, one-line refusal, traceback, data lost, pass."""
    import importlib

    areas = {a: {c.name for c in importlib.import_module(f"purify.testing.hostile.{a}").CASES} for a in AREAS}
    rows = []
    for case in all_cases():
        with tempfile.TemporaryDirectory(prefix="purify-robustness-") as tmp:
            outcome, seconds = runner(case, Path(tmp))
        last = next((line for line in reversed(outcome.stderr.strip().splitlines()) if line.strip()), "")
        rows.append({"area": area_of(case, areas), "case": case.name, "expect": case.expect,
                     "exit_code": outcome.exit_code, "traceback": outcome.traceback, "lost": outcome.lost,
                     "one_line_refusal": outcome.exit_code == 2 and last.startswith("purify: error:"),
                     "message": last[:160], "passed": outcome.ok_for(case), "seconds": round(seconds, 1)})
        print(f"{'ok  ' if rows[-1]['passed'] else 'FAIL'} {case.name} ({seconds:.1f} s): {last[:100]}",
              file=sys.stderr)
    return rows


def markdown(rows: list[dict], interrupts: list[dict] | None, command: str, subprocess_mode: bool) -> str:
    """The summary table per area, the failures in full, and the interrupt rows."""
    mode = ("Each case ran as `python -m purify.cli` in its own process." if subprocess_mode else
            "Each case ran through `purify.cli.main` in one process (an exception escaping main counts as a "
            "traceback).")
    lines = [f"# Robustness: hostile inputs and interrupts\n\nProduced by:\n\n    {command}\n\n"
             f"git {git_hash()}. {mode}\n",
             "| area | cases | expected to be refused | refused with a one-line error | ran as expected (ok cases) "
             "| tracebacks | data lost | passed |", "|---|---|---|---|---|---|---|---|"]
    for area in [*AREAS, "all"]:
        rs = rows if area == "all" else [r for r in rows if r["area"] == area]
        refused = [r for r in rs if r["expect"] == "refused"]
        ok_cases = [r for r in rs if r["expect"] == "ok"]
        lines.append(f"| {area} | {len(rs)} | {len(refused)} | {sum(r['one_line_refusal'] for r in refused)} | "
                     f"{sum(r['exit_code'] == 0 for r in ok_cases)}/{len(ok_cases)} | "
                     f"{sum(r['traceback'] for r in rs)} | {sum(bool(r['lost']) for r in rs)} | "
                     f"{sum(r['passed'] for r in rs)} |")
    failed = [r for r in rows if not r["passed"]]
    lines += ["", f"Failed cases: {len(failed)}."]
    lines += [f"- `{r['case']}`: exit {r['exit_code']}, traceback {r['traceback']}, lost {r['lost']}: "
              f"{r['message']}" for r in failed]
    if interrupts:
        outcomes = Counter(bool(r.get("ok")) for r in interrupts)
        lines += ["", "## Interrupts", "", f"{len(interrupts)} interrupt points tried, {outcomes[True]} left the "
                  "old or the new export whole with the inputs intact and a true message (from "
                  "benchmarks/interrupts.json; details in benchmarks/interrupts.md).", "",
                  "| " + " | ".join(INTERRUPT_COLUMNS) + " |", "|" + "---|" * len(INTERRUPT_COLUMNS)]
        lines += ["| " + " | ".join(str(r.get(k)) for k in INTERRUPT_COLUMNS) + " |" for r in interrupts]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interrupts", type=Path, help="the JSON written by benchmarks/interrupts.py --json")
    parser.add_argument("--out", type=Path, help="write the markdown here (printed either way)")
    parser.add_argument("--json", type=Path, help="also write every case's row as JSON here")
    parser.add_argument("--subprocess", action="store_true", help="run each case as its own `python -m purify.cli`")
    args = parser.parse_args()
    rows = run_all(run_in_process if args.subprocess else run_here)
    interrupts = json.loads(args.interrupts.read_text()) if args.interrupts else None
    if isinstance(interrupts, dict):
        interrupts = interrupts.get("rows")
    command = "python benchmarks/robustness.py " + " ".join(sys.argv[1:])
    text = markdown(rows, interrupts, command, args.subprocess)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
