"""A content-addressed cache of filter results: the same filter on the same model and data (another strategy on
the same entry, a benchmark row) reads its earlier result instead of recomputing it.

The key hashes everything a result depends on: the bytes of the model folder's files (an adapter's base and a
`reference` checkpoint's too), the data and trusted samples in order, the filter's name and resolved options
(seed included), purify's version and the bytes of its sources, the numeric packages' versions, and the model's
device, dtype and torch's thread count. An entry is JSON under ``cache_root()/filters/<key[:2]>/<key>.json``,
written atomically; one that cannot be read is ignored with a warning and recomputed.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .cachedir import cache_root, private_tmp
from .checkpoint import LoadedModel, _adapter_base
from .data import TaskData
from .device import model_device
from .filters.base import DataFilter, FilterResult, _jsonable
from .loadcheck import first_line
from .probe import BackdoorProbe, TriggerCandidate
from .provenance import package_versions
from .safeload import SAFE_INDEX
from .terminal import warn

#: the entry layout; a change of it (or of the key's parts) bumps it, so old entries are never misread
FORMAT = 1
_CHUNK = 1 << 20
_SOURCES = Path(__file__).resolve().parent


def entry_path(key: str) -> Path:
    """Where the entry of `key` lives."""
    return cache_root() / "filters" / key[:2] / f"{key}.json"


def _update_file(h: Any, path: Path) -> None:
    """Feed `path`'s size and bytes (streamed) into the hash `h`."""
    with open(path, "rb") as fh:
        h.update(f"{os.fstat(fh.fileno()).st_size}\0".encode())
        while chunk := fh.read(_CHUNK):
            h.update(chunk)


def folder_digest(folder: Path) -> str:
    """sha256 of what `load_checkpoint` may read from `folder`: its files, the index's shards, an adapter's base."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if (folder / SAFE_INDEX).is_file():
        shards = json.loads((folder / SAFE_INDEX).read_text()).get("weight_map", {}).values()
        files += sorted({folder / s for s in shards} - set(files))
    for path in files:
        h.update(f"{path.relative_to(folder).as_posix()}\0".encode())
        _update_file(h, path)
    if (folder / "adapter_config.json").is_file():
        base = _adapter_base(folder, json.loads((folder / "adapter_config.json").read_text()))
        h.update(f"base\0{folder_digest(base)}".encode())
    return h.hexdigest()


@lru_cache(maxsize=None)
def code_digest(filter_cls: type) -> str:
    """sha256 of purify's version and its sources (and a plugin filter's module), so a code change never reuses a
    stale result: a git hash would not tell two dirty trees apart."""
    h = hashlib.sha256(f"{__version__}\0".encode())
    named = [(p.relative_to(_SOURCES).as_posix(), p) for p in sorted(_SOURCES.rglob("*.py"))]
    plugin = inspect.getsourcefile(filter_cls)
    if plugin and not Path(plugin).resolve().is_relative_to(_SOURCES):
        named.append((f"plugin:{Path(plugin).name}", Path(plugin)))
    for name, path in named:
        h.update(f"{name}\0".encode())
        _update_file(h, path)
    return h.hexdigest()


def _data_digest(data: TaskData | None) -> str | None:
    """sha256 of the samples' texts and labels in order, and the label names (None without data)."""
    if data is None:
        return None
    h = hashlib.sha256(json.dumps(data.label_names).encode())
    for s in data.samples:
        h.update(b"\n" + json.dumps([s.text, s.label]).encode())
    return h.hexdigest()


