"""Z-def filter: remove the samples holding a feature spuriously correlated with their own label (after He et al.,
EMNLP 2023, "Mitigating backdoor poisoning attacks through the lens of spurious correlation").

A backdoor trigger is a feature that one label holds far more often than the label's share of the data explains.
Over the untrusted data, every feature f held by at least `min_count` samples, and by at most `max_share` of them,
gets for every label y the binomial z-score z = (count(f, y) - n_f p_y) / sqrt(n_f p_y (1 - p_y)), p_y the label's
share of the data. Features whose z exceeds a line are suspicious. The line (`rule`): "mean_sd" (default) is mean
+ `k` sd of the z-scores of every scored (feature, label) pair, as Z-def draws it (features held by exactly the same
samples count once, so that the many features of one trigger phrase do not widen the sd); "bound" is `z_bound`.
A sample scores the largest z, for its own label, of the features it holds (0 when none is over-represented), so
it is removed exactly when it holds a suspicious feature of its own label; `threshold` overrides the line.

Features (`families`): "unigram" and "bigram" are the lower-cased words with punctuation stripped
(`purify.inversion.word_sequence`), each counted once per sample; "template" are cheap structural signatures for
style and syntax triggers, which no offline parser can spell: the opening word and two words, a leading
subordinate clause (the text opens with a subordinator from `SUBORDINATORS` and has a comma), the word shapes of
the first `shape_tokens` tokens, the punctuation sequence, the capitalisation pattern and the length bucket.

With trusted clean data (`trusted_share`), a (feature, label) pair about as label-skewed in the trusted data (held
by at least `trusted_min_count` trusted samples, whose share of the label exceeds the label's trusted base rate by
at least `trusted_share` times the excess in the untrusted data) is a real task feature, not a trigger, and no
sample is scored by it. A shares test, not a z test: a 200-sample trusted set gives no feature a high z. An
injected trigger is absent from clean data, and a template trigger is label-balanced there. The line is still
drawn over the untrusted data's z-scores. The model is never read.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..checkpoint import LoadedModel
from ..data import TaskData
from ..errors import ConfigError
from ..inversion import word_sequence
from ..registry import option
from .base import DataFilter, FilterConfig, register_filter
from .thresholds import ThresholdDecision

FAMILIES = ("unigram", "bigram", "template")
RULES = ("mean_sd", "bound")

#: words that open a fronted subordinate clause ("When all is said and done, ..."), a closed list
SUBORDINATORS = frozenset({
    "after", "although", "as", "because", "before", "if", "once", "since", "though", "unless", "until", "when",
    "whenever", "where", "whereas", "wherever", "whether", "while", "whilst",
})

_TOKENS = re.compile(r"\w+|[^\w\s]")
_PUNCT = re.compile(r"[^\w\s]")


def _shape(token: str) -> str:
    """A token's shape: X capitalised word, A all-caps word, x lower-case word, d number, else the character."""
    if token.isdigit():
        return "d"
    if not token[0].isalnum() and token[0] != "_":
        return token
    if token.isupper() and len(token) > 1:
        return "A"
    return "X" if token[0].isupper() else "x"


def template_features(text: str, *, shape_tokens: int = 4) -> set[str]:
    """The structural signatures of `text`: opening words, a leading subordinate clause, opening word shapes,
    punctuation sequence, capitalisation pattern and length bucket."""
    words = word_sequence(text)
    tokens = _TOKENS.findall(text)
    out = {f"shape:{' '.join(_shape(t) for t in tokens[:shape_tokens])}",
           f"punct:{''.join(_PUNCT.findall(text))[:8]}",
           f"len:{int(math.log2(len(words))) if words else 0}"}
    if words:
        out |= {f"open1:{words[0]}", f"open2:{' '.join(words[:2])}"}
        if words[0] in SUBORDINATORS and "," in text:
            out.add("clause")
    shapes = {_shape(t) for t in tokens if t[0].isalnum()}
    out.add(f"case:{''.join(s for s in 'XAxd' if s in shapes)}")
    return out


def sample_features(text: str, families: Sequence[str], *, shape_tokens: int = 4) -> set[str]:
    """Every feature of `text` in the given families, each once (prefixed by its kind, so families never clash)."""
    words = word_sequence(text)
    out: set[str] = set()
    if "unigram" in families:
        out |= {f"word:{w}" for w in words}
    if "bigram" in families:
        out |= {f"bigram:{a} {b}" for a, b in zip(words, words[1:])}
    if "template" in families:
        out |= template_features(text, shape_tokens=shape_tokens)
    return out


