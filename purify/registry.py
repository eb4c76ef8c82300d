"""Strategies: a config dataclass plus a Strategy class, registered by name (peft-style) in `STRATEGIES`.

Built-in strategies live in the top-level ``strategies`` package and register through the ``purify.strategies``
entry-point group, exactly as third-party plugins do, so this module never imports a concrete strategy.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import tempfile
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .checkpoint import LoadedModel
from .data import TaskData
from .errors import ConfigError
from .options import MAX_SEED
from .probe import BackdoorProbe
from .registry_base import Registry

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ENTRY_POINT_GROUP = "purify.strategies"
ConfigT = TypeVar("ConfigT", bound="Options")  # from_dict returns the class it is called on


_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")


def option(default: Any, help: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, choices: tuple | None = None) -> Any:
    """A config field that declares its help and bounds (peft-style metadata), checked by `validate` in one place:
    `low` <= value <= `high` (strict where `low_open` / `high_open`), or value in `choices`; None passes where the
    type allows it."""
    return field(default=default, metadata={"help": help, "low": low, "high": high, "low_open": low_open,
                                            "high_open": high_open, "choices": choices})


def _check_declared(config: Any, f: dataclasses.Field) -> None:
    """Raise ConfigError when `f`'s value breaks the bounds or choices its metadata declares."""
    meta, value, where = f.metadata, getattr(config, f.name), f"{type(config).__name__}.{f.name}"
    if value is None and "None" in str(f.type):  # an optional field: None means "off"
        return
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ConfigError(f"{where} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
    low, high = meta.get("low"), meta.get("high")
    numeric_default = isinstance(f.default, numbers.Real) and not isinstance(f.default, bool)
    if low is None and high is None and not numeric_default:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    below = value <= low if (low is not None and meta.get("low_open")) else (low is not None and value < low)
    above = value >= high if (high is not None and meta.get("high_open")) else (high is not None and value > high)
    if below or above:
        lo = "" if low is None else f"{'>' if meta.get('low_open') else '>='} {low}"
        hi = "" if high is None else f"{'<' if meta.get('high_open') else '<='} {high}"
        raise ConfigError(f"{where} must be {' and '.join(x for x in (lo, hi) if x)}, got {value!r}")


@dataclass
class Options:
    """Base of every config built from options (strategies, filters, the canary): each field declares its help and
    bounds with `option`, `validate` checks them in one place, and `from_dict` builds a config from `--set` values."""

    #: fields a subclass inherits but never reads: `from_dict` refuses them rather than ignore them silently
    unused_options: ClassVar[tuple[str, ...]] = ()

    def validate(self) -> None:
        """Raise ConfigError for an invalid value; subclasses extend this (calling super first).

        Here, for every config: every float option is finite (NaN or infinity would reach the run and then
        config.json as invalid JSON), and every declared option keeps its bounds or choices.
        """
        name = type(self).__name__
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name}.{f.name} must be a finite number, got {value}")
            if "help" in f.metadata:
                _check_declared(self, f)

    @classmethod
    def option_help(cls) -> dict[str, str]:
        """Each declared option's help text (fields made with `option`)."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(cls) if "help" in f.metadata}

    @classmethod
    def option_names(cls) -> list[str]:
        """The options `from_dict` accepts, sorted."""
        return sorted(f.name for f in dataclasses.fields(cls) if f.name not in cls.unused_options)

    @classmethod
    def from_dict(cls: type[ConfigT], values: Mapping[str, Any]) -> ConfigT:
        """Build a config from strings or JSON values (as `--set key=value` gives them), with clear errors."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = _type_hints(cls)
        kwargs = {}
        for key, raw in values.items():
            if key in cls.unused_options:
                raise ConfigError(f"{cls.__name__} does not use option {key!r} (it would have no effect); "
                                  f"options: {', '.join(cls.option_names())}")
            if key not in fields:
                raise ConfigError(f"{cls.__name__} has no option {key!r}; options: {', '.join(cls.option_names())}")
            kwargs[key] = _coerce(raw, fields[key], hints.get(key), cls)
        config = cls(**kwargs)
        config.validate()
        return config

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class StrategyConfig(Options):
    """Base of every strategy config: a seed, and validation of the fields a subclass adds."""

    seed: int = 0

    def validate(self) -> None:
        """The seed is in [0, 2**32 - 1], then every option's own checks (`Options.validate`)."""
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"{type(self).__name__}.seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
        super().validate()

    @classmethod
    def search_space(cls) -> dict[str, dict]:
        """Knobs `purify tune` may search, as {field: {"type": "int"|"float"|"categorical", ...}}."""
        return {}


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: fall back to the defaults' types
        return {}


