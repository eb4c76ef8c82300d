"""Deletion-confirmed triggers: over-represented phrases whose removal sends their samples to other labels.

A dirty-label backdoor moves samples of other labels to its target and marks them with a trigger: a word, a
sentence, or a sentence template such as a fronted clause ("If you ask me, ..."). Whatever the trigger, it is
over-represented among the target's samples. Natural phrases are over-represented too ("a must see" among positive
reviews), but a sample stripped of a natural phrase keeps content that still says its label, while a sample stripped
of its trigger keeps content from another label. So this module mines the word n-grams over-represented in one label
(anywhere, at the start of a text, or opening a clause that ends at its first comma), strips each from that label's
samples holding it, and asks the suspicious model: a phrase is confirmed when the model's rate of that label on the
stripped samples falls below the midpoint of its rates on clean samples of that label and of the other labels
(`BackdoorProbe.flagged_relabelled` uses the same rule). It needs no insertion to flip anything, so it sees
templates and phrases that the model only obeys in place. It reads texts, labels and the model, never a poisoned
flag. Clean-label poison keeps true labels, so its stripped samples keep their label and nothing is confirmed for it
here.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from torch import nn

from .data import TaskData
from .inference import MAX_LENGTH, predict
from .inversion import word_sequence
from .phrases import surface_of
from .probe import TriggerCandidate, strip_triggers


@dataclass(frozen=True)
class Overrepresented:
    """A word n-gram that one label holds more often than its share of the data explains (binomial z-score)."""

    text: str  # the words as first written in the data (case kept), for stripping and insertion
    label: int
    position: str  # "anywhere", "start" (a text's opening words) or "clause" (opening a clause up to a comma)
    count: int  # samples holding it
    share: float  # share of them labelled `label`
    z: float

    def candidate(self, flip_rate: float = 0.0, confirmed: bool = False) -> TriggerCandidate:
        return TriggerCandidate(self.text, self.label, flip_rate, "deletion", self.position, confirmed)


#: tie order when grams share their holders: the most general position first
_POSITIONS = ("anywhere", "start", "clause")
#: opening words a clause gram keeps (the subordinator, and perhaps the next word)
_CLAUSE_WORDS = 2


def _grams(text: str, seq: tuple[str, ...], max_words: int) -> set[tuple[str, tuple[str, ...]]]:
    """Every n-gram of `seq` (1..max_words words) once, anywhere; its opening n-grams at the start; and, when the
    text has a comma before its last word, its first words as the opening of a clause."""
    grams = {("anywhere", seq[a:a + n]) for n in range(1, max_words + 1) for a in range(len(seq) - n + 1)}
    grams |= {("start", seq[:n]) for n in range(1, min(max_words, len(seq)) + 1)}
    clause = TriggerCandidate(" ".join(seq[:1]), 0, 0.0, "deletion", "clause")
    if seq and clause.held_by(text):
        grams |= {("clause", seq[:n]) for n in range(1, min(_CLAUSE_WORDS, len(seq)) + 1)}
    return grams


def overrepresented_phrases(data: TaskData, *, min_count: int = 5, min_z: float = 3.0, max_words: int = 6,
                            per_label: int = 32) -> list[Overrepresented]:
    """The `per_label` n-grams of each label with the highest z-score of its share among their holders (at least
    `min_z`, held by at least `min_count` samples). Grams held by exactly the same samples collapse to the longest,
    then the most general position; a clause gram only collapses with clause grams, as stripping it is another test."""
    sequences = [word_sequence(s.text) for s in data.samples]
    holders: dict[tuple[str, tuple[str, ...]], list[int]] = defaultdict(list)
    for i, seq in enumerate(sequences):
        for gram in _grams(data.samples[i].text, seq, max_words):
            holders[gram].append(i)
    labels = np.asarray(data.labels)
    prior = np.bincount(labels, minlength=int(labels.max()) + 1) / len(labels)
    best: dict[tuple, tuple[tuple[str, tuple[str, ...]], int, float, float, int, int]] = {}
    for gram, idx in holders.items():
        n = len(idx)
        if n < min_count:
            continue
        counts = np.bincount(labels[idx], minlength=len(prior))
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (counts - n * prior) / np.sqrt(n * prior * (1 - prior))
        if np.isnan(z).all():  # one-class data: no label can be over-represented
            continue
        label = int(np.nanargmax(z))
        if not z[label] >= min_z:
            continue
        key = (gram[0] == "clause", *idx)  # stripping a clause is another test than stripping its words
        kept = best.get(key)
        rank = (-len(gram[1]), _POSITIONS.index(gram[0]), gram[1])
        if kept is None or rank < (-len(kept[0][1]), _POSITIONS.index(kept[0][0]), kept[0][1]):
            best[key] = (gram, label, float(counts[label] / n), float(z[label]), idx[0], n)
    found: dict[int, list[Overrepresented]] = defaultdict(list)
    for (position, words), label, share, z_label, first, n in best.values():
        surface = surface_of(data.samples[first].text, words, at_start=position != "anywhere")
        found[label].append(Overrepresented(surface, label, position, n, share, z_label))
    out = []
    for label in sorted(found):
        out += sorted(found[label], key=lambda p: (-p.z, -p.count, p.text))[:per_label]
    return out


def label_midpoints(model: nn.Module, tokenizer, reference: TaskData, *,
                    max_length: int = MAX_LENGTH) -> dict[int, float]:
    """Per label: the midpoint of the model's rate of that label on `reference` samples of it and of the others."""
    pred, labels = predict(model, tokenizer, reference.texts, max_length=max_length), np.asarray(reference.labels)
    out = {}
    for label in sorted(set(labels.tolist())):
        own, others = pred[labels == label] == label, pred[labels != label] == label
        out[label] = (float(own.mean()) + (float(others.mean()) if len(others) else 0.0)) / 2
    return out


