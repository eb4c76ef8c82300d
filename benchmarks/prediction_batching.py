"""Prediction time with texts batched in input order versus batched by length (purify.inference.predict_logits).

    python benchmarks/prediction_batching.py [--entry minilm-movie-badnets-p10-s0] [--texts 512] [--repeats 3]

Writes benchmarks/prediction_batching.md with the timings and checks both give the same labels.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from purify.zoo.build import entry_named
from purify.checkpoint import load_checkpoint
from purify.inference import labelled_batch, predict_logits


@torch.no_grad()
def in_input_order(model, tokenizer, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """What predict_logits did before: consecutive batches, each padded to its longest text."""
    return torch.cat([model(**labelled_batch(model, tokenizer, texts[i:i + batch_size])).logits.float()
                      for i in range(0, len(texts), batch_size)]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entry", default="minilm-movie-badnets-p10-s0")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    entry = entry_named(args.entry)
    loaded = load_checkpoint(entry.model_dir)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    texts = entry.load("validation").texts[:args.texts]
    rows = []
    for _ in range(args.repeats):
        started = time.time()
        a = in_input_order(model, tokenizer, texts)
        old = time.time() - started
        started = time.time()
        b = predict_logits(model, tokenizer, texts)
        new = time.time() - started
        assert (a.argmax(-1) == b.argmax(-1)).all(), "length batching changed a prediction"
        rows.append((old, new))
        print(f"input order {old:.1f} s, by length {new:.1f} s", flush=True)
    old, new = np.median([r[0] for r in rows]), np.median([r[1] for r in rows])
    out = Path(__file__).with_suffix(".md")
    out.write_text(
        "# Prediction batching\n\nProduced by:\n\n    python benchmarks/prediction_batching.py\n\n"
        f"{len(texts)} validation texts of {args.entry}, batches of 64, 1 CPU thread, {args.repeats} repeats "
        "(median); identical predicted labels.\n\n| batching | seconds |\n|---|---|\n"
        f"| input order | {old:.1f} |\n| by length | {new:.1f} |\n\nSpeed-up: {old / new:.2f}x\n")
    print(f"speed-up {old / new:.2f}x -> {out}")


if __name__ == "__main__":
    main()
