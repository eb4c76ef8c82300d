"""Screened trigger inversion against the exhaustive one, on zoo entries: same triggers, same flagged samples?

    python benchmarks/inversion_screen.py --zoo minilm-movie-badnets-p10-s0 --out benchmarks/inversion_screen.md

Both run in one process on the same model and data (exhaustive first, then screened), so the time ratio survives a
busy machine. The flagged set is the trigger_words filter's rule: suspected-target samples holding a word that
flips at least 90% of the probe.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from purify.zoo.build import entry_named
from purify.checkpoint import load_checkpoint
from purify.inversion import SCREEN_SAMPLES, invert_triggers
from purify.provenance import provenance

RATE = 0.9


def measure(entry_name: str) -> dict:
    entry = entry_named(entry_name)
    loaded = load_checkpoint(entry.model_dir, task="classification")
    train = entry.load("train")
    out = {"entry": entry_name}
    for name, screen in (("exhaustive", 0), ("screened", SCREEN_SAMPLES)):
        started = time.perf_counter()
        inv = invert_triggers(loaded.model, loaded.tokenizer, train, samples=64, candidates=48, keep=8,
                              keep_above=RATE, seed=0, max_length=128, screen=screen)
        seconds = time.perf_counter() - started
        flagged = inv.carrier_rates(train) >= RATE
        out[name] = {"seconds": round(seconds, 1), "target": inv.suspected_target,
                     "triggers": sorted(inv.trigger_words(RATE)), "flagged": np.flatnonzero(flagged).tolist()}
    out["same_triggers"] = out["exhaustive"]["triggers"] == out["screened"]["triggers"]
    out["same_flagged"] = out["exhaustive"]["flagged"] == out["screened"]["flagged"]
    out["time_ratio"] = round(out["screened"]["seconds"] / out["exhaustive"]["seconds"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = [measure(e) for e in args.zoo]
    lines = ["# Screened vs exhaustive trigger inversion", "",
             "Command: `python benchmarks/inversion_screen.py --zoo " + " ".join(args.zoo) + f" --out {args.out}`", "",
             "| entry | exhaustive s | screened s | ratio | triggers (exhaustive) | same triggers | same flagged "
             "samples (count) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['entry']} | {r['exhaustive']['seconds']} | {r['screened']['seconds']} | {r['time_ratio']} "
                     f"| {', '.join(r['exhaustive']['triggers']) or '-'} | {r['same_triggers']} | "
                     f"{r['same_flagged']} ({len(r['exhaustive']['flagged'])}) |")
    args.out.write_text("\n".join(lines) + "\n")
    for r in rows:
        for k in ("exhaustive", "screened"):
            r[k]["flagged"] = len(r[k]["flagged"])
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "provenance": provenance()}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