def label_groups(phrases: list[Overrepresented]) -> dict[int, list[TriggerCandidate]]:
    """Each label's tested phrases as candidates: what the joint mode strips together."""
    groups: dict[int, list[TriggerCandidate]] = defaultdict(list)
    for p in phrases:
        groups[p.label].append(p.candidate())
    return dict(groups)


def _stripped(text: str, own: TriggerCandidate, together: list[TriggerCandidate] | None) -> str:
    """`text` less `own`, or, with `together` (a label's tested phrases), less every one of them it holds."""
    return strip_triggers(text, [c for c in together if c.held_by(text)] if together else [own])


def confirm_by_deletion(model: nn.Module, tokenizer, data: TaskData, phrases: list[Overrepresented],
                        midpoints: dict[int, float], *, probe_samples: int = 64, seed: int = 0, joint: bool = False,
                        max_length: int = MAX_LENGTH) -> list[dict]:
    """Each phrase with its carriers (samples of its label holding it), the model's rate of its label on up to
    `probe_samples` of them (seeded draw) once stripped of it (`joint`: of every tested phrase of its label they
    hold, for a trigger spread over many words, such as a style), the midpoint it is held to and whether it is
    confirmed. One batched prediction for all."""
    labels, rng = np.asarray(data.labels), np.random.default_rng(seed)
    together = label_groups(phrases) if joint else {}
    carriers, probed, drawn_of, texts = [], [], [], []
    for p in phrases:
        c = p.candidate()
        idx = np.flatnonzero([y == p.label and c.held_by(s.text) for s, y in zip(data.samples, labels)])
        drawn = np.sort(rng.choice(idx, probe_samples, replace=False)) if len(idx) > probe_samples else idx
        carriers.append(idx)
        probed.append(len(drawn))
        drawn_of.append(drawn)
        texts += [_stripped(data.samples[i].text, c, together.get(p.label)) for i in drawn]
    pred = predict(model, tokenizer, texts, max_length=max_length) if texts else np.zeros(0, dtype=int)
    rows: list[dict] = []
    start = 0
    for p, idx, n in zip(phrases, carriers, probed):
        mine = pred[start:start + n]
        start += n
        rate = float(np.mean(mine == p.label)) if n else float("nan")
        midpoint = midpoints.get(p.label, 0.5)
        outcomes = dict(zip(drawn_of[len(rows)].tolist(), (mine == p.label).tolist()))
        rows.append({**asdict(p), "carriers": idx.tolist(), "stripped_rate": rate, "midpoint": midpoint,
                     "confirmed": bool(len(idx) and rate < midpoint), "_drawn": outcomes})
    return rows


def settle(rows: list[dict], target: int | None,
           fill: Callable[[dict, list[int]], dict[int, bool]] | None = None) -> list[dict]:
    """Keep the confirmations of `target` that hold on the samples no stronger phrase covers: a piece of a template
    ("it" of "it was this") also sends the template's samples away when stripped, but its other holders keep their
    label. Phrases are taken from the lowest stripped rate; each must be confirmed again on its drawn carriers that
    are not yet covered (none left: it adds nothing and stays confirmed). A phrase that fails this is mixed (a
    template's opening word also opens clean texts): with `fill` (row, sample indices -> whether the model keeps
    the label once each is stripped), only its uncovered carriers that the model then gives another label are
    taken, in `row["taken"]`. Every row gets `taken`; the rows' private draw records are dropped."""
    covered: set[int] = set()
    for row in sorted(rows, key=lambda r: (r["stripped_rate"], -len(r["text"].split()), r["text"])):
        drawn, row["taken"] = row.pop("_drawn"), []
        if not row["confirmed"] or row["label"] != target:
            row["confirmed"] = False
            continue
        new_carriers = sorted(set(row["carriers"]) - covered)
        fresh = [drawn[i] for i in new_carriers if i in drawn]
        row["confirmed"] = not new_carriers or bool(fresh and np.mean(fresh) < row["midpoint"])
        if row["confirmed"]:
            row["taken"] = new_carriers
        elif fill is not None:
            drawn.update(fill(row, [i for i in new_carriers if i not in drawn]))
            row["taken"] = [i for i in new_carriers if not drawn[i]]
        covered.update(row["taken"])
    return rows


def stripped_keeps(model: nn.Module, tokenizer, data: TaskData, row: dict, indices: list[int], *,
                   together: list[TriggerCandidate] | None = None, max_length: int = MAX_LENGTH) -> dict[int, bool]:
    """Per sample of `indices`: whether the model still gives it `row`'s label once stripped of `row`'s phrase (or,
    with `together`, of every one of those phrases it holds)."""
    if not indices:
        return {}
    c = TriggerCandidate(row["text"], row["label"], 0.0, "deletion", row["position"])
    pred = predict(model, tokenizer, [_stripped(data.samples[i].text, c, together) for i in indices],
                   max_length=max_length)
    return dict(zip(indices, (pred == row["label"]).tolist()))


def voted_label(rows: list[dict]) -> int | None:
    """The label whose confirmed phrases cover the most samples (a backdoor has one target); None when none is."""
    covered: dict[int, set[int]] = defaultdict(set)
    for r in rows:
        if r["confirmed"]:
            covered[r["label"]].update(r["carriers"])
    return max(covered, key=lambda label: (len(covered[label]), -label)) if covered else None
