"""Verification of an exported folder as named checks, each passed or failed with a one-line reason.

`config`: a readable config.json naming a classification or causal-LM head (else one CheckpointError, no checks).
`files_sha256`: every file matches the sha256 the report recorded at export, none added or missing.
`no_custom_code`: no `auto_map` / `custom_pipelines` hook in any JSON config, no Python file anywhere.
`safetensors_only`: no pickle weight file. `pruned_heads_zero`: every head of the config's purify block is zero
in the safetensors themselves. `tokenizer_probe`: the folder's tokenizer turns the recorded probe texts into the
recorded ids. `probe_logits`: vanilla transformers reproduces the recorded probe logits.

The hashes live in the same folder, so they catch accidents and naive edits, not someone who rewrites the report
as well; the content checks (custom code, pickle, pruned heads, tokenizer) hold either way.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .checkpoint import PICKLE_SUFFIXES, task_from_architectures
from .errors import CheckpointError, PurifyError
from .heads import find_attention_blocks, pruned_regions

PROBE_FILE = "purify_probe.safetensors"
REPORT_FILE = "purify_report.json"
HASHES_KEY = "files_sha256"  # the report's {relative path: sha256} of every other file of the export
PROBE_TEXTS_KEY = "texts"  # the probe file's metadata entry holding the probe texts (a JSON list)
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".so")
CODE_HOOKS = ("auto_map", "custom_pipelines")
_SHOWN = 4  # names listed per problem in a detail line


class Check(NamedTuple):
    """One named verification check (a NamedTuple, so the report stores it as [name, passed, detail])."""

    name: str
    passed: bool
    detail: str


@dataclass
class VerifyResult:
    """Outcome of every check on an exported folder; `ok` when all passed."""

    ok: bool
    max_abs_diff: float | None
    pruned_zero: bool
    task: str
    message: str
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        """The checks that did not pass."""
        return [c for c in self.checks if not c.passed]


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _names(items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in blocks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _files(folder: Path) -> list[str]:
    """Relative paths of every file under `folder` (symlinks to files included), sorted."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in names:
            path = Path(root) / name
            if path.is_file():
                found.append(path.relative_to(folder).as_posix())
    return sorted(found)


def file_hashes(folder: str | Path) -> dict[str, str]:
    """sha256 of every file of an export folder except the report (written last, it holds these hashes)."""
    folder = Path(folder)
    return {rel: sha256_file(folder / rel) for rel in _files(folder) if rel != REPORT_FILE}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None


def read_config(folder: Path) -> tuple[dict, str]:
    """config.json as a dict and its task; one CheckpointError when it is missing, not JSON or names no head."""
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; is it a purify export?")
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json; is it a purify export?")
    config = _read_json(path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(config).__name__}")
    archs = config.get("architectures")
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise CheckpointError(f"{path}: 'architectures' must be a list of class names")
    task = task_from_architectures(archs)
    if task is None:
        raise CheckpointError(f"{path} names no classification or causal-LM architecture ({archs})")
    return config, task


def check_hashes(folder: Path, expected: Mapping[str, str] | None = None) -> Check:
    """Every file matches the recorded sha256 (the report's, unless `expected` is given); none added or missing."""
    if expected is None:
        if not (folder / REPORT_FILE).is_file():
            return Check(HASHES_KEY, False, f"no {REPORT_FILE}, so no recorded hashes")
        report = _read_json(folder / REPORT_FILE)
        expected = report.get(HASHES_KEY) if isinstance(report, dict) else None
        if expected is None:
            return Check(HASHES_KEY, False, f"{REPORT_FILE} records no file hashes (export again with this purify)")
    if not isinstance(expected, Mapping) or not all(isinstance(v, str) for v in expected.values()):
        return Check(HASHES_KEY, False, f"{REPORT_FILE}: {HASHES_KEY} is not a mapping of paths to sha256 digests")
    actual = file_hashes(folder)
    changed = sorted(k for k in expected if k in actual and actual[k] != expected[k])
    missing = sorted(k for k in expected if k not in actual)
    added = sorted(k for k in actual if k not in expected)
    problems = [f"{what}: {_names(items)}" for what, items in
                (("changed", changed), ("missing", missing), ("not recorded", added)) if items]
    if problems:
        return Check(HASHES_KEY, False, "; ".join(problems))
    return Check(HASHES_KEY, True, f"{len(actual)} files match their recorded sha256")


