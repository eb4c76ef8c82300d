"""Safe loading of an untrusted Hugging Face model folder.

The checkpoint is adversarial by definition: weights come from safetensors only (pickle is refused unless the
caller opts in, and then only with ``torch.load(weights_only=True)``), remote code is never executed, and the
task head is chosen from ``config.architectures``. Loading is strict: files are checked and the config bounded
against the weights' headers before a model is built (`safeload`, `loadcheck`), and a tensor missing from the
weights or left over in them is an error, never a silent random initialisation. Every failure is one
:class:`CheckpointError` with a message a user can act on, never a traceback from deep inside transformers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import CheckpointError, UnsafeCheckpointError
from .loadcheck import (
    LOAD_ERRORS, check_adapter_config, check_against_weights, check_field_types, check_loaded_keys,
    check_meta_model, check_raw_config, check_vocab, first_line, state_dict_mismatch,
)
from .safeload import (
    CONFIG_MAX_BYTES, TOKENIZER_FILES, check_side_files, inside_file, read_header, read_json_object, read_side_json,
    safetensors_shapes,
)

if TYPE_CHECKING:
    from torch.nn.modules.module import _IncompatibleKeys
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a hub


def quiet_transformers() -> None:
    """Silence transformers' own progress bars and info logs; purify shows its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


quiet_transformers()

