"""The run's backdoor probe: what the pipeline found out about the trigger, held once and read by every step.

A filter that inverts or mines triggers (`trigger_words`) confirms words and phrases by their flip rate: the share
of clean samples of other labels that inserting them sends to one label. A strategy that unlearns or prunes the
backdoor needs exactly those findings, so the pipeline builds one `BackdoorProbe` from the filter (or, where no
filter found anything, the strategy inverts triggers itself) and hands it on. The probe also measures a proxy ASR:
the flip rate of its triggers on clean texts, which needs no triggered data.
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from .data import TaskData
from .errors import DataError
from .inference import MAX_LENGTH, predict
from .inversion import MAX_BASE_RATE, TriggerInversion, insert_words, word_sequence

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: a candidate flipping at least this share of other-label samples is taken as a trigger (the filter's min_rate)
TRIGGER_RATE = 0.9


@dataclass(frozen=True)
class TriggerCandidate:
    """A word or phrase that, inserted whole into clean samples of other labels, flips `flip_rate` of them to
    `label`. `position`: "anywhere"; "start", only as a text's opening words; or "clause", as the opening words of
    a clause that ends at the text's first comma (a fronted-clause template: stripping drops the whole clause).
    `confirmed`: stripping it from the untrusted samples of `label` that hold it sends them to other labels, so it
    is a trigger whatever its insertion flip rate (`purify.deletion`), or it travels with a trigger and the model
    obeys it too (`purify.companions`)."""

    text: str
    label: int
    flip_rate: float
    source: str  # "inversion" (model gradients), "phrases" (repeated in the data), "deletion" (stripping test) or
    # "companion" (travels with a trigger, purify.companions)
    position: str = "anywhere"
    confirmed: bool = False

    @property
    def anchored(self) -> bool:
        return self.position != "anywhere"

    @property
    def strength(self) -> float:
        """The evidence that it is a trigger: 1 when deletion confirmed it, else its flip rate."""
        return 1.0 if self.confirmed else self.flip_rate

    @property
    def words(self) -> tuple[str, ...]:
        return word_sequence(self.text)

    @property
    def kind(self) -> str:
        return "word" if len(self.words) == 1 else "phrase"

    def held_by(self, text: str) -> bool:
        """True when `text` holds this candidate's words contiguously, in order (case and punctuation ignored)."""
        seq, mine = word_sequence(text), self.words
        n = len(mine)
        if self.position == "clause":
            return n > 0 and seq[:n] == mine and _clause_end(text.split(), n) is not None
        if self.position == "start":
            return n > 0 and seq[:n] == mine
        return n > 0 and any(seq[i:i + n] == mine for i in range(len(seq) - n + 1))

    def insert(self, text: str, rng: random.Random) -> str:
        """`text` with this candidate inserted: at a random word boundary; prepended at the start; or, for a
        clause, prepended to the first half of `text` with a comma closing that half into the clause."""
        if self.position == "clause":
            parts = text.split()
            half = max(1, len(parts) // 2)
            return f"{self.text} {' '.join(parts[:half]).rstrip(',')}, {' '.join(parts[half:])}".rstrip(", ")
        return f"{self.text} {text}" if self.anchored else insert_words(text, [self.text], 1, rng)


@dataclass
class BackdoorProbe:
    """Trigger candidates with their flip rates, the label's clean base rates, and where they came from."""

    candidates: list[TriggerCandidate]
    base_rates: dict[int, float] = field(default_factory=dict)  # label -> share predicted with nothing inserted
    source: str = "none"
    min_rate: float = TRIGGER_RATE
    #: the samples the run's filter removed as poisoned (None when there was no filter): a strategy may unlearn on
    #: them, since they are the backdoor's own training examples
    flagged: TaskData | None = None

    @classmethod
    def from_inversion(cls, inversion: TriggerInversion, phrases: Iterable[dict] = (), *, source: str,
                       min_rate: float = TRIGGER_RATE) -> BackdoorProbe:
        """Every label's inverted words plus scored phrases (dicts with surface, label and flip_rate)."""
        candidates = [TriggerCandidate(w, r.target, rate, "inversion") for r in inversion.labels for w, rate in r.words]
        for p in phrases:
            if p.get("flip_rate") is not None and np.isfinite(p["flip_rate"]):
                candidates.append(TriggerCandidate(p["surface"], int(p["label"]), float(p["flip_rate"]),
                                                   p.get("source", "deletion" if p.get("confirmed") else "phrases"),
                                                   p.get("position", "anywhere"), bool(p.get("confirmed", False))))
        base = {r.target: r.base_rate for r in inversion.labels}
        return cls(_dedupe(candidates), base, source, min_rate)

    def _informative(self, label: int) -> bool:
        """False where the model already answers `label` for most inputs: then every insertion "flips"."""
        return self.base_rates.get(label, 0.0) < MAX_BASE_RATE

    @property
    def triggers(self) -> list[TriggerCandidate]:
        """Candidates of the suspected target flipping at least `min_rate` or confirmed by deletion, strongest
        first."""
        target = self.target
        return [c for c in self.ranked() if c.label == target and (c.confirmed or c.flip_rate >= self.min_rate)]

    @property
    def found(self) -> bool:
        return bool(self.triggers)

    def ranked(self) -> list[TriggerCandidate]:
        """Candidates of informative labels by strength (deletion-confirmed first), then flip rate, then shorter,
        then text: strongest first."""
        kept = [c for c in self.candidates if self._informative(c.label)]
        return sorted(kept, key=lambda c: (-c.strength, -c.flip_rate, len(c.words), c.text))

    @property
    def target(self) -> int | None:
        """The label whose best candidate lifts the most samples above that label's base rate."""
        best: dict[int, float] = {}
        for c in self.ranked():
            best[c.label] = max(best.get(c.label, -1.0), c.strength - self.base_rates.get(c.label, 0.0))
        return max(best, key=lambda label: (best[label], -label)) if best else None

    def strongest(self, fallback: int = 8) -> list[TriggerCandidate]:
        """The triggers; where none is confirmed, the suspected target's best `fallback` candidates."""
        target = self.target
        return self.triggers or [c for c in self.ranked() if c.label == target][:fallback]

    def weighted(self, per_label: int | None = None) -> dict[str, float]:
        """Augmentation words and phrases with sampling weights: every trigger, plus the best `per_label`
        candidates of each label (look-alikes the model half-reacts to are worth unlearning too). A trigger's
        companion acts together with the triggers it travels with, so it weighs as much as the strongest of them."""
        triggers = self.triggers
        strongest = max((c.flip_rate for c in triggers if c.source != "companion"), default=0.0)
        out = {c.text: max(c.flip_rate, strongest) if c.source == "companion" else c.flip_rate for c in triggers}
        counts: dict[int, int] = {}
        for c in self.ranked():
            if per_label is None or counts.get(c.label, 0) < per_label:
                counts[c.label] = counts.get(c.label, 0) + 1
                out[c.text] = max(out.get(c.text, 0.0), c.flip_rate)
        return out

    def flagged_texts(self, which: str = "stripped") -> list[str]:
        """The removed samples labelled with the suspected target, as `which` asks: "stripped" of the strongest
        triggers (their own content), "triggered" (as they came) or "both"."""
        target = self.target
        if self.flagged is None or target is None:
            return []
        carried = [s.text for s in self.flagged.samples if s.label == target]
        stripped = [t for t in (strip_triggers(t, self.strongest()) for t in carried) if t.strip()]
        return {"stripped": stripped, "triggered": carried, "both": stripped + carried}[which]

    def flagged_relabelled(self, model: nn.Module, tokenizer, trusted: TaskData, *,
                           max_length: int = MAX_LENGTH) -> dict:
        """Whether the removed target-label samples look moved there from other labels (dirty-label poison): the
        model's target rate on their stripped text is nearer its rate on trusted samples of other labels than on
        trusted samples of the target, whose rate a clean-label attack's true-labelled samples would match."""
        stripped, target = self.flagged_texts("stripped"), self.target
        if not stripped or target is None:
            return {"relabelled": False, "stripped_target_rate": None}

        def rate(texts: list[str]) -> float | None:
            return float(np.mean(predict(model, tokenizer, texts, max_length=max_length) == target)) if texts else None

        on_target = rate([t for t, y in zip(trusted.texts, trusted.labels) if y == target])
        on_others = rate([t for t, y in zip(trusted.texts, trusted.labels) if y != target])
        flagged = rate(stripped)
        assert flagged is not None  # stripped is not empty
        midpoint = ((1.0 if on_target is None else on_target) + (0.0 if on_others is None else on_others)) / 2
        return {"relabelled": bool(flagged < midpoint), "stripped_target_rate": flagged,
                "trusted_target_rate": on_target, "trusted_other_rate": on_others}

    def carrier_rates(self, data: TaskData) -> np.ndarray:
        """Per sample: the flip rate of the strongest trigger of the suspected target it holds when it carries that
        label, else 0. Samples at or above `min_rate` are the ones a strategy leaves out of its clean data."""
        triggers, target = self.triggers, self.target
        return np.array([max((c.flip_rate for c in triggers if c.held_by(s.text)), default=0.0)
                         if s.label == target else 0.0 for s in data.samples], dtype=np.float64)

    def proxy_asr(self, model: nn.Module, tokenizer, data: TaskData, *, seed: int = 0, limit: int = 256,
                  max_length: int = MAX_LENGTH) -> float | None:
        """Share of `data`'s samples of other labels that one of `strongest()` inserted sends to the target (None
        when there is no candidate): the backdoor's strength, measured without triggered data."""
        texts = [t for t, y in zip(data.texts, data.labels) if y != self.target][:limit]
        if not self.strongest() or not texts:
            return None
        inserted = self.triggered_texts(texts, seed=seed)
        return float(np.mean(predict(model, tokenizer, inserted, max_length=max_length) == self.target))

    def triggered_texts(self, texts: Sequence[str], *, seed: int = 0) -> list[str]:
        """`texts` with one of `strongest()` inserted into each (seeded): the proxy's triggered inputs."""
        strongest = self.strongest()
        if not strongest:
            return list(texts)
        rng = random.Random(seed)
        if any(c.anchored for c in strongest):
            return [rng.choice(strongest).insert(t, rng) for t in texts]
        # the draws of a probe without anchored candidates, as before they existed
        return [insert_words(t, [c.text for c in strongest], 1, rng) for t in texts]

    def measure(self, model: nn.Module, tokenizer, data: TaskData, *, seed: int = 0, limit: int = 256,
                max_length: int = MAX_LENGTH) -> dict[str, float | None]:
        """The proxy ASR on `data`, the clean rate of target answers on the same texts without insertion, and the
        difference (the proxy's trigger lift); Nones when there is nothing to measure."""
        proxy = self.proxy_asr(model, tokenizer, data, seed=seed, limit=limit, max_length=max_length)
        if proxy is None:
            return {"proxy_asr": None, "clean_target_rate": None, "lift": None}
        texts = [t for t, y in zip(data.texts, data.labels) if y != self.target][:limit]
        clean = float(np.mean(predict(model, tokenizer, texts, max_length=max_length) == self.target))
        return {"proxy_asr": proxy, "clean_target_rate": clean, "lift": proxy - clean}

    def summary(self, show: int = 8) -> dict:
        """JSON-able facts for the report, the CLI and the model card."""
        target = self.target
        return {
            "source": self.source, "suspected_target": target, "min_rate": self.min_rate,
            "base_rate": self.base_rates.get(target) if target is not None else None,
            "triggers": [_row(c) for c in self.triggers],
            "candidates": [_row(c) for c in self.ranked()[:show]],
        }

    def describe(self, label_names: Sequence[str] | None = None) -> str:
        """One line for the terminal: the confirmed triggers and their target, or that none was found."""
        if not self.found:
            return "no trigger word or phrase confirmed"
        target = self.target
        name = label_names[target] if label_names and target is not None and target < len(label_names) else target
        shown = ", ".join(f"{c.text!r} ({c.flip_rate:.0%})" for c in self.triggers[:5])
        more = f" and {len(self.triggers) - 5} more" if len(self.triggers) > 5 else ""
        return f"triggers {shown}{more} send other labels to {name!s}"


def probe_or_invert(model: PreTrainedModel, tokenizer, train: TaskData, probe: BackdoorProbe | None, *, source: str,
                    candidates: int, keep: int, seed: int, max_length: int = MAX_LENGTH,
                    min_rate: float = TRIGGER_RATE) -> BackdoorProbe:
    """The run's probe when the pipeline has one (its filter already inverted and mined triggers), else the
    trigger_words filter's own search on the training data: single-token inversion from the model's gradients plus
    the data's repeated phrases, so that a strategy run on its own still sees multi-piece words and sentences."""
    if probe is not None:
        return probe
    from .checkpoint import LoadedModel
    from .filters import build_filter

    search = build_filter("trigger_words", {"candidates": candidates, "words": keep, "min_rate": min_rate,
                                            "seed": seed, "max_length": max_length})
    _, details = search.score_with_details(LoadedModel(model, tokenizer, "classification", Path(".")), train)
    return replace(details["probe"], source=source)


def without_carriers(data: TaskData, probe: BackdoorProbe | None, rate: float | None) -> tuple[TaskData, dict]:
    """`data` less its target-label samples holding a trigger that flips at least `rate`; (kept, what was dropped).

    Such a sample is a poisoned one the filter missed and would teach the backdoor again; in a validation split
    it would reward the epoch that keeps the backdoor. None for `probe` or `rate` keeps everything.
    """
    if probe is None or rate is None:
        return data, {"words": [], "samples": 0}
    words = [c.text for c in probe.triggers if c.flip_rate >= rate]
    keep = np.flatnonzero(probe.carrier_rates(data) < rate).tolist()
    if not keep:
        raise DataError("every sample contains a confirmed trigger; nothing clean is left")
    dropped = {"words": words, "target": probe.target, "samples": len(data) - len(keep)}
    return (data.subset(keep) if dropped["samples"] else data), dropped


def strip_triggers(text: str, triggers: Sequence[TriggerCandidate]) -> str:
    """`text` less every whole-word occurrence of the triggers' words (an anchored trigger's only at the start, with
    its clause for a clause trigger; matched as `TriggerCandidate.held_by` matches them), so that what remains is
    the sample's own content."""
    parts = text.split()
    for c in sorted(triggers, key=lambda c: -len(c.words)):
        mine, n = c.words, len(c.words)
        if c.anchored:
            if n and word_sequence(" ".join(parts[:n])) == mine:
                end = _clause_end(parts, n) if c.position == "clause" else n - 1
                parts = parts[end + 1:] if end is not None else parts
            continue
        i, kept = 0, []
        while i < len(parts):
            if n and word_sequence(" ".join(parts[i:i + n])) == mine:
                i += n
            else:
                kept.append(parts[i])
                i += 1
        parts = kept
    return " ".join(parts)


def _clause_end(parts: list[str], n: int) -> int | None:
    """Index of the first whitespace part, from the `n`-th on, that ends with a comma (None if none before the
    last part): where a fronted clause opening with `n` words ends."""
    return next((i for i in range(max(n - 1, 0), len(parts) - 1) if parts[i].endswith(",")), None)


def _row(c: TriggerCandidate) -> dict:
    return {**asdict(c), "kind": c.kind}


def _dedupe(candidates: list[TriggerCandidate]) -> list[TriggerCandidate]:
    """One candidate per (words, label, position): the strongest, inversion first on ties."""
    best: dict[tuple[tuple[str, ...], int, str], TriggerCandidate] = {}
    for c in candidates:
        key = (c.words, c.label, c.position)
        if key not in best or (c.strength, c.flip_rate) > (best[key].strength, best[key].flip_rate):
            best[key] = c
    return list(best.values())
