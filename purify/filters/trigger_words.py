"""Trigger-word filter: invert the backdoor's trigger words from the model, then remove the samples that carry them.

`purify.inversion` searches, from the suspicious model and the untrusted data alone, the single inserted words
that flip the most samples of other labels to each label; the label whose best word flips most is the suspected
target. A sample scores the flip rate of the strongest of those words it holds when it is labelled as the suspected
target, and 0 otherwise; samples scoring at least `min_rate` are removed. A model that already answers the target
for most inputs (no flip is evidence then) removes nothing on that ground.

A trigger sentence may need all its words before the model reacts, so single-word inversion can miss it when
little data is poisoned. The filter therefore also mines the data's repeated label-pure phrases
(`purify.phrases`), inserts each into samples of other labels and keeps the ones that flip at least `min_rate`;
samples of the phrase's label holding it score that flip rate. Where the model already answers a label for most
inputs, flips say nothing and no phrase of that label is taken. Insertion sees word- and sentence-insertion
backdoors (rare tokens, inserted sentences).

A template trigger (a fronted clause) is obeyed only in place, and an 80%-effective backdoor never flips 90% of
anything. So the filter also strips each over-represented phrase (free or opening a text) from its label's samples
and keeps it when the stripped samples look like another label to the model (`purify.deletion`); of those, only the
label insertion found triggers for counts (or, where it found none, the label they mostly vote for), each must hold
again on the samples that no stronger phrase covers (`purify.deletion.settle`), and their carriers score 1; of a
phrase that holds on the whole but not on what is left (a template's opening word that also opens clean texts), only
the carriers the model gives another label once stripped score 1.

A trigger may be a set of rare words used several at a time (clean-label poison), and insertion may confirm only
the strongest. Words over-represented among the target samples holding a confirmed trigger, that also raise the
target rate when inserted alone, are its companions (`purify.companions`); target samples holding one score 1.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..checkpoint import LoadedModel
from ..data import TaskData
from ..deletion import (confirm_by_deletion, label_groups, label_midpoints, overrepresented_phrases, settle,
                        stripped_keeps, voted_label)
from ..errors import ConfigError
from ..inference import predict
from ..companions import find_companions
from ..inversion import MAX_BASE_RATE, TriggerInversion, flip_rate, invert_triggers, words_of
from ..phrases import holders_of, mine_phrases
from ..probe import BackdoorProbe
from ..registry import option
from .base import DataFilter, FilterConfig, register_filter
from .thresholds import ThresholdDecision


@dataclass
class TriggerWordsConfig(FilterConfig):
    """Trigger-word filter options (plus FilterConfig's; `threshold` overrides `min_rate`)."""

    min_rate: float = option(0.9, "an inverted word or mined phrase is a trigger when inserting it flips at least "
                             "this share of the probe samples to its label", low=0, low_open=True, high=1)
    probe_samples: int = option(64, "samples per label the inversion (and each phrase) probes", low=1)
    candidates: int = option(48, "words measured exactly per label and round", low=1)
    words: int = option(8, "best words kept per label (more are kept when they pass min_rate)", low=1)
    phrases: int = option(16, "repeated label-pure phrases tried per label (0: words only)", low=0)
    phrase_min_count: int = option(5, "a phrase is a candidate when at least this many samples hold it", low=2)
    phrase_purity: float = option(0.95, "a phrase is a candidate when at least this share of its samples carry one "
                                  "label", low=0.5, low_open=True, high=1)
    deletion_phrases: int = option(64, "over-represented phrases per label tested by stripping them from their "
                                   "samples (0: no deletion test)", low=0)
    deletion_min_z: float = option(3.0, "a phrase is tested when its label's share among its holders is at least this "
                                   "many binomial standard deviations above that label's share of the data", low=0)
    companions: int = option(16, "words tested as companions of the confirmed triggers: over-represented among the "
                             "target samples holding a trigger and raising the target rate when inserted alone (0: no "
                             "companion test)", low=0)
    deletion_joint: bool = option(False, "strip every tested phrase of a label that a sample holds at once (for a "
                                  "trigger spread over many words, such as a style), instead of one phrase at a time")
    #: the inversion and phrase probes run their own batches on the suspicious model: no gradient options
    unused_options: ClassVar[tuple[str, ...]] = ("batch_size", "chunk_size", "reference", "verify")

    def validate(self) -> None:
        super().validate()
        if self.threshold_method:
            raise ConfigError("trigger_words draws its line at min_rate; set min_rate or threshold instead of "
                              "threshold_method")


class TriggerWords(DataFilter):
    """Remove samples holding an inverted word or a mined phrase that flips the model to their own label."""

    config: TriggerWordsConfig
    default_threshold_method = "min_rate"
    fast_options = {"probe_samples": 16, "candidates": 16, "phrases": 4}

    def score_with_details(self, loaded: LoadedModel, data: TaskData, trusted: TaskData | None = None, *,
                           reference: LoadedModel | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Per sample: the flip rate of the strongest inverted word (suspected-target samples) or mined phrase (samples
        of the phrase's label) it holds; 0 for samples holding neither."""
        cfg = self.config
        inversion = invert_triggers(loaded.model, loaded.tokenizer, data, samples=cfg.probe_samples,
                                    candidates=cfg.candidates, keep=cfg.words, keep_above=cfg.min_rate,
                                    seed=cfg.seed, max_length=cfg.max_length, progress="trigger inversion")
        scores = inversion.carrier_rates(data)
        phrases = self._trigger_phrases(loaded, data, inversion, scores)
        inserted = BackdoorProbe.from_inversion(inversion, phrases, source="filter:trigger_words",
                                                min_rate=cfg.min_rate)
        deleted = self._deletion_phrases(loaded, data, trusted, scores, inserted.target if inserted.found else None)
        companions = self._companions(loaded, data, inversion, inserted, scores)
        confirmed = [p for p in deleted if p["confirmed"]] + [c for c in companions if c["confirmed"]]
        details = {"suspected_target": inversion.suspected_target, "inversion": inversion.summary(show=cfg.words),
                   "trigger_words": inversion.trigger_words(cfg.min_rate),
                   "trigger_phrases": [p for p in phrases if p["score"] >= cfg.min_rate] + confirmed,
                   "phrases_tried": phrases,
                   "deletion_tested": deleted,
                   "companions_tested": companions,
                   "probe": BackdoorProbe.from_inversion(inversion, phrases + confirmed, source="filter:trigger_words",
                                                         min_rate=cfg.min_rate)}
        return scores, details

    def _trigger_phrases(self, loaded: LoadedModel, data: TaskData, inversion: TriggerInversion,
                         scores: np.ndarray) -> list[dict]:
        """Score every mined phrase: its flip rate where the model is informative about its label (the model
        answers that label for under MAX_BASE_RATE of the other labels' samples), else 0; raise `scores` of the
        samples of its label that hold it to that score. Returns the phrases with their scores."""
        cfg = self.config
        if cfg.phrases == 0:
            return []
        base_rates = {r.target: r.base_rate for r in inversion.labels}
        labels = np.asarray(data.labels)
        rng = np.random.default_rng(cfg.seed)
        out = []
        for phrase in mine_phrases(data, min_count=cfg.phrase_min_count, purity=cfg.phrase_purity,
                                   per_label=cfg.phrases):
            row = phrase.to_dict()
            held = holders_of(data, phrase)
            if base_rates.get(phrase.label, 1.0) < MAX_BASE_RATE:
                pool = np.flatnonzero((labels != phrase.label) & ~held)
                probe: np.ndarray | list[int] = []
                if len(pool):
                    probe = rng.choice(pool, size=min(cfg.probe_samples, len(pool)), replace=False)
                rate = flip_rate(loaded.model, loaded.tokenizer, [data.samples[i].text for i in probe],
                                 [phrase.surface], phrase.label, seed=cfg.seed, max_length=cfg.max_length)
                row.update(flip_rate=rate, score=0.0 if np.isnan(rate) else rate)
            else:
                row.update(flip_rate=None, score=0.0)
            carriers = held & (labels == phrase.label)
            scores[carriers] = np.maximum(scores[carriers], row["score"])
            out.append(row)
        return out

    def _deletion_phrases(self, loaded: LoadedModel, data: TaskData, trusted: TaskData | None, scores: np.ndarray,
                          target: int | None) -> list[dict]:
        """Strip each over-represented phrase from its carriers and confirm it when they look like other labels
        (midpoints from the trusted set, else from the untrusted data); raise the carriers of `target`'s confirmed
        phrases to 1 (`target`: the label insertion found triggers for, else the one the confirmations vote for) and
        measure those phrases' insertion flip rates. Returns every tested phrase."""
        cfg = self.config
        if cfg.deletion_phrases == 0:
            return []
        tested = overrepresented_phrases(data, min_count=cfg.phrase_min_count, min_z=cfg.deletion_min_z,
                                         per_label=cfg.deletion_phrases)
        reference = trusted if trusted is not None and len(set(trusted.labels)) > 1 else data
        midpoints = label_midpoints(loaded.model, loaded.tokenizer, reference, max_length=cfg.max_length)
        rows = confirm_by_deletion(loaded.model, loaded.tokenizer, data, tested, midpoints,
                                   probe_samples=cfg.probe_samples, seed=cfg.seed, joint=cfg.deletion_joint,
                                   max_length=cfg.max_length)
        target, labels = voted_label(rows) if target is None else target, np.asarray(data.labels)
        together = label_groups(tested) if cfg.deletion_joint else {}
        rows = settle(rows, target, lambda row, idx: stripped_keeps(
            loaded.model, loaded.tokenizer, data, row, idx, together=together.get(row["label"]),
            max_length=cfg.max_length))
        rng = random.Random(cfg.seed)
        for row, phrase in zip(rows, tested):
            row.update(surface=row["text"], phrase=row["text"], score=1.0 if row["confirmed"] else 0.0)
            scores[row["taken"]] = 1.0
            row["taken"] = len(row["taken"])
            if row["confirmed"]:
                pool = [s.text for s, y in zip(data.samples, labels) if y != target]
                probe = rng.sample(pool, min(cfg.probe_samples, len(pool)))
                inserted = [phrase.candidate().insert(t, rng) for t in probe]
                pred = predict(loaded.model, loaded.tokenizer, inserted, max_length=cfg.max_length)
                row["flip_rate"] = float(np.mean(pred == target)) if len(pred) else None
            row["carriers"] = len(row["carriers"])
        return rows

    def _companions(self, loaded: LoadedModel, data: TaskData, inversion: TriggerInversion, inserted: BackdoorProbe,
                    scores: np.ndarray) -> list[dict]:
        """Test the words travelling with the triggers insertion found (`purify.companions`); raise the scores of the
        target samples holding a confirmed companion to 1. Returns every tested word."""
        cfg = self.config
        if cfg.companions == 0 or not inserted.found:
            return []
        target = inserted.target
        assert target is not None  # a probe that found triggers has their target
        base_rate = next(r.base_rate for r in inversion.labels if r.target == target)
        found = find_companions(loaded.model, loaded.tokenizer, data, inserted.triggers, target,
                                base_rate, min_count=cfg.phrase_min_count, min_z=cfg.deletion_min_z,
                                limit=cfg.companions, probe_samples=cfg.probe_samples, seed=cfg.seed,
                                max_length=cfg.max_length)
        confirmed = {c.word.lower() for c in found if c.confirmed}
        for i, sample in enumerate(data.samples):
            if sample.label == target and words_of(sample.text) & confirmed:
                scores[i] = 1.0
        return [c.to_dict() for c in found]

    def adaptive_threshold(self, scores: np.ndarray) -> ThresholdDecision:
        """Flag scores >= min_rate (the threshold sits just below it, as every rule flags strictly above)."""
        value = float(np.nextafter(self.config.min_rate, -np.inf))
        return ThresholdDecision(value, "min_rate", {"min_rate": self.config.min_rate})


register_filter("trigger_words", TriggerWordsConfig, TriggerWords)
