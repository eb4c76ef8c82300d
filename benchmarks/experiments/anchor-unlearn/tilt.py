"""Per-label answers of an entry's backdoored and zoo clean models on the trusted, clean test and training splits.

    PYTHONPATH=. python benchmarks/experiments/anchor-unlearn/tilt.py minilm-movie-badnets-p10-s0

The clean target rate is the share of non-target samples answered with the target; the training split's labels
are the poisoned ones (first 1000 samples).
"""
import sys

import numpy as np

from purify.zoo.build import entry_named
from purify.checkpoint import load_checkpoint
from purify.inference import predict

entry = entry_named(sys.argv[1])
for name, model_dir in [("backdoored", entry.model_dir), ("clean", entry.model_dir.parent / "clean_model")]:
    loaded = load_checkpoint(model_dir, task="classification")
    for split in ["trusted", "test_clean", "train"]:
        data = entry.load(split)
        texts = data.texts[:1000]
        labels = np.array(data.labels[:1000])
        pred = predict(loaded.model, loaded.tokenizer, texts)
        other = labels != entry.target
        print(f"{name} {split} n={len(labels)} accuracy {(pred == labels).mean():.3f} clean target rate "
              f"{(pred[other] == entry.target).mean():.3f} target recall {(pred[~other] == entry.target).mean():.3f}")
