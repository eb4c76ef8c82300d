"""Interrupting `purify run`: SIGINT and SIGKILL at each stage of a real tiny run that replaces an earlier export.

    python benchmarks/interrupts.py [--json benchmarks/interrupts.json] [--out benchmarks/interrupts.md]

Each run is `purify run` on a tiny random bert checkpoint (purify.testing.tiny) and a 40-line data file with
`--strategy gradient_prune --filter none --overwrite`, replacing an export of the same inputs. The test hook
PURIFY_TEST_PAUSE_AT=<stage> makes purify print "purify: paused at <stage>" and sleep there (purify/outputs.py),
and the signal is sent on that line: during load, during the strategy, with the new export staged beside the old
one, and between the two renames of the swap. Then: is the destination absent, the old export whole, or the new one
whole (it verifies and its report has the new seed); are the inputs byte for byte as they were; what does a later
export's collection of leftovers (purify.outputs.collect_stale, run first by every export) restore or delete; and
does the next `purify run --overwrite` succeed with nothing left beside the destination.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from purify.export import REPORT_FILE, verify  # noqa: E402
from purify.outputs import PAUSE_ENV, PAUSE_STAGES, collect_stale  # noqa: E402
from purify.provenance import git_hash  # noqa: E402
from purify.testing.tiny import save_tiny_checkpoint, tiny_texts  # noqa: E402

SIGNALS = {"SIGINT": signal.SIGINT, "SIGKILL": signal.SIGKILL}
PAUSE_SECONDS = 8  # long enough for the signal to land; a held SIGINT (the swap) waits this out


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def make_inputs(root: Path) -> tuple[Path, Path]:
    model = save_tiny_checkpoint("bert", root / "inputs" / "model")
    texts = tiny_texts()
    data = root / "inputs" / "data.jsonl"
    data.write_text("".join(json.dumps({"text": texts[i % len(texts)], "label": i % 2}) + "\n" for i in range(40)))
    return model, data


def purify_run(model: Path, data: Path, out: Path, seed: int, *, pause: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PURIFY_QUIET": "1"}
    env.pop(PAUSE_ENV, None)
    if pause:
        env[PAUSE_ENV] = f"{pause}:{PAUSE_SECONDS}"
    argv = [sys.executable, "-m", "purify.cli", "run", str(model), "--data", str(data), "--out", str(out),
            "--strategy", "gradient_prune", "--filter", "none", "--seed", str(seed), "--overwrite"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def interrupted_run(model: Path, data: Path, out: Path, stage: str, sig: int) -> tuple[str, str]:
    """Run with the pause hook at `stage`, send `sig` when purify says it paused; (outcome, last stderr line)."""
    proc = purify_run(model, data, out, seed=1, pause=stage)
    lines: list[str] = []
    sent = False
    for line in proc.stderr:
        lines.append(line.rstrip())
        if not sent and f"paused at {stage}" in line:
            proc.send_signal(sig)
            sent = True
    code = proc.wait(timeout=300)
    last = next((ln for ln in reversed(lines) if ln.startswith("purify:") and "paused at" not in ln), "")
    last = last.replace(str(out.parent.parent), "$WORK")  # the run's temporary folder, not worth printing
    if not sent:
        return f"never paused (exit {code})", last
    return (f"killed ({signal.Signals(-code).name})" if code < 0 else f"exit {code}"), last


def destination_state(out: Path, old: dict[str, str], new_seed: int) -> str:
    if not out.exists():
        return "absent"
    if snapshot(out) == old:
        return "old export whole"
    try:
        ok = verify(out).ok and json.loads((out / REPORT_FILE).read_text()).get("seed") == new_seed
    except Exception as exc:  # noqa: BLE001 - a broken folder is exactly what this looks for
        return f"broken ({type(exc).__name__})"
    return "new export whole" if ok else "broken"


def leftovers(parent: Path, out: Path, old: dict[str, str]) -> list[str]:
    """Names beside the destination, the old export's aside copy marked as such."""
    names = []
    for path in sorted(parent.iterdir()):
        if path == out:
            continue
        whole = path.is_dir() and ".old-" in path.name and snapshot(path) == old
        names.append(re.sub(r"[0-9a-f]{8}", "*", path.name) + (" (old export, whole)" if whole else ""))
    return names


