"""The first look at the deletion test: for each mined label-pure phrase (purify.phrases, 64 per label), strip it
from its label's carriers and compare the suspicious model's rate of that label with the trusted midpoint. Reads the
poisoned flags to count them (a diagnosis, not a filter). Prints, per entry, the flagged phrases and those whose
carriers are mostly poisoned, then the entry's summary line.

    PYTHONPATH=. python benchmarks/experiments/deletion/first_look.py ENTRY [ENTRY ...]
"""
import sys, numpy as np, torch, time
from purify.bench import _entry
from purify.checkpoint import load_checkpoint
from purify.inference import predict
from purify.phrases import mine_phrases, holders_of
from purify.probe import strip_triggers, TriggerCandidate
torch.set_num_threads(1)
for name in sys.argv[1:]:
    t0=time.time()
    e=_entry(name); train, trusted = e.load("train"), e.load("trusted")
    m=load_checkpoint(e.model_dir, task="classification"); m.model.eval()
    labels=np.array(train.labels); pois=np.array([s.poisoned for s in train.samples])
    pz=predict(m.model,m.tokenizer,trusted.texts); yz=np.array(trusted.labels)
    phrases=mine_phrases(train, per_label=64)
    flagged=np.zeros(len(labels),bool)
    for ph in phrases:
        held=holders_of(train, ph); car=held&(labels==ph.label)
        idx=np.flatnonzero(car)
        cand=TriggerCandidate(ph.text,ph.label,1.0,"phrases")
        texts=[strip_triggers(train.samples[i].text,[cand]) for i in idx]
        r=np.mean(predict(m.model,m.tokenizer,texts)==ph.label)
        on=np.mean(pz[yz==ph.label]==ph.label); off=np.mean(pz[yz!=ph.label]==ph.label); mid=(on+off)/2
        hit=r<mid
        if hit: flagged|=car
        if hit or pois[idx].mean()>0.5:
            print(f"  {ph.text!r:40} l={ph.label} n={len(idx)} poisoned={pois[idx].sum()} stripped_rate={r:.2f} mid={mid:.2f} {'FLAG' if hit else ''}")
    np.save(f"/tmp/states/{name}.delflag.npy", flagged)
    print(name, f"phrases={len(phrases)} flagged={flagged.sum()} poisoned_flagged={(flagged&pois).sum()}/{pois.sum()} clean_flagged={(flagged&~pois).sum()} {time.time()-t0:.0f}s", flush=True)
    np.save(f"/tmp/states/{name}.delflag.npy", flagged)
