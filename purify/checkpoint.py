"""Safe loading of an untrusted Hugging Face model folder.

The checkpoint is adversarial by definition: weights come from safetensors only (pickle is refused unless the
caller opts in, and then only with ``torch.load(weights_only=True)``), remote code is never executed, and the
task head is chosen from ``config.architectures``. Every failure is one :class:`CheckpointError` with a
message a user can act on, never a traceback from deep inside transformers.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, UnsafeCheckpointError

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

    model: nn.Module
    tokenizer: object
    task: str  # "classification" or "causal_lm"
    path: Path

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


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _weight_files(folder: Path) -> tuple[list[Path], list[Path]]:
    safetensors = sorted(folder.glob("*.safetensors"))
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    return safetensors, pickles


def _pickle_refusal(folder: Path, pickles: list[Path]) -> UnsafeCheckpointError:
    names = ", ".join(p.name for p in pickles)
    return UnsafeCheckpointError(
        f"{folder} holds only pickle weights ({names}); purify refuses them because unpickling an untrusted "
        "file can execute arbitrary code. Convert them to safetensors in a sandbox you trust "
        "(model.save_pretrained(dir, safe_serialization=True)), or pass --allow-pickle / allow_pickle=True to "
        "load them with torch.load(weights_only=True)."
    )


def _check_config(folder: Path, config: dict) -> None:
    if config.get("auto_map") or config.get("trust_remote_code"):
        raise UnsafeCheckpointError(
            f"{folder}/config.json asks for custom code (auto_map); purify never executes code shipped with a "
            "checkpoint. Use a model whose architecture is built into transformers."
        )
    if "model_type" not in config:
        raise CheckpointError(f"{folder}/config.json has no 'model_type'; it is not a transformers config")


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

    if (folder / "adapter_config.json").exists():
        loaded = _load_adapter(folder, task=task, num_labels=num_labels, allow_pickle=allow_pickle, dtype=dtype)
    else:
        loaded = _load_full(folder, task=task, num_labels=num_labels, allow_pickle=allow_pickle, dtype=dtype)
    loaded.model.to(device).eval()
    return loaded


def _load_full(folder: Path, *, task, num_labels, allow_pickle, dtype) -> LoadedModel:
    from transformers import AutoConfig

    config_path = folder / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{folder} has no config.json; it is not a Hugging Face model folder")
    raw_config = _read_json(config_path)
    _check_config(folder, raw_config)
    chosen = task or task_from_architectures(raw_config.get("architectures"))
    if chosen is None:
        raise CheckpointError(
            f"{folder}/config.json names architectures {raw_config.get('architectures')}, which have no "
            "sequence-classification or causal-LM head; pass task='classification' (with num_labels) to add one"
        )
    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
    except (ValueError, KeyError, OSError) as exc:
        raise CheckpointError(f"{folder}/config.json could not be read by transformers: {_first_line(exc)}") from None
    if num_labels is not None and chosen == "classification":
        if getattr(config, "num_labels", None) != num_labels:
            config.num_labels = num_labels
            config.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
            config.label2id = {v: k for k, v in config.id2label.items()}

    safetensors, pickles = _weight_files(folder)
    index = folder / "model.safetensors.index.json"
    if not safetensors and not index.exists():
        if not pickles:
            raise CheckpointError(f"{folder} holds no weights (*.safetensors)")
        if not allow_pickle:
            raise _pickle_refusal(folder, pickles)
        model = _load_pickled(folder, pickles, config, chosen, dtype)
    else:
        cls = _auto_class(chosen)
        try:
            model = cls.from_pretrained(
                str(folder), config=config, use_safetensors=True, trust_remote_code=False,
                local_files_only=True, dtype=dtype,
            )
        except (ValueError, KeyError, OSError, RuntimeError) as exc:
            raise CheckpointError(f"could not load the weights in {folder}: {_first_line(exc)}") from None
    tokenizer = load_tokenizer(folder)
    _ensure_pad_token(model, tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, task=chosen, path=folder)


def _load_pickled(folder: Path, pickles: list[Path], config, task: str, dtype) -> nn.Module:
    model = _auto_class(task).from_config(config, dtype=dtype)
    state: dict[str, torch.Tensor] = {}
    for file in pickles:
        try:
            part = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses anything but tensors and plain containers
            raise UnsafeCheckpointError(f"{file} is not a plain tensor state dict: {_first_line(exc)}") from None
        if not isinstance(part, dict):
            raise CheckpointError(f"{file} does not hold a state dict")
        state.update(part)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if missing:
        raise CheckpointError(f"{folder}: the pickle weights lack {len(missing)} tensors, e.g. {missing[:3]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def _load_adapter(folder: Path, *, task, num_labels, allow_pickle, dtype) -> LoadedModel:
    from peft import PeftModel

    adapter_config = _read_json(folder / "adapter_config.json")
    base_ref = adapter_config.get("base_model_name_or_path")
    if not base_ref:
        raise CheckpointError(f"{folder}/adapter_config.json names no base_model_name_or_path")
    base_path = Path(base_ref)
    if not base_path.is_absolute():
        base_path = (folder / base_path) if (folder / base_path).exists() else base_path
    if not base_path.is_dir():
        raise CheckpointError(
            f"LoRA adapter {folder} is over base {base_ref!r}, which is not a local folder; purify loads nothing "
            "from a hub. Point base_model_name_or_path at the base model's folder."
        )
    has_safe = (folder / "adapter_model.safetensors").exists()
    if not has_safe and not allow_pickle:
        pickles = [p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise _pickle_refusal(folder, pickles)
        raise CheckpointError(f"{folder} has adapter_config.json but no adapter_model.safetensors")
    base = _load_full(base_path, task=task, num_labels=num_labels, allow_pickle=allow_pickle, dtype=dtype)
    try:
        peft_model = PeftModel.from_pretrained(base.model, str(folder), is_trainable=False)
        merged = peft_model.merge_and_unload()
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"could not apply LoRA adapter {folder}: {_first_line(exc)}") from None
    tokenizer = load_tokenizer(folder) if _has_tokenizer(folder) else base.tokenizer
    return LoadedModel(model=merged, tokenizer=tokenizer, task=base.task, path=folder)


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / n).exists() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))


def load_tokenizer(folder: str | Path):
    """The tokenizer saved in a model folder (never remote code); a clear error when there is none."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not _has_tokenizer(folder):
        raise CheckpointError(f"{folder} has no tokenizer files (tokenizer.json / tokenizer_config.json / vocab.txt)")
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
    except (ValueError, KeyError, OSError, TypeError) as exc:
        raise CheckpointError(f"could not load the tokenizer in {folder}: {_first_line(exc)}") from None


def _ensure_pad_token(model: nn.Module, tokenizer) -> None:
    """Decoder tokenizers often lack a pad token; classification needs one to find each sequence's last token."""
    if getattr(tokenizer, "pad_token", None) is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
