"""Which weight matrix, and which model, should GradSentry differentiate? Measured on a zoo entry.

For every candidate matrix of the first, middle and last layers (plus pooler and classifier) this computes the
spectral entropy of every training sample's gradient, on the suspicious checkpoint and on a clean teacher trained
on the trusted validation split only, and reports how well it separates the entry's poisoned samples (ground truth
used for evaluation only): AUROC (poisoned = positive, higher entropy = more suspicious, as GradSentry flags), and
the recall a threshold keeping 97% of clean samples would reach (an oracle threshold, a ceiling for any rule).
Token length and the sample's loss are listed as gradient-free controls (the length-matched control of issue 6).

    python benchmarks/gradsentry_targets.py --entry minilm-movie-badnets-p10-s0 --out benchmarks/gradsentry_targets

writes `<out>/<entry>.json` and `.md`; cached per entry and gradient model (delete the JSON to re-measure).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from purify.checkpoint import LoadedModel, load_checkpoint
from purify.data import TaskData
from purify.splits import split_samples
from purify.filters.gradsentry import matrix_entropies
from purify.filters.per_sample import (PerSampleGradients, iter_gradients, layer_stack, resolve_matrix,
                                       sample_objective, token_lengths)
from purify.metrics import auroc
from purify.provenance import provenance
from purify.zoo.build import ZooSpec, build_entry

BERT_MODULES = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense")


def candidates(model) -> list[str]:
    """Candidate matrices: every BERT-style matrix of layers 0, the middle one, -2 and -1, plus pooler and head."""
    _, n = layer_stack(model)
    layers = sorted({0, n // 2, n - 2, n - 1})
    names = [resolve_matrix(model, f"L{i}.{m}") for i in layers for m in BERT_MODULES]
    params = dict(model.named_parameters())
    names += [p for p in ("bert.pooler.dense.weight", "classifier.weight") if p in params]
    return names


def recall_at_clean_kept(scores: np.ndarray, truth: np.ndarray, kept: float = 0.97) -> float:
    """Share of poisoned samples scoring above the `kept` quantile of the clean scores (oracle threshold)."""
    cut = np.quantile(scores[~truth], kept)
    return float(np.mean(scores[truth] > cut))


def entropies(loaded: LoadedModel, data: TaskData, names: list[str], *, batch_size: int = 16,
              top_k: int = 16) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Spectral entropy of every sample's gradient for each matrix, and the per-sample loss."""
    computer = PerSampleGradients(loaded.model, names, sample_objective(loaded))
    out = {n: np.zeros(len(data)) for n in names}
    losses = np.zeros(len(data))
    for b, (positions, grads, values) in enumerate(iter_gradients(loaded, data, computer, batch_size=batch_size,
                                                                  description="gradient spectra")):
        for n in names:
            out[n][positions] = matrix_entropies(grads[n], k=top_k, seed=b).numpy()
        losses[positions] = values.float().numpy()
    return out, losses


def clean_teacher(entry, trusted: TaskData, seed: int = 0) -> LoadedModel:
    """A MiniLM-L6 teacher (same tokenizer as the entry) fine-tuned on the trusted split alone (80/20)."""
    from teachers.training import train

    fit, val = split_samples(trusted, [0.8, 0.2], seed=seed)
    return train("minilm-l6", TaskData(fit, trusted.label_names), TaskData(val, trusted.label_names), seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entry", default="minilm-movie-badnets-p10-s0")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/gradsentry_targets"))
    parser.add_argument("--models", default="suspicious,teacher,clean_reference",
                        help="comma list of suspicious, teacher (MiniLM-L6 tuned on the trusted split), "
                             "clean_reference (the zoo's clean model: an oracle no user has)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    entry = build_entry(ZooSpec.parse(args.entry))
    data = entry.load("train")
    truth = np.array([bool(s.poisoned) for s in data.samples])
    rows = []
    for kind in args.models.split(","):
        cache = args.out / f"{args.entry}.{kind}.json"
        if cache.exists():
            rows += json.loads(cache.read_text())["rows"]
            continue
        if kind == "teacher":
            loaded = clean_teacher(entry, entry.load("validation"))
        else:
            loaded = load_checkpoint(entry.model_dir if kind == "suspicious" else entry.clean_model_dir)
        names = candidates(loaded.model)
        started = time.time()
        scores, losses = entropies(loaded, data, names)
        seconds = time.time() - started
        lengths = token_lengths(loaded, data).astype(float)
        part = [{"model": kind, "score": f"entropy {n}", "auroc": auroc(s, truth),
                 "recall_at_97": recall_at_clean_kept(s, truth), "recall_at_97_low": recall_at_clean_kept(-s, truth),
                 "mean_clean": float(s[~truth].mean()), "mean_poisoned": float(s[truth].mean())}
                for n, s in scores.items()]
        for label, s in (("loss (control)", losses), ("token length (control)", lengths)):
            part.append({"model": kind, "score": label, "auroc": auroc(s, truth),
                         "recall_at_97": recall_at_clean_kept(s, truth),
                         "recall_at_97_low": recall_at_clean_kept(-s, truth),
                         "mean_clean": float(s[~truth].mean()), "mean_poisoned": float(s[truth].mean())})
        cache.write_text(json.dumps({"entry": args.entry, "model": kind, "seconds": seconds, "rows": part,
                                     **provenance()}, indent=2) + "\n")
        rows += part
    lines = [f"# GradSentry target survey: {args.entry}", "", "Produced by:", "",
             f"    python benchmarks/gradsentry_targets.py --entry {args.entry} --models {args.models}", "",
             f"{len(data)} training samples, {int(truth.sum())} poisoned (ground truth used only to score). "
             "AUROC: higher entropy = more suspicious (below 0.5: poisoned samples have the LOWER entropy). "
             "recall@97: recall of a threshold at the 97th percentile of the clean scores (oracle ceiling); "
             "recall@97 low: the same when the LOW end is flagged.", "",
             "| model | score | AUROC | recall@97 | recall@97 low | mean clean | mean poisoned |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['score']} | {r['auroc']:.3f} | {r['recall_at_97']:.3f} | "
                     f"{r.get('recall_at_97_low', float('nan')):.3f} | "
                     f"{r['mean_clean']:.4g} | {r['mean_poisoned']:.4g} |")
    (args.out / f"{args.entry}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
