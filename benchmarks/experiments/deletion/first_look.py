"""The first look at the deletion test: for each mined label-pure phrase (purify.phrases, 64 per label), strip it
from its label's carriers and compare the suspicious model's rate of that label with the trusted midpoint. Reads the
poisoned flags to count them (a diagnosis, not a filter). Prints, per entry, the flagged phrases and those whose
carriers are mostly poisoned, then the entry's summary line.

    PYTHONPATH=. python benchmarks/experiments/deletion/first_look.py ENTRY [ENTRY ...]
"""
import sys
import time

import numpy as np
import torch

from purify.zoo.build import entry_named
from purify.checkpoint import load_checkpoint
from purify.inference import predict
from purify.phrases import holders_of, mine_phrases
from purify.probe import TriggerCandidate, strip_triggers

torch.set_num_threads(1)
for name in sys.argv[1:]:
    started = time.time()
    entry = entry_named(name)
    train, trusted = entry.load("train"), entry.load("trusted")
    loaded = load_checkpoint(entry.model_dir, task="classification")
    loaded.model.eval()
    labels, poisoned = np.array(train.labels), np.array([s.poisoned for s in train.samples])
    trusted_pred, trusted_labels = predict(loaded.model, loaded.tokenizer, trusted.texts), np.array(trusted.labels)
    phrases = mine_phrases(train, per_label=64)
    flagged = np.zeros(len(labels), bool)
    for phrase in phrases:
        idx = np.flatnonzero(holders_of(train, phrase) & (labels == phrase.label))
        candidate = TriggerCandidate(phrase.text, phrase.label, 1.0, "phrases")
        texts = [strip_triggers(train.samples[i].text, [candidate]) for i in idx]
        rate = np.mean(predict(loaded.model, loaded.tokenizer, texts) == phrase.label)
        own = np.mean(trusted_pred[trusted_labels == phrase.label] == phrase.label)
        others = np.mean(trusted_pred[trusted_labels != phrase.label] == phrase.label)
        mid = (own + others) / 2
        hit = rate < mid
        flagged |= np.isin(np.arange(len(labels)), idx) & hit
        if hit or poisoned[idx].mean() > 0.5:
            print(f"  {phrase.text!r:40} l={phrase.label} n={len(idx)} poisoned={poisoned[idx].sum()} "
                  f"stripped_rate={rate:.2f} mid={mid:.2f} {'FLAG' if hit else ''}")
    print(f"{name} phrases={len(phrases)} flagged={flagged.sum()} poisoned_flagged={(flagged & poisoned).sum()}/"
          f"{poisoned.sum()} clean_flagged={(flagged & ~poisoned).sum()} {time.time() - started:.0f}s", flush=True)