TASKS = ("classification", "causal_lm")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@dataclass
class LoadedModel:
    """A model, its tokenizer, and what kind of head it has."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    task: str  # "classification" or "causal_lm"
    path: Path | None  # None for a model built in memory (tests, teachers)

    @property
    def model_type(self) -> str:
        return str(self.model.config.model_type)


def task_from_architectures(architectures: list[str] | None) -> str | None:
    """'classification' for *ForSequenceClassification, 'causal_lm' for *ForCausalLM / *LMHeadModel, else None."""
    for arch in architectures or []:
        if arch.endswith("ForSequenceClassification"):
            return "classification"
        if arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel"):
            return "causal_lm"
    return None


def _auto_class(task: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM


def _pickle_refusal(folder: Path, pickles: list[Path]) -> UnsafeCheckpointError:
    names = ", ".join(p.name for p in pickles)
    return UnsafeCheckpointError(
        f"{folder} holds only pickle weights ({names}); purify refuses them because unpickling an untrusted "
        "file can execute arbitrary code. Convert them to safetensors in a sandbox you trust "
        "(model.save_pretrained(dir, safe_serialization=True)), or pass --allow-pickle / allow_pickle=True to "
        "load them with torch.load(weights_only=True)."
    )


def load_checkpoint(
    path: str | Path,
    *,
    task: str | None = None,
    num_labels: int | None = None,
    allow_pickle: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> LoadedModel:
    """Load a model folder (or a PEFT LoRA adapter folder over a local base, merged on load) safely.

    `task` overrides the head chosen from ``config.architectures`` (needed for a bare encoder such as a
    sentence-embedding model, which is then given a fresh `num_labels` classification head).
    """
    from .device import select_device

    folder = Path(path)
    if not folder.exists():
        raise CheckpointError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; purify loads Hugging Face model folders")
    if task is not None and task not in TASKS:
        raise CheckpointError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    device = select_device(str(device) if device is not None else None)

    if os.path.lexists(folder / "adapter_config.json"):
        loaded = _load_adapter(folder, task=task, num_labels=num_labels, allow_pickle=allow_pickle, dtype=dtype)
    else:
        loaded = _load_full(folder, task=task, num_labels=num_labels, allow_pickle=allow_pickle, dtype=dtype)
    check_vocab(folder, loaded.tokenizer, loaded.model)
    loaded.model.to(device).eval()  # type: ignore[arg-type]  # @wraps(Module.to) in transformers hides self
    return loaded


def _read_config(folder: Path, task: str | None, num_labels: int | None):
    """The folder's config, checked and bounded before transformers sees it; with the chosen task and whether
    the caller asked for a head the checkpoint does not have (a fresh head may be missing from the weights)."""
    from transformers import CONFIG_MAPPING

    path = inside_file(folder, "config.json", max_bytes=CONFIG_MAX_BYTES)
    if path is None:
        raise CheckpointError(f"{folder} has no config.json; it is not a Hugging Face model folder")
    raw = read_json_object(path)
    check_raw_config(path, raw)
    named = task_from_architectures(raw.get("architectures"))
    chosen = task or named
    if chosen is None:
        raise CheckpointError(
            f"{path} names architectures {raw.get('architectures')}, which have no "
            "sequence-classification or causal-LM head; pass task='classification' (with num_labels) to add one"
        )
    if raw["model_type"] not in CONFIG_MAPPING:
        raise CheckpointError(f"{path} could not be read by transformers: unknown model_type {raw['model_type']!r}")
    config_class = CONFIG_MAPPING[raw["model_type"]]
    check_field_types(path, raw, config_class)
    try:
        config = config_class.from_dict(dict(raw))
    except LOAD_ERRORS as exc:
        raise CheckpointError(f"{path} could not be read by transformers: {first_line(exc)}") from None
    if num_labels is not None and chosen == "classification":
        if getattr(config, "num_labels", None) != num_labels:
            config.num_labels = num_labels
            config.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
            config.label2id = {v: k for k, v in config.id2label.items()}
    return config, chosen, task is not None and task != named


def _load_full(folder: Path, *, task, num_labels, allow_pickle, dtype) -> LoadedModel:
    config, chosen, fresh_head = _read_config(folder, task, num_labels)
    check_side_files(folder)
    cls = _auto_class(chosen)
    shapes = safetensors_shapes(folder)
    if shapes is not None:
        model = _load_safetensors(folder, cls, config, shapes, fresh_head, dtype)
    else:
        pickles = _pickle_files(folder)
        if not pickles:
            raise CheckpointError(f"{folder} holds no weights (model.safetensors or model.safetensors.index.json)")
        if not allow_pickle:
            raise _pickle_refusal(folder, pickles)
        model = _load_pickled(folder, pickles, cls, config, fresh_head, dtype)
    tokenizer = load_tokenizer(folder)
    _ensure_pad_token(model, tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, task=chosen, path=folder)


def _bound(folder: Path, cls, config, shapes, fresh_head: bool, dtype) -> None:
    """The config must match the weights (layers, heads, every shape) before a real model is built."""
    check_against_weights(folder / "config.json", config, shapes)
    check_meta_model(folder / "config.json", cls, config, shapes, fresh_head=fresh_head, dtype=dtype)


def _load_safetensors(folder: Path, cls, config, shapes, fresh_head: bool, dtype) -> PreTrainedModel:
    _bound(folder, cls, config, shapes, fresh_head, dtype)
    try:
        model, info = cls.from_pretrained(
            str(folder), config=config, use_safetensors=True, trust_remote_code=False,
            local_files_only=True, dtype=dtype, output_loading_info=True,
        )
    except LOAD_ERRORS as exc:
        raise CheckpointError(f"could not load the weights in {folder}: {first_line(exc)}") from None
    problems = [*map(str, info.get("error_msgs") or []), *map(str, info.get("mismatched_keys") or [])]
    if problems:
        raise CheckpointError(f"could not load the weights in {folder}: {problems[0].splitlines()[0]}")
    check_loaded_keys(folder, model, info["missing_keys"], info["unexpected_keys"], fresh_head=fresh_head)
    return model


def _pickle_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and (p.is_file() or p.is_symlink()))


def _torch_load_state(folder: Path, pickles: list[Path]) -> dict[str, torch.Tensor]:
    """Tensors from pickle files, with `torch.load(weights_only=True)` (which refuses anything but plain data)."""
    state: dict[str, torch.Tensor] = {}
    for file in pickles:
        inside_file(folder, file.name)
        try:
            part = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - weights_only refuses anything but tensors and plain containers
            raise UnsafeCheckpointError(f"{file} is not a plain tensor state dict: torch.load(weights_only=True) "
                                        f"refused it ({type(exc).__name__})") from None
        if not isinstance(part, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in part.items()):
            raise CheckpointError(f"{file} does not hold a state dict of named tensors")
        state.update(part)
    return state


def _load_pickled(folder: Path, pickles: list[Path], cls, config, fresh_head: bool, dtype) -> PreTrainedModel:
    state = _torch_load_state(folder, pickles)
    _bound(folder, cls, config, {k: tuple(v.shape) for k, v in state.items()}, fresh_head, dtype)
    try:
        model = cls.from_config(config, dtype=dtype)
        missing, unexpected = model.load_state_dict(state, strict=False)
    except LOAD_ERRORS as exc:
        raise CheckpointError(f"could not load the pickle weights in {folder}: {first_line(exc)}") from None
    missing, unexpected = state_dict_mismatch(model, missing, unexpected)
    check_loaded_keys(folder, model, missing, unexpected, fresh_head=fresh_head, what="pickle weights")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def _adapter_base(folder: Path, adapter_config: dict) -> Path:
    """The local base folder an adapter names (never a hub id)."""
    base_ref = adapter_config.get("base_model_name_or_path")
    if not base_ref or not isinstance(base_ref, str):
        raise CheckpointError(f"{folder}/adapter_config.json names no base_model_name_or_path")
    base_path = Path(base_ref)
    if not base_path.is_absolute():
        base_path = (folder / base_path) if (folder / base_path).exists() else base_path
    if not base_path.is_dir():
        raise CheckpointError(
            f"LoRA adapter {folder} is over base {base_ref!r}, which is not a local folder; purify loads nothing "
            "from a hub. Point base_model_name_or_path at the base model's folder."
        )
    return base_path


def _adapter_state(folder: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """The adapter's tensors: adapter_model.safetensors, else (only with allow_pickle) adapter_model.bin."""
    from safetensors.torch import load_file

    safe = inside_file(folder, "adapter_model.safetensors")
    if safe is not None:
        read_header(safe)  # a truncated or garbage file gets one clear error
        try:
            return load_file(str(safe))
        except LOAD_ERRORS as exc:
            raise CheckpointError(f"{safe} is not a readable safetensors file: {first_line(exc)}") from None
    pickles = [p for p in _pickle_files(folder) if p.stem == "adapter_model"]
    if not pickles:
        raise CheckpointError(f"{folder} has adapter_config.json but no adapter_model.safetensors")
    if not allow_pickle:
        raise _pickle_refusal(folder, pickles)
    return _torch_load_state(folder, pickles)


