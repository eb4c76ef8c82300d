"""The default filter (trigger_words, with its deletion test) on zoo entries: recall and clean kept against the
ground-truth flags (read only here, to score), how many samples the deletion test added, and the seconds.

    PYTHONPATH=. python benchmarks/experiments/deletion/filter_table.py ENTRY [ENTRY ...] [OPTION=VALUE ...]

OPTION=VALUE arguments are trigger_words options (for example deletion_joint=true).
"""
import sys
import time

import numpy as np

from purify.zoo.build import entry_named
from purify.checkpoint import load_checkpoint
from purify.filters import build_filter
from purify.metrics import detection_metrics

options = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
entries = [a for a in sys.argv[1:] if "=" not in a]
print(f"options: {options or 'defaults'}")
print("| entry | removed | recall | clean kept | confirmed by deletion (label, position, carriers) | seconds |")
print("|---|---|---|---|---|---|")
for name in entries:
    entry = entry_named(name)
    train, trusted = entry.load("train"), entry.load("trusted")
    loaded = load_checkpoint(entry.model_dir, task="classification")
    started = time.time()
    result = build_filter("trigger_words", options).run(loaded, train, trusted)
    seconds = time.time() - started
    truth = np.array([bool(s.poisoned) for s in train.samples])
    m = detection_metrics(result.scores, truth, result.flagged)
    confirmed = [f"{r['text']!r} ({r['label']}, {r['position']}, {r['carriers']})"
                 for r in result.details["deletion_tested"] if r["confirmed"]]
    print(f"| {name} | {int(result.flagged.sum())} | {m['recall']:.3f} | {m['clean_kept']:.3f} | "
          f"{'; '.join(confirmed) or 'none'} | {seconds:.0f} |", flush=True)
