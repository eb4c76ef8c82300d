"""File-level checks on an untrusted model folder, made before transformers opens anything in it.

Every file read must be a regular file inside the folder (no symlink out of it, no device or pipe) of bounded
size; shard paths in the index must stay inside the folder; safetensors headers are read (names and shapes, no
tensor data) so that the config can be checked against the weights before a model is built.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path, PurePath

from safetensors import SafetensorError, safe_open

from .errors import CheckpointError, UnsafeCheckpointError

MIB = 1 << 20
CONFIG_MAX_BYTES = 4 * MIB
INDEX_MAX_BYTES = 32 * MIB
TOKENIZER_MAX_BYTES = 64 * MIB
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
    "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "chat_template.jinja", "chat_template.json",
)
#: every side file transformers or peft may read from a model folder, with the most bytes it may have
SIDE_FILES: dict[str, int] = {
    "config.json": CONFIG_MAX_BYTES, "generation_config.json": CONFIG_MAX_BYTES,
    "adapter_config.json": CONFIG_MAX_BYTES, SAFE_INDEX: INDEX_MAX_BYTES,
    **{name: TOKENIZER_MAX_BYTES for name in TOKENIZER_FILES},
}

Shapes = dict[str, tuple[int, ...]]


def inside_file(folder: Path, name: str, *, max_bytes: int | None = None) -> Path | None:
    """`folder/name`, or None when it does not exist; refused unless it is a regular file inside `folder`
    (a symlink may point only to another file in the folder) of at most `max_bytes` bytes."""
    path = folder / name
    if not os.path.lexists(path):
        return None
    try:
        real = path.resolve(strict=True)
        root = folder.resolve(strict=True)
        info = os.stat(real)
    except (OSError, RuntimeError) as exc:  # a dangling link or a symlink loop
        raise CheckpointError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not real.is_relative_to(root):
        raise UnsafeCheckpointError(f"{path} points outside the model folder (to {real}); purify reads only the "
                                    "folder's own files")
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeCheckpointError(f"{path} is not a regular file; purify reads only plain files")
    if max_bytes is not None and info.st_size > max_bytes:
        raise CheckpointError(f"{path} is {info.st_size} bytes, more than the {max_bytes} bytes a "
                              f"{PurePath(name).name} may have")
    return path


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def read_json_object(path: Path) -> dict:
    """The JSON object in `path` (already checked by `inside_file`); one clear error for anything else."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc if isinstance(exc, ValueError) else 'nested too deep'})"
                              ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not a {type(data).__name__}")
    return data


def read_side_json(folder: Path, name: str) -> dict | None:
    """A side JSON file of the folder (None when absent), checked and bounded as `SIDE_FILES` says."""
    path = inside_file(folder, name, max_bytes=SIDE_FILES.get(name, CONFIG_MAX_BYTES))
    return None if path is None else read_json_object(path)


def check_side_files(folder: Path, names: tuple[str, ...] | None = None) -> None:
    """Refuse any side file (config, tokenizer, index, ...) that is not a bounded regular file inside `folder`."""
    for name in names or tuple(SIDE_FILES):
        inside_file(folder, name, max_bytes=SIDE_FILES[name])


def read_header(path: Path) -> Shapes:
    """Tensor names and shapes from a safetensors header; no tensor data is read."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file ({reason})") from None


def _index_shards(folder: Path, index_path: Path) -> dict[str, str]:
    """The index's weight map (tensor name -> shard file), every shard a file inside the folder."""
    weight_map = read_json_object(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise CheckpointError(f"{index_path} has no 'weight_map' from tensor names to shard files")
    for shard in sorted(set(weight_map.values())):
        parts = PurePath(shard).parts
        if PurePath(shard).is_absolute() or ".." in parts or not shard.endswith(".safetensors"):
            raise UnsafeCheckpointError(f"{index_path} names shard {shard!r}: shards must be .safetensors files "
                                        "inside the model folder")
        if inside_file(folder, shard) is None:
            raise CheckpointError(f"{index_path} names shard {shard!r}, which is not in {folder}")
    return weight_map


def safetensors_shapes(folder: Path) -> Shapes | None:
    """Names and shapes of the folder's safetensors weights (model.safetensors, else the index's shards), checked
    file by file; None when the folder holds neither."""
    single = inside_file(folder, SAFE_WEIGHTS)
    if single is not None:
        return read_header(single)
    index_path = inside_file(folder, SAFE_INDEX, max_bytes=INDEX_MAX_BYTES)
    if index_path is None:
        return None
    weight_map = _index_shards(folder, index_path)
    shapes: Shapes = {}
    by_shard: dict[str, Shapes] = {shard: read_header(folder / shard) for shard in set(weight_map.values())}
    for name, shard in weight_map.items():
        if name not in by_shard[shard]:
            raise CheckpointError(f"{index_path} puts tensor {name!r} in {shard}, which does not hold it")
        shapes[name] = by_shard[shard][name]
    return shapes


def strip_auto_map(path: Path) -> None:
    """Remove any `auto_map` (custom-code pointer) from a JSON file that purify writes, atomically."""
    if not path.exists():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and "auto_map" in data:
        del data["auto_map"]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
