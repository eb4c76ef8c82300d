"""What every data filter shares: its config base, its result, the run loop and the `FILTERS` registry.

A filter scores each untrusted sample (higher = more suspicious), draws a threshold, and splits the data into
kept and removed. It never reads `Sample.poisoned`: that ground truth exists only to evaluate filters.
"""
from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..checkpoint import LoadedModel, load_checkpoint
from ..data import TaskData
from ..device import seed_everything
from ..errors import ConfigError, DataError
from ..inference import MAX_LENGTH
from ..probe import BackdoorProbe
from ..registry import StrategyConfig, option
from ..registry_base import Registry
from .thresholds import (THRESHOLD_METHODS, ThresholdDecision, gmm_threshold, kde_valley_threshold, mean_std_threshold,
                         user_threshold)


@dataclass
class FilterConfig(StrategyConfig):
    """Knobs every filter shares (the strategy config base gives seed, validation and parsing from strings)."""

    threshold: float | None = option(None, "a fixed threshold on the filter's score (none: the filter's adaptive "
                                     "rule)")
    threshold_method: str = option("", "the adaptive rule, one of THRESHOLD_METHODS (empty: the filter's own "
                                   "default)")
    batch_size: int = option(16, "samples per vmapped batch", low=1)
    chunk_size: int | None = option(None, "vmap chunk size bounding memory (none: the whole batch at once)", low=1)
    max_length: int = option(MAX_LENGTH, "tokens kept per sample", low=2)
    reference: str | None = option(None, "folder of a clean reference checkpoint (same tokenizer and head) whose "
                                   "gradients are used instead of the suspicious model's (none: the suspicious "
                                   "checkpoint)")
    verify: bool = option(True, "check the per-sample forward against the model's batched forward on the first "
                          "batch")

    def validate(self) -> None:
        super().validate()
        if self.threshold_method and self.threshold_method not in THRESHOLD_METHODS:
            raise ConfigError(f"unknown threshold_method {self.threshold_method!r}; "
                              f"choose one of {', '.join(THRESHOLD_METHODS)}")


@dataclass
class FilterResult:
    """A filter's decision: kept and removed data, the score of every input sample (input order), the flags,
    the threshold and the rule that set it, the filter's name, the time taken, its options and details."""

    kept: TaskData
    removed: TaskData
    scores: np.ndarray
    flagged: np.ndarray
    threshold: float
    threshold_method: str
    method: str
    seconds: float
    options: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    #: what the filter found out about the trigger (a filter that inverts or mines triggers sets it)
    probe: BackdoorProbe | None = None
    #: the filter cache entry this result was read from (None: computed by this run; `purify.filter_cache`)
    cached_from: str | None = None

    def summary(self, *, include_scores: bool = False) -> dict[str, Any]:
        """JSON-able record for the report: counts, threshold, method, options, details and the removed samples'
        source indices (`Sample.index`); with `include_scores` every sample's score too."""
        n = int(self.scores.size)
        out: dict[str, Any] = {
            "method": self.method,
            "n": n,
            "n_kept": len(self.kept),
            "n_removed": len(self.removed),
            "removed_fraction": len(self.removed) / n if n else 0.0,
            "threshold": float(self.threshold),
            "threshold_method": self.threshold_method,
            "seconds": round(float(self.seconds), 3),
            "score_stats": _stats(self.scores),
            "removed_indices": [int(s.index) for s in self.removed.samples],
            "options": _jsonable(self.options),
            "details": _jsonable(self.details),
        }
        if include_scores:
            out["scores"] = [float(s) for s in self.scores]
        return out


