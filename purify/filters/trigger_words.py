"""Trigger-word filter: invert the backdoor's trigger words from the model, then remove the samples that carry them.

`purify.inversion` searches, from the suspicious model and the untrusted data alone, the single inserted words
that flip the most samples of other labels to each label; the label whose best word flips most is the suspected
target. A sample scores the flip rate of the strongest of those words it holds when it is labelled as the suspected
target, and 0 otherwise; samples scoring at least `min_rate` are removed. A model that already answers the target
for most inputs (no flip is evidence then) removes nothing. It sees a word-insertion backdoor
(rare-token and inserted-sentence triggers) and, by construction, not a syntactic or style one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..checkpoint import LoadedModel
from ..data import TaskData
from ..errors import ConfigError
from ..inversion import invert_triggers
from .base import DataFilter, FilterConfig, register_filter
from .thresholds import ThresholdDecision


@dataclass
class TriggerWordsConfig(FilterConfig):
    """Trigger-word filter options (plus FilterConfig's; `threshold` overrides `min_rate`).

    min_rate: an inverted word is a trigger word when inserting it flips at least this share of the probe
    samples to the suspected target. probe_samples: samples per label the inversion probes. candidates: words
    measured exactly per label and round. words: best words kept per label (more are kept when they pass
    min_rate).
    """

    min_rate: float = 0.9
    probe_samples: int = 64
    candidates: int = 48
    words: int = 8

    def validate(self) -> None:
        super().validate()
        if not 0 < self.min_rate <= 1:
            raise ConfigError("min_rate must be in (0, 1]")
        if self.probe_samples < 1 or self.candidates < 1 or self.words < 1:
            raise ConfigError("probe_samples, candidates and words must be >= 1")
        if self.threshold_method:
            raise ConfigError("trigger_words draws its line at min_rate; set min_rate or threshold instead of "
                              "threshold_method")


class TriggerWords(DataFilter):
    """Remove target-label samples holding a word that trigger inversion finds flips the model (model-side only)."""

    config: TriggerWordsConfig
    default_threshold_method = "min_rate"
    fast_options = {"probe_samples": 16, "candidates": 16}

    def score_with_details(self, loaded: LoadedModel, data: TaskData, trusted: TaskData | None = None, *,
                           reference: LoadedModel | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Flip rate of the strongest inverted word a suspected-target sample holds (0 for other samples)."""
        cfg = self.config
        inversion = invert_triggers(loaded.model, loaded.tokenizer, data, samples=cfg.probe_samples,
                                    candidates=cfg.candidates, keep=cfg.words, keep_above=cfg.min_rate,
                                    seed=cfg.seed, max_length=cfg.max_length, progress="trigger inversion")
        details = {"suspected_target": inversion.suspected_target, "inversion": inversion.summary(show=cfg.words),
                   "trigger_words": inversion.trigger_words(cfg.min_rate)}
        return inversion.carrier_rates(data), details

    def adaptive_threshold(self, scores: np.ndarray) -> ThresholdDecision:
        """Flag scores >= min_rate (the threshold sits just below it, as every rule flags strictly above)."""
        value = float(np.nextafter(self.config.min_rate, -np.inf))
        return ThresholdDecision(value, "min_rate", {"min_rate": self.config.min_rate})


register_filter("trigger_words", TriggerWordsConfig, TriggerWords)
