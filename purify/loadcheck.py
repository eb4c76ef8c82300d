"""Checks that keep a hostile config from hanging the loader or making it invent tensors.

Size fields are typed and capped before any config object exists; the layer count and every tensor shape the
config implies are compared with the weights' headers on a meta-device model (no memory) before the real one is
built; after loading, no tensor may be missing (random-initialised) or left over, except a head the caller asked
to add. Everything refused is one `CheckpointError` naming the file and the field or tensors.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

import torch
from safetensors import SafetensorError
from torch import nn

from .errors import CheckpointError, UnsafeCheckpointError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: attention implementations built into transformers; anything else (e.g. a hub kernel repo) is refused
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")
#: exceptions transformers or peft raise on a malformed checkpoint (turned into one CheckpointError line)
LOAD_ERRORS = (ValueError, KeyError, OSError, RuntimeError, TypeError, AttributeError, IndexError, ImportError,
               ArithmeticError, SafetensorError)

_LAYERS, _HEADS, _WIDTH, _FFN, _POSITIONS, _MAX_RANK = 512, 1024, 1 << 16, 1 << 20, 1 << 24, 1 << 12
#: size fields (under any of transformers' names) -> (smallest, largest, may be null)
SIZE_FIELDS: dict[str, tuple[int, int, bool]] = {
    **{k: (1, _LAYERS, False) for k in ("num_hidden_layers", "n_layer", "n_layers", "num_layers")},
    **{k: (1, _HEADS, False) for k in ("num_attention_heads", "n_head", "n_heads")},
    "num_key_value_heads": (1, _HEADS, True),
    **{k: (1, _WIDTH, False) for k in ("hidden_size", "n_embd", "dim", "d_model")},
    **{k: (1, _WIDTH, True) for k in ("embedding_size", "word_embed_proj_dim", "head_dim")},
    **{k: (1, _FFN, True) for k in ("intermediate_size", "n_inner", "hidden_dim", "ffn_dim")},
    "vocab_size": (1, 1 << 22, False),
    "type_vocab_size": (0, 1 << 16, True),
    "num_labels": (1, 1 << 16, False),
    **{k: (1, _POSITIONS, True) for k in ("max_position_embeddings", "n_positions", "sliding_window")},
}
_LAYER_KEY = re.compile(r"(?:^|\.)(?:layers?|h|blocks?)\.(\d+)\.")


def _walk(data: dict, where: str = "") -> Iterator[tuple[str, str, object]]:
    """(dotted path, key, value) of every entry of a JSON object, nested objects included."""
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        yield path, str(key), value
        if isinstance(value, dict):
            yield from _walk(value, path)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def check_raw_config(path: Path, raw: dict) -> None:
    """Refuse custom code, hub attention kernels, and size fields of the wrong type or out of range."""
    if raw.get("auto_map") or raw.get("trust_remote_code"):
        raise UnsafeCheckpointError(
            f"{path} asks for custom code (auto_map); purify never executes code shipped with a checkpoint. "
            "Use a model whose architecture is built into transformers.")
    if not isinstance(raw.get("model_type"), str):
        raise CheckpointError(f"{path} has no 'model_type'; it is not a transformers config")
    architectures = raw.get("architectures")
    if architectures is not None and not (isinstance(architectures, list) and all(
            isinstance(a, str) for a in architectures)):
        raise CheckpointError(f"{path}: 'architectures' must be a list of class names, not {json_repr(architectures)}")
    for where, key, value in _walk(raw):
        if key in ("attn_implementation", "_attn_implementation") and value is not None \
                and value not in ATTN_IMPLEMENTATIONS:
            raise UnsafeCheckpointError(
                f"{path}: '{where}' is {value!r}; purify allows only the attention implementations built into "
                f"transformers ({', '.join(ATTN_IMPLEMENTATIONS)}), never a kernel fetched from a hub")
        if key in SIZE_FIELDS:
            _check_size(path, where, value, *SIZE_FIELDS[key])
    labels = raw.get("id2label")
    if labels is not None and (not isinstance(labels, dict) or len(labels) > SIZE_FIELDS["num_labels"][1]):
        raise CheckpointError(f"{path}: 'id2label' must be an object of at most "
                              f"{SIZE_FIELDS['num_labels'][1]} labels")


def _check_size(path: Path, where: str, value: object, low: int, high: int, nullable: bool) -> None:
    if value is None and nullable:
        return
    if not _is_int(value):
        raise CheckpointError(f"{path}: '{where}' must be an integer, not {json_repr(value)}")
    if not low <= value <= high:
        raise CheckpointError(f"{path}: '{where}' is {value}, outside the sane range {low}..{high}")


def check_adapter_config(path: Path, raw: dict) -> None:
    """LoRA ranks in range: they size the tensors peft builds before the adapter's weights are read."""
    if "r" in raw:
        _check_size(path, "r", raw["r"], 1, _MAX_RANK, False)
    ranks = raw.get("rank_pattern") or {}
    if not isinstance(ranks, dict):
        raise CheckpointError(f"{path}: 'rank_pattern' must be an object")
    for key, value in ranks.items():
        _check_size(path, f"rank_pattern.{key}", value, 1, _MAX_RANK, False)


