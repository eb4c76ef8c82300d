"""Data filters: score each untrusted sample, drop the suspicious ones, so every strategy is fed clean data.

Built-in filters: ``gradsentry`` (spectral entropy of per-sample gradients, KDE-valley threshold) and
``gradshield`` (harmfulness score against a trusted probe gradient, GMM-versus-Gaussian threshold) and
``trigger_words`` (trigger inversion from the model, then removal of target-label samples holding the words) and
``zdef`` (words and text templates spuriously correlated with one label; reads only the data).
"""
from __future__ import annotations

from .base import (FILTERS, DataFilter, FilterConfig, FilterResult, RegisteredFilter, build_filter, get_filter,
                   register_filter)
from .gradsentry import GradSentry, GradSentryConfig, spectral_entropy
from .gradshield import GradShield, GradShieldConfig
from .trigger_words import TriggerWords, TriggerWordsConfig
from .thresholds import ThresholdDecision, gmm_threshold, kde_valley_threshold
from .zdef import ZDef, ZDefConfig

__all__ = [
    "FILTERS", "DataFilter", "FilterConfig", "FilterResult", "RegisteredFilter", "build_filter", "get_filter",
    "register_filter", "GradSentry", "GradSentryConfig", "GradShield", "GradShieldConfig", "TriggerWords",
    "TriggerWordsConfig", "ZDef", "ZDefConfig",
    "spectral_entropy",
    "ThresholdDecision", "gmm_threshold", "kde_valley_threshold",
]