def _stats(scores: np.ndarray) -> dict[str, float]:
    if scores.size == 0:
        return {}
    q = np.quantile(scores, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {"mean": float(scores.mean()), "std": float(scores.std()), "min": float(q[0]), "q25": float(q[1]),
            "median": float(q[2]), "q75": float(q[3]), "max": float(q[4])}


def _jsonable(value: Any) -> Any:
    """numpy / torch / Path values turned into plain JSON types, recursively."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, Path):
        return str(value)
    return value


class DataFilter(ABC):
    """A data filter: `score` every sample (higher = more suspicious), `run` to also threshold and split."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_cls: ClassVar[type[FilterConfig]] = FilterConfig
    #: the adaptive threshold rule used when the config names none
    default_threshold_method: ClassVar[str] = "mean_std"
    #: options that make a run take a few seconds on a tiny model (tests, CI)
    fast_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: FilterConfig | None = None) -> None:
        self.config = config if config is not None else self.config_cls()
        if not isinstance(self.config, self.config_cls):
            raise ConfigError(f"{self.name} expects a {self.config_cls.__name__}, got {type(self.config).__name__}")
        self.config.validate()

    @abstractmethod
    def score_with_details(self, loaded: LoadedModel, data: TaskData, trusted: TaskData | None = None, *,
                           reference: LoadedModel | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Scores aligned with `data` (higher = more suspicious) and JSON-able details of how they were computed."""

    def adaptive_threshold(self, scores: np.ndarray) -> ThresholdDecision:
        """The filter's own threshold rule for these scores; by default the configured `threshold_method` (or
        `default_threshold_method`) with the rule's own defaults. Filters with rule options override this."""
        method = self.config.threshold_method or self.default_threshold_method
        if method == "gmm":
            return gmm_threshold(scores, seed=self.config.seed)
        if method == "kde_valley":
            return kde_valley_threshold(scores, fallback=mean_std_threshold(scores).value)
        return mean_std_threshold(scores)

    def score(self, loaded: LoadedModel, data: TaskData, trusted: TaskData | None = None, *,
              reference: LoadedModel | None = None) -> np.ndarray:
        """One suspicion score per sample of `data`, in order (higher = more suspicious)."""
        return self.score_with_details(loaded, data, trusted, reference=reference)[0]

    def decide(self, scores: np.ndarray) -> ThresholdDecision:
        """The user's fixed threshold when given, else the adaptive rule."""
        if self.config.threshold is not None:
            return user_threshold(float(self.config.threshold))
        return self.adaptive_threshold(scores)

    def run(self, loaded: LoadedModel, data: TaskData, trusted: TaskData | None = None, *,
            reference: LoadedModel | None = None) -> FilterResult:
        """Score, threshold and split `data`; removed samples are those scoring strictly above the threshold."""
        if len(data) == 0:
            raise DataError("the data to filter is empty")
        started = time.perf_counter()
        seed_everything(self.config.seed)
        scores, details = self.score_with_details(loaded, data, trusted, reference=reference)
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(data),):
            raise AssertionError(f"{self.name} returned {scores.shape} scores for {len(data)} samples")
        decision = self.decide(scores)
        flagged = decision.flag(scores)
        kept = data.subset(np.flatnonzero(~flagged).tolist())
        removed = data.subset(np.flatnonzero(flagged).tolist())
        probe = details.pop("probe", None)  # a BackdoorProbe travels beside the JSON-able details
        details = {**details, "threshold_details": decision.details}
        if probe is not None:
            details["probe"] = probe.summary()
        return FilterResult(kept=kept, removed=removed, scores=scores, flagged=flagged,
                            threshold=decision.value, threshold_method=decision.method, method=self.name,
                            seconds=time.perf_counter() - started, options=self.config.to_dict(), details=details,
                            probe=probe)

    def gradient_model(self, loaded: LoadedModel, reference: LoadedModel | None) -> tuple[LoadedModel, str]:
        """The model gradients are taken on, and its kind: an explicit reference, the config's reference folder
        (loaded safely), or the suspicious checkpoint itself."""
        if reference is not None:
            return reference, "reference"
        if self.config.reference:
            return load_checkpoint(self.config.reference, task=loaded.task), "reference"
        return loaded, "suspicious"


@dataclass(frozen=True)
class RegisteredFilter:
    """A filter's name, config class, filter class and one-line description."""

    name: str
    config_cls: type[FilterConfig]
    filter_cls: type[DataFilter]
    description: str

    def build(self, options: Mapping[str, Any] | None = None) -> DataFilter:
        """An instance configured from `options` (strings parsed into the config's field types)."""
        return self.filter_cls(self.config_cls.from_dict(options or {}))


#: the entry-point group of data filters (built-ins and third-party plugins)
ENTRY_POINT_GROUP = "purify.filters"

#: every registered filter, by name
FILTERS: Registry[RegisteredFilter] = Registry("filter", group=ENTRY_POINT_GROUP, identity=lambda e: e.filter_cls)


def register_filter(name: str, config_cls: type[FilterConfig], filter_cls: type[DataFilter]) -> RegisteredFilter:
    """Register a filter under `name` (re-registering the same class is a no-op)."""
    if not dataclasses.is_dataclass(config_cls) or not issubclass(config_cls, FilterConfig):
        raise TypeError(f"{config_cls!r} must be a dataclass subclassing FilterConfig")
    if not issubclass(filter_cls, DataFilter):
        raise TypeError(f"{filter_cls!r} must subclass DataFilter")
    doc = (filter_cls.__doc__ or "").strip().splitlines()
    entry = FILTERS.register(name, RegisteredFilter(name, config_cls, filter_cls, doc[0] if doc else ""))
    filter_cls.name = name
    filter_cls.config_cls = config_cls
    filter_cls.description = entry.description
    return entry


def get_filter(name: str) -> RegisteredFilter:
    """The registered filter `name`; an unknown name lists the known ones."""
    return FILTERS.get(name)


def build_filter(name: str, options: Mapping[str, Any] | None = None) -> DataFilter:
    """Instantiate filter `name` with `options`."""
    return get_filter(name).build(options)