def json_repr(value: object) -> str:
    """A short rendering of a JSON value for an error line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_field_types(path: Path, raw: dict, config_class) -> None:
    """Each top-level field must have the JSON type of the config class's default (int, float, bool or str);
    a string where a number belongs would otherwise fail deep inside a forward pass."""
    try:
        defaults = config_class()
    except Exception:  # noqa: BLE001 - a class that needs arguments has no defaults to compare with
        return
    for key, value in raw.items():
        default = getattr(defaults, key, None)
        if value is None or default is None or isinstance(default, (list, dict, tuple)):
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = _is_int(value) or (key.endswith("token_id") and isinstance(value, list) and all(map(_is_int, value)))
        elif isinstance(default, float):
            ok = (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            continue
        if not ok:
            raise CheckpointError(f"{path}: '{key}' must be a {type(default).__name__}, not {json_repr(value)}")


def _config_int(config, name: str) -> int | None:
    value = getattr(config, name, None)
    return value if _is_int(value) else None


def weight_layer_count(shapes: Iterable[str]) -> int | None:
    """Number of numbered layers in the weights' tensor names (`...layers.N.`, `...h.N.`), None if none are."""
    indices = [int(m.group(1)) for name in shapes if (m := _LAYER_KEY.search(name))]
    return max(indices) + 1 if indices else None