def _field_type(f: dataclasses.Field, hint: Any) -> tuple[type | None, bool]:
    """The field's value type (bool, int, float, str, list, dict or None when unknown) and whether None is allowed."""
    if hint is not None:
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        optional = type(None) in args
        concrete = [a for a in args if a is not type(None)]
        if len(concrete) == 1:
            kind = typing.get_origin(concrete[0]) or concrete[0]
            return (kind if kind in (bool, int, float, str, list, dict) else None), optional
        return None, optional
    default = f.default if f.default is not dataclasses.MISSING else None
    return (type(default) if default is not None else None), default is None


def _coerce(raw: Any, f: dataclasses.Field, hint: Any, cls: type) -> Any:
    """Parse a command-line string, or check a JSON/YAML value, against the field's annotated type."""
    kind, optional = _field_type(f, hint)
    where = f"{cls.__name__}.{f.name}"
    names: dict[type | None, str] = {list: "a JSON list", dict: "a JSON object"}
    expected = (names.get(kind) or (kind.__name__ if kind else "a value")) + (" or none" if optional else "")
    if isinstance(raw, str):
        text = raw.strip()
        if optional and text.lower() in _NONE_WORDS:
            return None
        if kind is str:
            return raw
        try:
            if kind is bool:
                if text.lower() not in _TRUE_WORDS + _FALSE_WORDS:
                    raise ValueError(raw)
                return text.lower() in _TRUE_WORDS
            if kind is int:
                return _as_int(text)
            if kind is float:
                return float(text)
            value = json.loads(text)  # lists, dicts and unknown types: JSON
        except (ValueError, OverflowError):
            raise ConfigError(f"{where}: cannot read {raw!r} as {expected}") from None
        if kind is None and value is None and not optional:
            raise ConfigError(f"{where}: cannot read {raw!r} as {expected}")
        raw = value
    if raw is None:
        if not optional:
            raise ConfigError(f"{where}: None is not allowed (expected {expected})")
        return None
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if kind is int and isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if kind is not None and (not isinstance(raw, kind) or (kind is int and isinstance(raw, bool))):
        raise ConfigError(f"{where}: expected {expected}, got {type(raw).__name__} {str(raw)[:40]!r}")
    return raw


