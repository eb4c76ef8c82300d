"""How well the removed samples, as seeds, point at the poisoned samples the filter missed: per layer, the AUROC of
cos(mean-pooled hidden state, removed centroid) - cos(., kept target centroid) among the kept target-label samples,
and of a ridge classifier of the label fitted on the trusted split's states. Needs diag.py's cached filter result.

    PYTHONPATH=. python benchmarks/experiments/anchor-unlearn/seeded_similarity.py minilm-movie-style-p10-s0
"""
import pickle
import sys

import numpy as np
import torch

from purify.zoo.build import entry_named
from purify.cachedir import cache_root
from purify.checkpoint import load_checkpoint
from purify.inference import labelled_batch
from purify.metrics import auroc


def states(loaded, texts):
    """Mean-pooled hidden states of every layer (embeddings first): (samples, layers + 1, hidden)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            batch = labelled_batch(loaded.model, loaded.tokenizer, texts[i:i + 64], max_length=64)
            hidden = loaded.model(**batch, output_hidden_states=True).hidden_states
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append(np.stack([((h * mask).sum(1) / mask.sum(1)).float().numpy() for h in hidden], 1))
    return np.concatenate(out)


name = sys.argv[1]
entry = entry_named(name)
kept, probe = pickle.loads((cache_root() / "diag" / f"{name}.filter.pkl").read_bytes())
train, trusted = entry.load("train"), entry.load("trusted")
loaded = load_checkpoint(entry.model_dir, task="classification")
loaded.model.eval()
kept_index = {s.index for s in kept.samples}
X, Z = states(loaded, train.texts), states(loaded, trusted.texts)
labels, poisoned = np.array(train.labels), np.array([bool(s.poisoned) for s in train.samples])
removed = np.array([s.index not in kept_index for s in train.samples])
target = labels == probe.target
pool = target & ~removed
for layer in range(X.shape[1]):
    mu = X[:, layer].mean(0)
    unit = lambda A: (A - mu) / np.linalg.norm(A - mu, axis=1, keepdims=True)  # noqa: E731
    x, z = unit(X[:, layer]), unit(Z[:, layer])
    centroid = x @ x[removed & target].mean(0) - x @ x[pool].mean(0)
    design = np.c_[z, np.ones(len(z))]
    w = np.linalg.solve(design.T @ design + np.eye(design.shape[1]),
                        design.T @ (2.0 * (np.array(trusted.labels) == probe.target) - 1))
    ridge = -(np.c_[x, np.ones(len(x))] @ w)
    print(f"layer {layer}: seeded centroid AUROC {auroc(centroid[pool], poisoned[pool]):.3f}, trusted ridge AUROC "
          f"{auroc(ridge[pool], poisoned[pool]):.3f} ({poisoned[pool].sum()} poisoned among {pool.sum()} kept "
          "target-label samples)")