def check_custom_code(folder: Path) -> Check:
    """No custom-code hook in any JSON config of the folder and no Python (or native) code file anywhere."""
    problems = []
    for path in sorted(folder.glob("*.json")):
        if path.name == REPORT_FILE or not path.is_file():
            continue
        try:
            data = _read_json(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        hooks = [k for k in CODE_HOOKS if isinstance(data, dict) and k in data]
        problems += [f"{path.name} has {k!r}" for k in hooks]
    code = [rel for rel in _files(folder) if rel.lower().endswith(CODE_SUFFIXES)]
    if code:
        problems.append(f"code files: {_names(code)}")
    if problems:
        return Check("no_custom_code", False, "; ".join(problems))
    return Check("no_custom_code", True, "no auto_map and no code file")


def check_no_pickle(folder: Path) -> Check:
    """No pickle weight file (unpickling executes code)."""
    pickles = [rel for rel in _files(folder) if Path(rel).suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        return Check("safetensors_only", False, f"pickle files: {_names(pickles)}")
    return Check("safetensors_only", True, "weights are safetensors only")


def _pruned_block(config: dict) -> dict[int, list[int]]:
    meta = config.get("purify")
    if not isinstance(meta, dict):
        raise CheckpointError("config.json has no purify block; is it a purify export?")
    raw = meta.get("pruned_heads", {})
    try:
        if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
            raise TypeError
        return {int(layer): sorted({int(h) for h in heads}) for layer, heads in raw.items() if heads}
    except (TypeError, ValueError):
        raise CheckpointError(f"purify.pruned_heads must map layer numbers to lists of heads, got {raw!r}"[:200]) \
            from None


def _skeleton(folder: Path, task: str) -> torch.nn.Module:
    """The model class the config names, built on the meta device (no weights read, no memory used)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    cls = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    with torch.device("meta"):
        return cls.from_config(cfg)


def _weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file holding it (a sharded index or the single model.safetensors)."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map", {})
        root = folder.resolve()
        return {str(k): folder / str(v) for k, v in weight_map.items()  # shards inside the folder only
                if (folder / str(v)).resolve().is_relative_to(root) and (folder / str(v)).is_file()}
    single = folder / "model.safetensors"
    if not single.is_file():
        raise CheckpointError(f"{folder} has no model.safetensors")
    with safe_open(str(single), "pt") as fh:
        return {name: single for name in fh.keys()}


def check_pruned_zero(folder: Path, config: dict, task: str) -> Check:
    """Every (layer, head) listed in the purify block is zero in the safetensors, in every region export zeroes."""
    from safetensors import safe_open

    pruned = _pruned_block(config)
    if not pruned:
        return Check("pruned_heads_zero", True, "no heads pruned")
    blocks = {b.layer: b for b in find_attention_blocks(_skeleton(folder, task))}
    for layer, heads in pruned.items():
        if layer not in blocks:
            raise CheckpointError(f"pruned layer {layer} does not exist (the model has {len(blocks)} attention layers)")
        if heads[0] < 0 or heads[-1] >= blocks[layer].num_heads:
            raise CheckpointError(f"pruned head out of range in layer {layer}: {heads} "
                                  f"(the model has {blocks[layer].num_heads} heads)")
    files = _weight_files(folder)
    nonzero = []
    for layer, heads in pruned.items():
        for n, (key, dim, slices) in enumerate(pruned_regions(blocks[layer], heads)):
            if key not in files:
                if n == 0:  # the output projection is what makes a head pruned; it must be there
                    raise CheckpointError(f"{key} is not in the safetensors")
                continue
            with safe_open(str(files[key]), "pt") as fh:
                tensor = fh.get_tensor(key)
            count = sum(int(tensor.narrow(dim, s.start, s.stop - s.start).count_nonzero()) for s in slices)
            if count:
                nonzero.append(f"layer {layer} {key.removeprefix(blocks[layer].name + '.')} ({count} nonzero)")
    n_heads = sum(len(h) for h in pruned.values())
    if nonzero:
        return Check("pruned_heads_zero", False, f"pruned heads are not zero: {_names(nonzero)}")
    return Check("pruned_heads_zero", True, f"{n_heads} pruned head{'s' if n_heads != 1 else ''} zero in the weights")


def _read_probe(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    path = folder / PROBE_FILE
    if not path.is_file():
        raise CheckpointError(f"no {PROBE_FILE}; only folders written by purify can be verified")
    try:
        with safe_open(str(path), "pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            metadata = dict(fh.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a corrupt file
        raise CheckpointError(f"{PROBE_FILE} is unreadable ({_one_line(exc)[:120]})") from None
    missing = [k for k in ("input_ids", "attention_mask", "logits") if k not in tensors]
    if missing:
        raise CheckpointError(f"{PROBE_FILE} lacks {', '.join(missing)}")
    return tensors, metadata


def check_tokenizer(folder: Path) -> Check:
    """The folder's tokenizer turns the probe texts recorded at export into the recorded input ids."""
    from transformers import AutoTokenizer

    from .inference import encode

    probe, metadata = _read_probe(folder)
    try:
        texts = json.loads(metadata[PROBE_TEXTS_KEY])
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError
    except (KeyError, ValueError):
        return Check("tokenizer_probe", False, f"{PROBE_FILE} records no probe texts (export again with this purify)")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    batch = encode(tokenizer, texts)
    same = all(batch[k].shape == probe[k].shape and bool((batch[k] == probe[k]).all())
               for k in ("input_ids", "attention_mask"))
    if not same:
        return Check("tokenizer_probe", False, "the tokenizer does not reproduce the probe's input ids")
    return Check("tokenizer_probe", True, f"{type(tokenizer).__name__} reproduces the probe's input ids")


def _vanilla_load(folder: Path, task: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    return cls.from_pretrained(str(folder), use_safetensors=True, trust_remote_code=False,
                               local_files_only=True, attn_implementation="eager").eval()


def check_probe(folder: Path, task: str, atol: float, facts: dict[str, Any]) -> Check:
    """Vanilla transformers reproduces the probe logits within `atol` (`facts` gets the diff and the class name)."""
    probe, _ = _read_probe(folder)
    model = _vanilla_load(folder, task)
    facts["model"] = type(model).__name__
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits.float()
    if logits.shape != probe["logits"].shape:
        return Check("probe_logits", False, f"logits shape {tuple(logits.shape)}, the probe recorded "
                                            f"{tuple(probe['logits'].shape)}")
    diff = facts["diff"] = float((logits - probe["logits"].float()).abs().max())
    if not diff <= atol:
        return Check("probe_logits", False, f"max abs diff {diff:.2e} over the tolerance {atol:g}")
    return Check("probe_logits", True, f"vanilla {facts['model']} reproduces the logits (max abs diff {diff:.2e})")


def _run(name: str, fn: Callable[[], Check]) -> Check:
    """Run one check; any error (a hostile folder can make loaders raise anything) is that check failing."""
    try:
        return fn()
    except PurifyError as exc:
        return Check(name, False, _one_line(exc))
    except Exception as exc:  # noqa: BLE001 - reported as a failed check, never a traceback
        return Check(name, False, _one_line(f"{type(exc).__name__}: {exc}")[:300])


def verify(path: str | Path, *, atol: float = 1e-4, hashes: Mapping[str, str] | None = None) -> VerifyResult:
    """Run every check on an exported folder (`hashes` replaces the report's record, as export does before
    writing the report); a folder whose config.json is missing or unreadable is one CheckpointError."""
    folder = Path(path)
    config, task = read_config(folder)
    custom_code = _run("no_custom_code", lambda: check_custom_code(folder))
    checks = [Check("config", True, f"{', '.join(config['architectures'])} ({task})"),
              _run(HASHES_KEY, lambda: check_hashes(folder, hashes)), custom_code,
              _run("safetensors_only", lambda: check_no_pickle(folder)),
              _run("pruned_heads_zero", lambda: check_pruned_zero(folder, config, task))]
    facts: dict[str, Any] = {"diff": None, "model": "model"}
    if custom_code.passed:  # never hand a folder with custom-code hooks to transformers
        checks += [_run("tokenizer_probe", lambda: check_tokenizer(folder)),
                   _run("probe_logits", lambda: check_probe(folder, task, atol, facts))]
    else:
        checks += [Check(n, False, "not run: the folder carries custom code") for n in ("tokenizer_probe",
                                                                                         "probe_logits")]
    failed = [c for c in checks if not c.passed]
    pruned_zero = next(c.passed for c in checks if c.name == "pruned_heads_zero")
    if failed:
        message = "verification failed: " + "; ".join(f"{c.name} ({c.detail})" for c in failed)
    else:
        message = (f"verified: vanilla {facts['model']} reproduces the logits (max abs diff {facts['diff']:.2e}); "
                   f"all {len(checks)} checks passed")
    return VerifyResult(ok=not failed, max_abs_diff=facts["diff"], pruned_zero=pruned_zero, task=task, message=message,
                        checks=checks)