def check_against_weights(path: Path, config, shapes: dict[str, tuple[int, ...]]) -> None:
    """Layer count and attention heads consistent with the weights, before anything is built."""
    layers = _config_int(config, "num_hidden_layers")
    in_weights = weight_layer_count(shapes)
    if layers is not None and in_weights is not None and layers != in_weights:
        raise CheckpointError(f"{path} says num_hidden_layers={layers} but the weights hold {in_weights} layers")
    hidden, heads = _config_int(config, "hidden_size"), _config_int(config, "num_attention_heads")
    kv_heads = _config_int(config, "num_key_value_heads")
    if hidden and heads and getattr(config, "head_dim", None) is None and hidden % heads:
        raise CheckpointError(f"{path}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    if heads and kv_heads and heads % kv_heads:
        raise CheckpointError(f"{path}: num_attention_heads {heads} is not a multiple of num_key_value_heads "
                              f"{kv_heads}")


def head_keys(model: nn.Module, keys: Iterable[str]) -> set[str]:
    """The keys outside the base model (the task head), which a caller-requested fresh head may lack."""
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    return {k for k in keys if prefix == "." or not k.startswith(prefix)}


def check_meta_model(path: Path, model_class, config, shapes: dict[str, tuple[int, ...]], *, fresh_head: bool,
                     dtype: torch.dtype) -> None:
    """Build the model on the meta device and compare it with the weights: every tensor found under its name must
    have the weights' shape, and the model may not need more numbers than the weights hold (plus a fresh head)."""
    try:
        with torch.device("meta"):
            meta = model_class.from_config(config, dtype=dtype)
    except LOAD_ERRORS as exc:
        raise CheckpointError(f"{path} describes a model transformers cannot build: {first_line(exc)}") from None
    prefix = f"{meta.base_model_prefix}." if getattr(meta, "base_model_prefix", "") else ""
    state = meta.state_dict()
    tied = set(getattr(meta, "all_tied_weights_keys", None) or {})
    absent = []
    for key, tensor in state.items():
        candidates = (key, key[len(prefix):] if prefix and key.startswith(prefix) else None, prefix + key)
        found = next((shapes[c] for c in candidates if c and c in shapes), None)
        if found is None and key not in tied:
            absent.append(key)
        elif found is not None and tuple(tensor.shape) != found:
            raise CheckpointError(f"{path} implies tensor {key} of shape {list(tensor.shape)} but the weights hold "
                                  f"{list(found)}")
    needed = sum(p.numel() for p in meta.parameters())
    allowance = sum(state[k].numel() for k in head_keys(meta, state)) if fresh_head else 0
    held = sum(math.prod(s) for s in shapes.values())
    if needed > held + allowance:
        hint = f"; not in the weights: {_names(absent)}" if absent else ""
        raise CheckpointError(f"{path} describes a model of {needed} parameters but the weights hold only "
                              f"{held}{hint}")


def _ignorable(model: nn.Module, attr: str) -> list[re.Pattern]:
    return [re.compile(p) for p in (getattr(model, attr, None) or [])]


def state_dict_mismatch(model: nn.Module, missing: Iterable[str], unexpected: Iterable[str]
                        ) -> tuple[list[str], list[str]]:
    """`load_state_dict(strict=False)`'s lists, less tied weights and the keys the model class says to ignore."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or [])
    skip_missing = _ignorable(model, "_keys_to_ignore_on_load_missing")
    skip_unexpected = _ignorable(model, "_keys_to_ignore_on_load_unexpected")
    missing = [k for k in missing if k not in tied and not any(p.search(k) for p in skip_missing)]
    unexpected = [k for k in unexpected if not any(p.search(k) for p in skip_unexpected)]
    return missing, unexpected


def _names(keys: list[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:4])
    return shown + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def _tensors(n: int) -> str:
    return f"{n} tensor" + ("" if n == 1 else "s")


def check_loaded_keys(folder: Path, model: nn.Module, missing: Iterable[str], unexpected: Iterable[str], *,
                      fresh_head: bool, what: str = "weights") -> None:
    """Refuse tensors the model needed but the weights lack (they would be random) and tensors nothing uses."""
    missing, unexpected = set(missing), set(unexpected)
    if fresh_head:
        missing -= head_keys(model, missing)
        unexpected -= head_keys(model, unexpected)
    if missing:
        raise CheckpointError(f"{folder}: the {what} lack {_tensors(len(missing))} the config needs "
                              f"({_names(list(missing))}); purify does not fill them with random values")
    if unexpected:
        raise CheckpointError(f"{folder}: the {what} hold {_tensors(len(unexpected))} the config has no place for "
                              f"({_names(list(unexpected))})")


def check_vocab(folder: Path, tokenizer, model: PreTrainedModel) -> None:
    """Every token id the tokenizer can produce must index a row of the embedding matrix."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(getattr(embeddings, "weight", None), "shape", (None,))[0]
    if rows is None:
        return
    ids = list(tokenizer.get_vocab().values()) if hasattr(tokenizer, "get_vocab") else []
    size = max(len(tokenizer), max(ids) + 1 if ids else 0)
    if size > rows:
        raise CheckpointError(f"{folder}: the tokenizer has {size} token ids but the model's embedding matrix has "
                              f"only {rows} rows (vocab_size); ids from {rows} up would index past it")


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, for one-line errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