def filter_key(filt: DataFilter, loaded: LoadedModel, data: TaskData, trusted: TaskData | None) -> str | None:
    """The cache key of `filt` run on `loaded` with `data` and `trusted`; None for a model held only in memory."""
    if loaded.path is None:
        return None
    reference = filt.config.reference
    param = next(loaded.model.parameters(), None)
    parts = {
        "format": FORMAT, "filter": filt.name, "options": _jsonable(filt.config.to_dict()),
        "model": folder_digest(Path(loaded.path)), "reference": folder_digest(Path(reference)) if reference else None,
        "data": _data_digest(data), "trusted": _data_digest(trusted), "code": code_digest(type(filt)),
        "versions": package_versions(), "device": model_device(loaded.model).type,
        "dtype": str(param.dtype) if param is not None else None, "threads": torch.get_num_threads(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _entry(result: FilterResult, key: str) -> dict[str, Any]:
    """The JSON record of `result` (its kept and removed data are re-derived from the flags on reading)."""
    probe = result.probe
    return {
        "format": FORMAT, "key": key, "scores": [float(s) for s in result.scores],
        "flagged": [bool(f) for f in result.flagged], "threshold": float(result.threshold),
        "threshold_method": result.threshold_method, "method": result.method, "seconds": float(result.seconds),
        "options": _jsonable(result.options), "details": _jsonable(result.details),
        "probe": None if probe is None else {
            "candidates": [_jsonable(asdict(c)) for c in probe.candidates],
            "base_rates": [[int(k), _jsonable(v)] for k, v in probe.base_rates.items()],
            "source": probe.source, "min_rate": _jsonable(probe.min_rate), "flagged": probe.flagged is not None},
    }


def _read(path: Path, key: str, data: TaskData) -> FilterResult:
    """The result stored at `path` for `key`, split over `data`; ValueError (or KeyError, TypeError) when the entry
    is not a complete one of this key."""
    entry = json.loads(path.read_text())
    if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != key:
        raise ValueError("not an entry of this key")
    scores = np.asarray(entry["scores"], dtype=np.float64)
    if not all(isinstance(f, bool) for f in entry["flagged"]):
        raise ValueError("flags are not booleans")
    flagged = np.asarray(entry["flagged"], dtype=bool)
    if scores.shape != (len(data),) or flagged.shape != (len(data),):
        raise ValueError(f"{scores.size} scores and {flagged.size} flags for {len(data)} samples")
    kept = data.subset(np.flatnonzero(~flagged).tolist())
    removed = data.subset(np.flatnonzero(flagged).tolist())
    raw = entry["probe"]
    probe = None if raw is None else BackdoorProbe(
        [TriggerCandidate(**c) for c in raw["candidates"]], {int(k): v for k, v in raw["base_rates"]},
        str(raw["source"]), raw["min_rate"], flagged=removed if raw["flagged"] else None)
    return FilterResult(kept=kept, removed=removed, scores=scores, flagged=flagged, threshold=float(entry["threshold"]),
                        threshold_method=str(entry["threshold_method"]), method=str(entry["method"]),
                        seconds=float(entry["seconds"]), options=dict(entry["options"]),
                        details=dict(entry["details"]), probe=probe, cached_from=str(path))


def _write(path: Path, key: str, result: FilterResult) -> None:
    """Store `result` at `path` atomically (temporary file, then rename); a failure only warns."""
    tmp = private_tmp(path)
    try:
        text = json.dumps(_entry(result, key))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except (OSError, TypeError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        warn(f"could not write the filter cache entry {path} ({first_line(exc)}); the result is not cached")


def cached_run(filt: DataFilter, loaded: LoadedModel, data: TaskData, trusted: TaskData | None, *,
               log: Callable[[str], None] = print) -> FilterResult:
    """`filt.run(loaded, data, trusted)`, read from the cache when this exact run was computed before, else computed
    and stored there."""
    try:
        key = filter_key(filt, loaded, data, trusted)
    except (OSError, ValueError) as exc:
        warn(f"filter cache: cannot fingerprint the inputs ({first_line(exc)}); computing without the cache")
        key = None
    if key is None:
        return filt.run(loaded, data, trusted=trusted)
    path = entry_path(key)
    if path.exists():
        try:
            result = _read(path, key, data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warn(f"ignoring the unreadable filter cache entry {path} ({first_line(exc)}); recomputing")
        else:
            log(f"[purify] filter {filt.name}: reused the cached result {path} (computed in {result.seconds:.1f} s)")
            return result
    result = filt.run(loaded, data, trusted=trusted)
    _write(path, key, result)
    return result
