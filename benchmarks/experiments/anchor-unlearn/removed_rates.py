"""The backdoored model's target rate on the samples the filter removed, stripped of the probe's triggers and as
they came (the evidence `flagged_check` reads). Needs diag.py's cached filter result for each entry.

    PYTHONPATH=. python benchmarks/experiments/anchor-unlearn/removed_rates.py ENTRY...
"""
import dataclasses
import pickle
import sys


from purify.zoo.build import entry_named
from purify.cachedir import cache_root
from purify.checkpoint import load_checkpoint
from purify.inference import predict

for name in sys.argv[1:]:
    entry = entry_named(name)
    kept, probe = pickle.loads((cache_root() / "diag" / f"{name}.filter.pkl").read_bytes())
    train = entry.load("train")
    kept_index = {s.index for s in kept.samples}
    probe = dataclasses.replace(probe, flagged=train.subset([i for i, s in enumerate(train.samples)
                                                             if s.index not in kept_index]))
    loaded = load_checkpoint(entry.model_dir, task="classification")
    poisoned = sum(bool(s.poisoned) for s in probe.flagged.samples)
    for which in ("stripped", "triggered"):
        texts = probe.flagged_texts(which)
        rate = (predict(loaded.model, loaded.tokenizer, texts) == probe.target).mean()
        print(f"{name} removed {len(probe.flagged)} ({poisoned} poisoned) {which}: target rate {rate:.3f}")
    print(f"{name} flagged_check {probe.flagged_relabelled(loaded.model, loaded.tokenizer, entry.load('trusted'))}")
