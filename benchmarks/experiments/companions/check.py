"""The companion test on a zoo entry, given the triggers insertion confirmed: every tested word and its evidence.

    python benchmarks/experiments/companions/check.py ENTRY TRIGGER[,TRIGGER...] TARGET

The base rate is the model's target rate, with nothing inserted, on the other-label samples the test inserts into
(the filter passes its inversion's rate on its own probe instead). Columns: word, target samples holding a trigger
and it, target samples holding it and no trigger, co-occurrence z, single-word flip rate, insertion z, confirmed.
"""
from __future__ import annotations

import random
import sys

import numpy as np

from purify.checkpoint import load_checkpoint
from purify.companions import find_companions
from purify.inference import predict
from purify.probe import TriggerCandidate
from purify.zoo.build import entry_named


def main(entry_name: str, triggers: str, target_text: str) -> None:
    entry = entry_named(entry_name)
    loaded = load_checkpoint(entry.model_dir)
    data = entry.load("train")
    target = int(target_text)
    pool = [s.text for s in data.samples if s.label != target]
    probe = random.Random(0).sample(pool, min(64, len(pool)))  # the probe find_companions draws with seed 0
    base_rate = float(np.mean(predict(loaded.model, loaded.tokenizer, probe) == target))
    candidates = [TriggerCandidate(t, target, 1.0, "inversion") for t in triggers.split(",")]
    found = find_companions(loaded.model, loaded.tokenizer, data, candidates, target, base_rate,
                            min_count=5, min_z=3.0, limit=16, probe_samples=64, seed=0)
    print(f"# {entry_name}: triggers {triggers}, target {target}, base rate {base_rate:.3f}")
    for c in found:
        print(c.word, c.with_trigger, c.without_trigger, c.cooccurrence_z, round(c.flip_rate, 3), c.insertion_z,
              c.confirmed)


if __name__ == "__main__":
    main(*sys.argv[1:4])
