"""Sanitized export: pruned heads zeroed in the weights, written atomically, reloaded with vanilla transformers.

A pruned head's columns of the attention output projection are zeroed (the same function as gate 0), and its
query/key/value rows too where that changes nothing else (with grouped-query attention a key/value head only
when its whole group is pruned). Shapes are kept, so the checkpoint loads anywhere. The folder is written to a
temporary sibling, verified, then swapped in with renames (purify/outputs.py): on any failure the destination
holds the old export or the new one, whole.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .checkpoint import task_from_architectures
from .errors import CheckpointError, ExportError
from .heads import AttentionBlock, HeadGates, find_attention_blocks, pruned_to_mask
from .inference import encode, model_inputs
from .outputs import check_replaceable, collect_stale, pause_point, staged_folder, swap_into_place
from .provenance import provenance

PROBE_FILE = "purify_probe.safetensors"
REPORT_FILE = "purify_report.json"
DEFAULT_PROBE_TEXTS = (
    "the film was a delight from start to finish",
    "a dull, plodding story with nothing to say",
    "I would not watch it again",
    "solid acting and a clever script",
)


def _normalise(pruned: Mapping) -> dict[int, list[int]]:
    return {int(layer): sorted(int(h) for h in heads) for layer, heads in pruned.items() if heads}


def _head_slices(block: AttentionBlock, heads: Sequence[int]) -> list[slice]:
    d = block.head_dim
    return [slice(h * d, (h + 1) * d) for h in heads]


def check_pruned(model: nn.Module, pruned: Mapping[int, list[int]]) -> dict[int, AttentionBlock]:
    """The model's attention blocks by layer, after checking every pruned (layer, head) exists."""
    blocks = {b.layer: b for b in find_attention_blocks(model)}
    for layer, heads in pruned.items():
        if layer not in blocks:
            raise ExportError(f"pruned layer {layer} does not exist (model has {len(blocks)} attention layers)")
        if any(h < 0 or h >= blocks[layer].num_heads for h in heads):
            raise ExportError(f"pruned head out of range in layer {layer}: {heads} "
                              f"(model has {blocks[layer].num_heads})")
    return blocks


def sanitized_state_dict(model: nn.Module, pruned_heads: Mapping) -> dict[str, torch.Tensor]:
    """The model's state dict with every pruned head zeroed (tensors that change are copies; the model is untouched)."""
    pruned = _normalise(pruned_heads)
    state = dict(model.state_dict())
    blocks = check_pruned(model, pruned)
    for layer, heads in pruned.items():
        block = blocks[layer]

        def zero(name: str, dim: int, slices: list[slice]) -> None:
            key = f"{name}.weight"
            if key not in state:
                return
            tensor = state[key].detach().clone()
            for s in slices:
                tensor.narrow(dim, s.start, s.stop - s.start).zero_()
            state[key] = tensor

        def zero_bias(name: str, slices: list[slice]) -> None:
            key = f"{name}.bias"
            if key in state and state[key] is not None:
                tensor = state[key].detach().clone()
                for s in slices:
                    tensor[s] = 0
                state[key] = tensor

        spec, prefix = block.spec, block.name
        q_slices = _head_slices(block, heads)
        # output projection: input columns of the head (Linear weight is (out, in); GPT-2 Conv1D is (in, out))
        zero(block.out_proj_name, 0 if spec.conv1d else 1, q_slices)
        # key/value heads whose whole query group is pruned
        kv_heads = [kv for kv in range(block.num_kv_heads)
                    if all(h in heads for h in range(kv * block.group_size, (kv + 1) * block.group_size))]
        kv_slices = _head_slices(block, kv_heads)
        if spec.fused_qkv:  # GPT-2: c_attn output columns are [q | k | v]
            hidden = block.num_heads * block.head_dim
            fused = [slice(s.start + off, s.stop + off) for off in (0, hidden, 2 * hidden) for s in q_slices]
            zero(f"{prefix}.{spec.fused_qkv}", 1, fused)
            zero_bias(f"{prefix}.{spec.fused_qkv}", fused)
        else:
            for proj, slices in ((spec.q_proj, q_slices), (spec.k_proj, kv_slices), (spec.v_proj, kv_slices)):
                if proj and slices:
                    zero(f"{prefix}.{proj}", 0, slices)
                    zero_bias(f"{prefix}.{proj}", slices)
    return state


def apply_pruning(model: nn.Module, pruned_heads: Mapping) -> None:
    """Zero the pruned heads in the model's own weights, in place."""
    state = sanitized_state_dict(model, pruned_heads)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if state[name] is not tensor:
                tensor.copy_(state[name])


@dataclass
class VerifyResult:
    """Outcome of reloading an exported folder with the vanilla Auto class."""

    ok: bool
    max_abs_diff: float
    pruned_zero: bool
    task: str
    message: str


def _vanilla_load(folder: Path, task: str) -> nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    return cls.from_pretrained(str(folder), use_safetensors=True, trust_remote_code=False,
                               local_files_only=True, attn_implementation="eager").eval()


