"""Diagnostic (not a benchmark): anchor_unlearn on a zoo entry in the realistic setting, with test ASR per epoch.

The filter's kept set and probe are cached per entry (a pickle this script wrote itself, under the purify cache)
so that several option sets can be compared. Usage: diag.py ENTRY '{"option": value, ...}'
"""
import dataclasses
import json
import pickle
import sys
import time

from purify.zoo.build import entry_named
from purify.cachedir import cache_root
from purify.pipeline import run_filter
from purify.checkpoint import load_checkpoint
from purify.evaluate import evaluate_model
from purify.registry import build_strategy
import strategies.anchor_unlearn as au

entry_name, options = sys.argv[1], json.loads(sys.argv[2])
entry = entry_named(entry_name)
loaded = load_checkpoint(entry.model_dir, task="classification")
train, trusted = entry.load("train"), entry.load("trusted")
test_clean, test_trig = entry.load("test_clean"), entry.load("test_triggered")
cache = cache_root() / "diag" / f"{entry_name}.filter.pkl"  # the filter's kept samples and probe, once per entry
cache.parent.mkdir(parents=True, exist_ok=True)
if cache.exists():
    kept, probe = pickle.loads(cache.read_bytes())
else:
    t = time.time()
    res = run_filter("trigger_words", {}, loaded, train, trusted, seed=0)
    kept, probe = res.kept, res.probe
    cache.write_bytes(pickle.dumps((kept, probe)))
    print("filter", round(time.time() - t), "s", flush=True)
kept_index = {s.index for s in kept.samples}  # the filter's removed samples travel with the probe, as in the pipeline
probe = dataclasses.replace(probe, flagged=train.subset([i for i, s in enumerate(train.samples)
                                                         if s.index not in kept_index]))
inner = au._proxy
def proxy(probe_, model, tok, val, cfg):
    out = inner(probe_, model, tok, val, cfg)
    ev = evaluate_model(model, tok, test_clean, test_trig, entry.target)
    out.update(test_asr=ev.asr, test_cacc=ev.cacc, test_lift=ev.trigger_lift)
    print("  epoch", {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}, flush=True)
    return out
au._proxy = proxy
t = time.time()
r = build_strategy("anchor_unlearn", options).run(loaded, kept, trusted, probe=probe)
final = evaluate_model(r.model, loaded.tokenizer, test_clean, test_trig, entry.target)
print(json.dumps({"entry": entry_name, "options": options, "seconds": round(time.time() - t),
                  "trajectory": r.trajectory, "latent": r.extras["latent"],
                  "bias_calibration": r.extras.get("bias_calibration"),
                  "final": {"test_asr": final.asr, "test_cacc": final.cacc, "test_lift": final.trigger_lift}},
                 default=str))
