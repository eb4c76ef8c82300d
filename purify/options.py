"""Command-line options: `--set key=value` pairs and `--config` files read into plain dicts, and seed bounds.

Values stay strings here; the strategy and filter config classes parse them into their fields' types
(`purify.registry.StrategyConfig.from_dict`), refuse unknown keys and check every value in one place.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .errors import ConfigError

#: seeds are 32-bit (numpy's and Python's generators accept any such value)
MAX_SEED = 2**32 - 1


def read_config_file(config_file: str) -> dict:
    """The options of a JSON or YAML config file: a mapping of option names to values, or one ConfigError."""
    path = Path(config_file)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            options = yaml.safe_load(text)  # safe_load: a !!python tag is refused, never executed
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ConfigError(f"{path} is not valid safe YAML{where}: {' '.join(str(problem).split())}") from None
    else:
        try:
            options = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ConfigError(f"{path} must hold a mapping of option names to values, not {type(options).__name__}")
    return options


def parse_sets(pairs: list[str] | None, config_file: str | None = None, *, flag: str = "--set",
               seed_flag: str = "--seed") -> dict:
    """Options from `flag key=value` pairs (strings), on top of an optional JSON/YAML config file.

    `seed` is refused here: the command's own `seed_flag` seeds the filter, the split and the strategy alike.
    """
    options: dict = read_config_file(config_file) if config_file else {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"{flag} expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        options[key.strip()] = value.strip()
    if "seed" in options:
        where = f"{config_file} or {flag}" if config_file else flag
        raise ConfigError(f"'seed' is not an option for {where}: use {seed_flag}, the one seed of every step")
    return options


def check_seed(args: argparse.Namespace) -> None:
    """--seed must fit the 32-bit generators; --seeds (bench) must be a positive count."""
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"--seed {seed} is out of range: seeds are integers in [0, {MAX_SEED}]")
    seeds = getattr(args, "seeds", None)
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds {seeds}: give at least 1")