def verify(path: str | Path, *, atol: float = 1e-4) -> VerifyResult:
    """Reload an exported folder with vanilla transformers; check the probe logits and the zeroed heads."""
    folder = Path(path)
    config_path = folder / "config.json"
    probe_path = folder / PROBE_FILE
    if not config_path.exists():
        raise CheckpointError(f"{folder} has no config.json; is it a purify export?")
    if not probe_path.exists():
        raise CheckpointError(f"{folder} has no {PROBE_FILE}; only folders written by purify can be verified")
    config = json.loads(config_path.read_text())
    task = task_from_architectures(config.get("architectures"))
    if task is None:
        raise CheckpointError(f"{folder}: config.json names no classification or causal-LM architecture")
    model = _vanilla_load(folder, task)
    probe = load_file(str(probe_path))
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits.float()
    diff = float((logits - probe["logits"]).abs().max())
    pruned = _normalise(config.get("purify", {}).get("pruned_heads", {}))
    zero_ok = True
    if pruned:
        blocks = {b.layer: b for b in find_attention_blocks(model)}
        modules = dict(model.named_modules())
        for layer, heads in pruned.items():
            block = blocks[layer]
            weight = modules[block.out_proj_name].weight
            for s in _head_slices(block, heads):
                part = weight[s] if block.spec.conv1d else weight[:, s]
                zero_ok &= bool((part == 0).all())
    ok = diff <= atol and zero_ok
    message = (f"verified: vanilla {type(model).__name__} reproduces the logits (max abs diff {diff:.2e})"
               if ok else f"verification failed: max abs diff {diff:.2e} (tolerance {atol:g}), pruned heads zero: {zero_ok}")
    return VerifyResult(ok=ok, max_abs_diff=diff, pruned_zero=zero_ok, task=task, message=message)


def _model_card(meta: Mapping, report: Mapping | None) -> str:
    pruned = meta.get("pruned_heads", {})
    n_pruned = sum(len(v) for v in pruned.values())
    lines = [
        "---", "library_name: transformers", "tags:", "- purify", "- backdoor-defense", "---", "",
        "# Sanitized checkpoint (purify)", "",
        "This checkpoint was produced by [purify](https://pypi.org/project/purify-backdoor/) from a model that may "
        "have carried a backdoor. It loads with plain `transformers`; no custom code is needed.", "",
        f"- strategy: `{meta.get('strategy', 'none')}`",
        f"- heads pruned: {n_pruned}" + (f" ({json.dumps(pruned)})" if n_pruned else ""),
        f"- git hash: `{meta.get('git_hash')}`",
    ]
    filt = meta.get("filter")
    if filt:
        lines.append(f"- filter: `{filt.get('method')}` kept {filt.get('n_kept')} of {filt.get('n')} samples")
    metrics = (report or {}).get("metrics")
    if metrics:
        lines += ["", "## Before and after", "", "| metric | before | after |", "|---|---|---|"]
        for key in ("cacc", "asr"):
            if key in metrics.get("before", {}):
                lines.append(f"| {key.upper()} | {metrics['before'][key]:.4f} | {metrics['after'][key]:.4f} |")
    lines += ["", "Pruned heads are zeroed columns of the attention output projection, so shapes are unchanged.",
              "The full run record is in `purify_report.json`.", ""]
    return "\n".join(lines)


def _reference_logits(model: nn.Module, batch: Mapping[str, torch.Tensor], pruned: Mapping) -> torch.Tensor:
    """Logits of the sanitized function: the model with every pruned head gated to 0 (on top of any gates)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), HeadGates(model) as gates:
            gates.set(pruned_to_mask(pruned, gates.shape))
            return model(**batch).logits.float().cpu()
    finally:
        model.train(was_training)


def export_checkpoint(
    model: nn.Module,
    tokenizer,
    out_dir: str | Path,
    *,
    pruned_heads: Mapping | None = None,
    metadata: Mapping | None = None,
    report: Mapping | None = None,
    probe_texts: Sequence[str] = DEFAULT_PROBE_TEXTS,
    overwrite: bool = False,
    atol: float = 1e-4,
    extra_files: Mapping[str, Path] | None = None,
) -> VerifyResult:
    """Write `model` (with `pruned_heads` zeroed) as a sanitized folder, verify it, then move it into place.

    The reference is the in-memory model with the pruned heads gated to 0 (the function the sanitized weights
    must reproduce); `metadata` becomes the ``purify`` block of config.json.
    """
    out_dir = Path(out_dir)
    if out_dir.parent.is_dir():
        collect_stale(out_dir.parent)  # what killed exports left beside it: an old export moved aside goes back
    check_replaceable(out_dir, overwrite)
    pruned = _normalise(pruned_heads or {})
    check_pruned(model, pruned)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with staged_folder(out_dir) as stage:
        tmp = stage.staged
        batch = model_inputs(model, encode(tokenizer, list(probe_texts)))
        reference = _reference_logits(model, batch, pruned)
        state = sanitized_state_dict(model, pruned)
        model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        save_file({"input_ids": batch["input_ids"].cpu().contiguous(),
                   "attention_mask": batch["attention_mask"].cpu().contiguous(),
                   "logits": reference.contiguous()}, str(tmp / PROBE_FILE))
        meta = {**(metadata or {}), "pruned_heads": {str(k): v for k, v in pruned.items()}, **provenance()}
        config_path = tmp / "config.json"
        config = json.loads(config_path.read_text())
        config["purify"] = meta
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(_model_card(meta, report))
        for name, src in (extra_files or {}).items():
            dest = tmp / name
            if Path(src).is_dir():
                shutil.copytree(src, dest)
            else:
                shutil.copy2(src, dest)
        pause_point("staging")
        result = verify(tmp, atol=atol)
        full_report = {**(report or {}), "export": {"verify": result.__dict__, "path": str(out_dir)}, **provenance()}
        (tmp / REPORT_FILE).write_text(json.dumps(full_report, indent=2, sort_keys=True, default=str) + "\n")
        if not result.ok:
            raise ExportError(result.message)
        swap_into_place(stage)  # old -> aside, new -> out_dir, old deleted: the old or the new export is whole
        return result


def update_report(folder: str | Path, updates: Mapping) -> dict:
    """Merge `updates` into an export's purify_report.json (written atomically) and return the result."""
    path = Path(folder) / REPORT_FILE
    report = json.loads(path.read_text()) if path.exists() else {}
    report.update(updates)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return report