def label_z_scores(counts: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """The binomial z-score of each (feature, label) count in a (F, L) matrix against the label shares `prior`
    (0 for a label that has every sample or none)."""
    n = counts.sum(axis=1, keepdims=True)
    spread = np.sqrt(n * prior * (1 - prior))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (counts - n * prior) / spread
    return np.where(spread > 0, z, 0.0)


def _count(features: list[set[str]], labels: np.ndarray, index: dict[str, int], n_labels: int) -> np.ndarray:
    """The (F, L) matrix of how many samples of each label hold each feature of `index`."""
    counts = np.zeros((len(index), n_labels), dtype=np.float64)
    for feats, y in zip(features, labels):
        for f in feats:
            j = index.get(f)
            if j is not None:
                counts[j, y] += 1
    return counts


@dataclass
class ZDefConfig(FilterConfig):
    """Z-def options (plus FilterConfig's; `threshold` overrides the z line, no gradient option is read)."""

    families: str = option("unigram,bigram,template", "comma-separated feature families: unigram (words), bigram "
                           "(adjacent word pairs), template (opening words, leading subordinate clause, word shapes, "
                           "punctuation, capitalisation, length)")
    min_count: int = option(10, "a feature is scored when at least this many samples hold it (rare features cannot "
                            "reach a high z)", low=2)
    max_share: float = option(0.5, "a feature held by more than this share of the samples is not scored (a trigger "
                              "marks a minority; a text pattern most samples share gets a high z from a small skew, "
                              "such as the trigger's absence)", low=0, low_open=True, high=1)
    rule: str = option("mean_sd", "where the z line is drawn: mean_sd (mean + k sd of every scored feature's "
                       "z-scores) or bound (the fixed z_bound)", choices=RULES)
    k: float = option(4.0, "rule mean_sd: the line is this many standard deviations above the mean z", low=0,
                      low_open=True)
    z_bound: float = option(8.0, "rule bound: features with a z-score above this are suspicious", low=0, low_open=True)
    shape_tokens: int = option(4, "template family: the opening tokens whose word shapes form one feature", low=1)
    trusted_share: float | None = option(0.5, "with trusted data: a (feature, label) pair is a real task feature, "
                                         "and scores nothing, when the label's share among the feature's trusted "
                                         "holders exceeds the label's trusted base rate by at least this fraction of "
                                         "its excess in the untrusted data (none: ignore trusted data)", low=0)
    trusted_min_count: int = option(5, "with trusted data: the trusted holders a feature needs before trusted_share "
                                    "judges it", low=1)
    report: int = option(20, "suspicious features listed in the details, highest z first", low=0)
    #: nothing is read from the model: no gradient, batch or length option has an effect
    unused_options: ClassVar[tuple[str, ...]] = ("batch_size", "chunk_size", "reference", "verify", "max_length")

    def family_list(self) -> list[str]:
        return [f.strip() for f in self.families.split(",") if f.strip()]

    def validate(self) -> None:
        super().validate()
        if self.threshold_method:
            raise ConfigError("zdef draws its line with rule (mean_sd or bound); set rule, k, z_bound or threshold "
                              "instead of threshold_method")
        families = self.family_list()
        unknown = [f for f in families if f not in FAMILIES]
        if unknown or not families:
            raise ConfigError(f"ZDefConfig.families must name some of {', '.join(FAMILIES)}, got {self.families!r}")


class ZDef(DataFilter):
    """Remove samples holding a word or template feature far more often labelled as them than the label's share."""

    config: ZDefConfig
    default_threshold_method = "mean_sd"
    fast_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: FilterConfig | None = None) -> None:
        super().__init__(config)
        self._line = ThresholdDecision(0.0, self.config.rule)

    def score_with_details(self, loaded: LoadedModel, data: TaskData, trusted: TaskData | None = None, *,
                           reference: LoadedModel | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Per sample: the largest own-label z of the eligible, not trusted-explained features it holds (>= 0)."""
        cfg = self.config
        families = cfg.family_list()
        features = [sample_features(s.text, families, shape_tokens=cfg.shape_tokens) for s in data.samples]
        labels = np.asarray(data.labels, dtype=np.int64)
        n_labels = max(len(data.label_names), int(labels.max()) + 1)
        holders: dict[str, list[int]] = {}
        for i, feats in enumerate(features):
            for f in sorted(feats):
                holders.setdefault(f, []).append(i)
        index = {f: j for j, f in enumerate(holders)}
        counts = np.stack([np.bincount(labels[idx], minlength=n_labels) for idx in holders.values()]).astype(float) \
            if holders else np.zeros((0, n_labels))
        prior = np.bincount(labels, minlength=n_labels) / len(labels)
        held = counts.sum(axis=1)
        eligible = (held >= cfg.min_count) & (held <= cfg.max_share * len(data))
        z = np.where(eligible[:, None], label_z_scores(counts, prior), 0.0)
        distinct = {tuple(idx): j for j, idx in reversed(list(enumerate(holders.values()))) if eligible[j]}
        self._line = self._draw_line(z[sorted(distinct.values())])
        explained = self._explained(trusted, families, index, counts, prior, eligible)
        usable = np.where(explained, 0.0, z)
        scores = np.zeros(len(data), dtype=np.float64)
        for i, (feats, y) in enumerate(zip(features, labels)):
            own = [usable[index[f], y] for f in feats]
            scores[i] = max(0.0, max(own, default=0.0))
        names = sorted(index, key=index.__getitem__)
        line = self._line.value if cfg.threshold is None else float(cfg.threshold)
        details = {"families": families, "features": len(index), "scored_features": int(eligible.sum()),
                   "line": self._line.details,
                   "suspicious": _rows(names, z, counts, explained, line, data.label_names, cfg.report),
                   "trusted_explained": _rows(names, np.where(explained, z, 0.0), counts, ~explained, line,
                                              data.label_names, cfg.report)}
        return scores, details

    def _draw_line(self, z: np.ndarray) -> ThresholdDecision:
        """The z line of the configured rule over the (F, L) z-scores of the distinct eligible features."""
        cfg = self.config
        if cfg.rule == "bound":
            return ThresholdDecision(float(cfg.z_bound), "bound", {"rule": "bound", "z_bound": cfg.z_bound})
        values = z.ravel()
        mean, sd = (float(values.mean()), float(values.std())) if values.size else (0.0, 0.0)
        value = max(0.0, mean + cfg.k * sd)
        return ThresholdDecision(value, "mean_sd", {"rule": "mean_sd", "k": cfg.k, "mean": mean, "sd": sd,
                                                    "value": value})

    def _explained(self, trusted: TaskData | None, families: list[str], index: dict[str, int], counts: np.ndarray,
                   prior: np.ndarray, eligible: np.ndarray) -> np.ndarray:
        """(F, L) mask of the pairs the trusted data holds as over-represented too (all False without it)."""
        cfg = self.config
        n_labels = counts.shape[1]
        samples = [s for s in (trusted.samples if trusted is not None else []) if s.label < n_labels]
        if cfg.trusted_share is None or not samples:
            return np.zeros(counts.shape, dtype=bool)
        t_labels = np.asarray([s.label for s in samples], dtype=np.int64)
        t_features = [sample_features(s.text, families, shape_tokens=cfg.shape_tokens) for s in samples]
        t_counts = _count(t_features, t_labels, index, n_labels)
        t_n = t_counts.sum(axis=1, keepdims=True)
        t_prior = np.bincount(t_labels, minlength=n_labels) / len(t_labels)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_excess = t_counts / t_n - t_prior
            excess = counts / counts.sum(axis=1, keepdims=True) - prior
        enough = (t_n[:, 0] >= cfg.trusted_min_count) & eligible
        return enough[:, None] & (excess > 0) & (t_excess >= cfg.trusted_share * excess)

    def adaptive_threshold(self, scores: np.ndarray) -> ThresholdDecision:
        """The z line drawn over the features by the last `score_with_details` (the scores are the samples')."""
        return self._line


def _rows(names: list[str], z: np.ndarray, counts: np.ndarray, skip: np.ndarray, line: float,
          label_names: list[str], limit: int) -> list[dict]:
    """The (feature, label) pairs with z above `line` and not `skip`ped, highest z first, at most `limit`."""
    feature, label = np.nonzero((z > line) & ~skip)
    order = sorted(range(len(feature)), key=lambda j: (-z[feature[j], label[j]], names[feature[j]], label[j]))
    out = []
    for j in order[:limit]:
        f, y = int(feature[j]), int(label[j])
        n = float(counts[f].sum())
        out.append({"feature": names[f], "label": y, "label_name": label_names[y] if y < len(label_names) else str(y),
                    "z": round(float(z[f, y]), 3), "count": int(n), "share": round(float(counts[f, y] / n), 4)})
    return out


register_filter("zdef", ZDefConfig, ZDef)
