"""A strategy's knobs for `purify tune`: its search space checked, sampled, and less the knobs the user pinned."""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from .errors import ConfigError
from .registry import StrategyConfig, get_strategy

SPACE_TYPES = ("int", "float", "categorical")
_SPEC_KEYS = {"int": {"type", "low", "high", "log", "step"}, "float": {"type", "low", "high", "log", "step"},
              "categorical": {"type", "choices"}}


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_search_space(config_cls: type[StrategyConfig], space: Mapping[str, Any] | None = None) -> dict:
    """Check a config's search space (types known, bounds ordered, log bounds > 0, fields exist); return it.

    Raises ConfigError naming the strategy config and the knob at fault.
    """
    space = config_cls.search_space() if space is None else space
    where = config_cls.__name__
    if not isinstance(space, Mapping):
        raise ConfigError(f"{where}.search_space() must return a dict, got {type(space).__name__}")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    for name, spec in space.items():
        at = f"{where}.search_space()[{name!r}]"
        if name not in fields:
            raise ConfigError(f"{at}: {where} has no field {name!r}")
        if name == "seed":
            raise ConfigError(f"{at}: the seed is not a knob to tune")
        if not isinstance(spec, Mapping) or spec.get("type") not in SPACE_TYPES:
            raise ConfigError(f"{at}: needs a 'type' of {', '.join(SPACE_TYPES)}")
        kind = spec["type"]
        unknown = set(spec) - _SPEC_KEYS[kind]
        if unknown:
            raise ConfigError(f"{at}: unknown key(s) {', '.join(sorted(unknown))} for type {kind!r}")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, (list, tuple)) or not choices:
                raise ConfigError(f"{at}: categorical needs a non-empty list of 'choices'")
            for choice in choices:
                if not (choice is None or isinstance(choice, (bool, int, float, str))):
                    raise ConfigError(f"{at}: choice {choice!r} is not None, bool, int, float or str")
            if len({json.dumps(c) for c in choices}) != len(choices):
                raise ConfigError(f"{at}: choices repeat")
            continue
        low, high = spec.get("low"), spec.get("high")
        if not (_is_number(low) and _is_number(high)):
            raise ConfigError(f"{at}: needs numeric 'low' and 'high'")
        if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
            raise ConfigError(f"{at}: int bounds must be integers")
        if low > high:
            raise ConfigError(f"{at}: low {low} > high {high}")
        if not isinstance(spec.get("log", False), bool):
            raise ConfigError(f"{at}: 'log' must be true or false")
        step = spec.get("step")
        if spec.get("log") and low <= 0:
            raise ConfigError(f"{at}: a log-scaled range needs low > 0")
        if step is not None:
            if spec.get("log"):
                raise ConfigError(f"{at}: 'step' and 'log' cannot be combined")
            if not (_is_number(step) and step > 0) or (kind == "int" and not isinstance(step, int)):
                raise ConfigError(f"{at}: 'step' must be a positive {'integer' if kind == 'int' else 'number'}")
    return dict(space)


def suggest(trial, space: Mapping[str, Mapping]) -> dict[str, Any]:
    """Ask an optuna trial for one value of every knob in `space`."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        kind = spec["type"]
        if kind == "int":
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1),
                                             log=spec.get("log", False))
        elif kind == "float":
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], step=spec.get("step"),
                                               log=spec.get("log", False))
        else:
            params[name] = trial.suggest_categorical(name, list(spec["choices"]))
    return params


def in_space(value: Any, spec: Mapping) -> bool:
    """True when `value` is a point of the knob's range (used to enqueue the defaults as the first trial)."""
    if spec["type"] == "categorical":
        return any(type(value) is type(c) and value == c for c in spec["choices"])
    if isinstance(value, bool) or not _is_number(value):
        return False
    if spec["type"] == "int" and not isinstance(value, int):
        return False
    return spec["low"] <= value <= spec["high"]


@dataclass(frozen=True)
class Knobs:
    """What a study searches: the strategy's search space less the knobs pinned by the user's options."""

    strategy: str
    space: dict[str, dict]
    options: dict[str, Any]  # the user's strategy options (pinned knobs among them)
    pinned: list[str]
    defaults: dict[str, Any]  # the config's value of every searched knob that lies in its range: the first trial

    @classmethod
    def of(cls, strategy: str, options: Mapping[str, Any], seed: int) -> Knobs:
        """The knobs of `strategy` given the user's `options`; bad options or nothing left to search raise here."""
        entry = get_strategy(strategy)
        full_space = validate_search_space(entry.config_cls)
        base = {k: v for k, v in options.items() if k != "seed"}
        config = entry.config_cls.from_dict({**base, "seed": seed})  # user options: fail before any work
        pinned = sorted(set(full_space) & set(base))
        space = {k: v for k, v in full_space.items() if k not in base}
        if not space:
            raise ConfigError(f"{strategy} has no knob left to tune"
                              + (f" (pinned with --set: {', '.join(pinned)})" if pinned else " (empty search space)"))
        defaults = {k: getattr(config, k) for k, spec in space.items() if in_space(getattr(config, k), spec)}
        return cls(strategy, space, base, pinned, defaults)