def message_is_true(state: str, message: str) -> bool:
    """The interrupt line must match what is at the destination (SIGKILL prints nothing)."""
    if not message:
        return True
    if state == "new export whole":
        return "already complete" in message
    return "nothing was written" in message or "still holds the previous export" in message


def scenario(work: Path, model: Path, data: Path, pristine: Path, old: dict[str, str], inputs: dict[str, str],
             stage: str, sig_name: str) -> dict:
    parent = work / f"{stage}-{sig_name.lower()}"
    parent.mkdir()
    out = parent / "sanitized"
    shutil.copytree(pristine, out)
    started = time.time()
    outcome, message = interrupted_run(model, data, out, stage, SIGNALS[sig_name])
    state = destination_state(out, old, new_seed=1)
    left = leftovers(parent, out, old)
    intact = snapshot(model.parent) == inputs
    collected = collect_stale(parent)
    after = destination_state(out, old, new_seed=1)
    nxt = purify_run(model, data, out, seed=2)
    _, err = nxt.communicate(timeout=300)
    next_ok = nxt.returncode == 0 and destination_state(out, old, 2) == "new export whole" and \
        [p.name for p in parent.iterdir()] == [out.name]
    allowed = {"absent", "old export whole", "new export whole"}
    ok = (state in allowed and after in ("old export whole", "new export whole") and intact and next_ok
          and message_is_true(state, message) and (sig_name == "SIGKILL" or state != "absent"))
    return {"stage": stage, "signal": sig_name, "outcome": outcome, "message": message, "destination": state,
            "beside": left, "collected": [c.split(" ")[0] for c in collected], "after_collection": after,
            "inputs_intact": intact, "next_export_ok": next_ok, "ok": ok, "seconds": round(time.time() - started, 1),
            "next_export_error": None if next_ok else err.strip().splitlines()[-1:]}


def markdown(rows: list[dict], command: str) -> str:
    lines = ["# Interrupting `purify run`", "", "Produced by:", "", f"    {command}", "",
             f"purify git hash: `{git_hash()}`", "",
             "A tiny bert checkpoint and 40 samples, `purify run --strategy gradient_prune --filter none --overwrite "
             "--seed 1` replacing an earlier export of the same inputs; the signal is sent when "
             f"`{PAUSE_ENV}=<stage>` makes purify pause at that stage. *After collection*: the destination once the "
             "leftovers of the dead run are collected (what every later export does first); *next export*: a "
             "following `purify run --overwrite` succeeds and leaves nothing beside the destination.", "",
             "| stage | signal | outcome | destination state | left beside it | after collection | inputs intact "
             "| next export | ok |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        outcome = r["outcome"] + (f": `{r['message']}`" if r["message"] else "")
        lines.append(f"| {r['stage']} | {r['signal']} | {outcome} | {r['destination']} | "
                     f"{', '.join(r['beside']) or '-'} | {r['after_collection']} | "
                     f"{'yes' if r['inputs_intact'] else 'NO'} | {'ok' if r['next_export_ok'] else 'FAILED'} | "
                     f"{'yes' if r['ok'] else 'NO'} |")
    n_ok = sum(r["ok"] for r in rows)
    lines += ["", f"{n_ok} of {len(rows)} interrupts left the old or the new export whole, the inputs intact and "
              "a truthful message.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--out", type=Path, help="write the markdown table here (it is printed either way)")
    parser.add_argument("--stages", default=",".join(PAUSE_STAGES), help="comma-separated pause stages")
    args = parser.parse_args()
    command = "python benchmarks/interrupts.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="purify-interrupts-") as tmp:
        work = Path(tmp)
        model, data = make_inputs(work)
        inputs = snapshot(model.parent)
        pristine = work / "pristine"
        first = purify_run(model, data, pristine, seed=0)
        _, err = first.communicate(timeout=300)
        if first.returncode != 0:
            print(f"the first export failed: {err.strip()[-500:]}", file=sys.stderr)
            return 1
        old = snapshot(pristine)
        rows = [scenario(work, model, data, pristine, old, inputs, stage, sig)
                for stage in args.stages.split(",") for sig in SIGNALS]
    text = markdown(rows, command.strip())
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"command": command.strip(), "rows": rows}, indent=2) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