def _load_adapter(folder: Path, *, task, num_labels, allow_pickle, dtype) -> LoadedModel:
    from peft import PeftConfig, PeftModel, set_peft_model_state_dict

    config_path = inside_file(folder, "adapter_config.json", max_bytes=CONFIG_MAX_BYTES)
    assert config_path is not None  # load_checkpoint comes here only when the file exists
    adapter_config = read_json_object(config_path)
    check_adapter_config(config_path, adapter_config)
    base_path = _adapter_base(folder, adapter_config)
    check_side_files(folder)
    state = _adapter_state(folder, allow_pickle)
    base = _load_full(base_path, task=task, num_labels=num_labels, allow_pickle=allow_pickle, dtype=dtype)
    try:
        peft_config = PeftConfig.from_pretrained(str(folder))
        peft_config.inference_mode = True
        peft_model = PeftModel(base.model, peft_config)
        result: _IncompatibleKeys = set_peft_model_state_dict(peft_model, state)  # peft hints a bare namedtuple
        missing = [k for k in result.missing_keys if ".default." in k or k.endswith(".default")]
        check_loaded_keys(folder, peft_model, missing, result.unexpected_keys, fresh_head=False,
                          what="adapter weights")
        merged = peft_model.merge_and_unload()
    except LOAD_ERRORS as exc:
        raise CheckpointError(f"could not apply LoRA adapter {folder}: {first_line(exc)}") from None
    tokenizer = load_tokenizer(folder) if _has_tokenizer(folder) else base.tokenizer
    return LoadedModel(model=merged, tokenizer=tokenizer, task=base.task, path=folder)


def _has_tokenizer(folder: Path) -> bool:
    return any(os.path.lexists(folder / n) for n in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))


def load_tokenizer(folder: str | Path):
    """The tokenizer saved in a model folder (never remote code); a clear error when there is none."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    check_side_files(folder, (*TOKENIZER_FILES, "config.json"))
    if not _has_tokenizer(folder):
        raise CheckpointError(f"{folder} has no tokenizer files (tokenizer.json / tokenizer_config.json / vocab.txt)")
    for name in ("tokenizer_config.json", "config.json"):  # AutoTokenizer honours an auto_map in either
        data = read_side_json(folder, name)
        if data is not None and data.get("auto_map"):
            raise UnsafeCheckpointError(f"{folder / name} asks for custom tokenizer code (auto_map); purify never "
                                        "executes code shipped with a checkpoint")
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises a bare Exception on a malformed file
        raise CheckpointError(f"could not load the tokenizer in {folder}: {first_line(exc)}") from None


def _ensure_pad_token(model: PreTrainedModel, tokenizer) -> None:
    """Decoder tokenizers often lack a pad token; classification needs one to find each sequence's last token."""
    if getattr(tokenizer, "pad_token", None) is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