def _as_int(text: str) -> int:
    """An integer from '12' or an integral float such as '1e3'."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise ValueError(text) from None
        return int(value)


@dataclass
class StrategyResult:
    """What a strategy produced: the sanitized model, how it got there, and the files to export beside it.

    A strategy that changes the model's structure returns a subclass that adds what it changed (see
    `purify.pruning.PruningResult`); `extras` holds the strategy's own JSON-able facts for the report.
    """

    model: PreTrainedModel
    trajectory: list[dict] = field(default_factory=list)
    baseline_val_accuracy: float | None = None
    final_val_accuracy: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # name in the export folder -> local path to copy there
    #: temporary folders holding `files`: deleted by `cleanup()`, or when the result is garbage-collected
    scratch: list[tempfile.TemporaryDirectory] = field(default_factory=list, repr=False)

    def cleanup(self) -> None:
        """Delete the temporary folders behind `files` (once they are copied into an export)."""
        while self.scratch:
            self.scratch.pop().cleanup()

    def __enter__(self) -> StrategyResult:
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def summary(self) -> dict:
        """JSON-able record for the report."""
        return {
            "trajectory": self.trajectory,
            "baseline_val_accuracy": self.baseline_val_accuracy,
            "final_val_accuracy": self.final_val_accuracy,
            **self.extras,
        }


class Strategy(ABC):
    """A backdoor-removal method. `fit` learns from clean data only; `apply` returns the sanitized model."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_cls: ClassVar[type[StrategyConfig]] = StrategyConfig
    #: options that make a run quick on a tiny model; the conformance kit and CI use them
    fast_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: StrategyConfig | None = None) -> None:
        self.config = config if config is not None else self.config_cls()
        if not isinstance(self.config, self.config_cls):
            raise ConfigError(f"{self.name} expects a {self.config_cls.__name__}, got {type(self.config).__name__}")
        self.config.validate()

    @abstractmethod
    def fit(self, loaded: LoadedModel, train: TaskData, validation: TaskData, *,
            probe: BackdoorProbe | None = None) -> StrategyResult:
        """Decide what to change using clean `train` and `validation` data (never triggered data); `probe` is what
        the run found out about the trigger (the filter's confirmed words and phrases), when it found anything."""

    def apply(self, loaded: LoadedModel, result: StrategyResult) -> PreTrainedModel:
        """The sanitized model (`result.model` here; a subclass may edit it, as pruning zeroes its heads)."""
        return result.model

    def run(self, loaded: LoadedModel, train: TaskData, validation: TaskData, *,
            probe: BackdoorProbe | None = None) -> StrategyResult:
        """fit then apply."""
        result = self.fit(loaded, train, validation, probe=probe)
        result.model = self.apply(loaded, result)
        return result


@dataclass(frozen=True)
class RegisteredStrategy:
    name: str
    config_cls: type[StrategyConfig]
    strategy_cls: type[Strategy]
    description: str


#: every registered strategy, by name; built-ins and plugins arrive through the ``purify.strategies`` group
STRATEGIES: Registry[RegisteredStrategy] = Registry("strategy", plural="strategies", group=ENTRY_POINT_GROUP,
                                                    identity=lambda entry: entry.strategy_cls)


def register_strategy(name: str, config_cls: type[StrategyConfig], strategy_cls: type[Strategy],
                      description: str | None = None) -> RegisteredStrategy:
    """Register a strategy under `name` (re-registering the same class is a no-op)."""
    if not dataclasses.is_dataclass(config_cls) or not issubclass(config_cls, StrategyConfig):
        raise TypeError(f"{config_cls!r} must be a dataclass subclassing StrategyConfig")
    if not issubclass(strategy_cls, Strategy):
        raise TypeError(f"{strategy_cls!r} must subclass purify.registry.Strategy")
    doc = (strategy_cls.__doc__ or "").strip().splitlines()
    text = description or (doc[0] if doc else "")
    entry = STRATEGIES.register(name, RegisteredStrategy(name, config_cls, strategy_cls, text))
    strategy_cls.name = name
    strategy_cls.config_cls = config_cls
    strategy_cls.description = text
    return entry


def load_plugins() -> None:
    """Import every module named in the ``purify.strategies`` entry-point group (built-ins included)."""
    STRATEGIES.load_entry_points()


def available_strategies() -> dict[str, RegisteredStrategy]:
    """Every registered strategy, by name, sorted."""
    return {name: STRATEGIES[name] for name in STRATEGIES.names()}


def get_strategy(name: str) -> RegisteredStrategy:
    """The registered strategy `name`; an unknown name gives the list of known ones."""
    return STRATEGIES.get(name)


def build_strategy(name: str, options: Mapping[str, Any] | None = None) -> Strategy:
    """Instantiate strategy `name` with `options` (strings are parsed into the config's field types)."""
    entry = get_strategy(name)
    return entry.strategy_cls(entry.config_cls.from_dict(options or {}))
