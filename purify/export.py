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
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import nn

from .card import model_card
from .errors import ExportError
from .heads import AttentionBlock, HeadGates, find_attention_blocks, pruned_regions, pruned_to_mask
from .inference import encode, model_inputs
from .outputs import check_replaceable, collect_stale, pause_point, staged_folder, swap_into_place
from .provenance import provenance
from .safeload import strip_auto_map
# verify (and its file names) live in purify.verify; importing them here keeps `from purify.export import verify`
from .verify import HASHES_KEY, PROBE_FILE, PROBE_TEXTS_KEY, REPORT_FILE, VerifyResult, file_hashes, verify

if TYPE_CHECKING:
    from transformers import PreTrainedModel

DEFAULT_PROBE_TEXTS = (
    "the film was a delight from start to finish",
    "a dull, plodding story with nothing to say",
    "I would not watch it again",
    "solid acting and a clever script",
)


def _normalise(pruned: Mapping) -> dict[int, list[int]]:
    return {int(layer): sorted(int(h) for h in heads) for layer, heads in pruned.items() if heads}


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
        for key, dim, slices in pruned_regions(blocks[layer], heads):
            if state.get(key) is None:
                continue
            tensor = state[key].detach().clone()
            for s in slices:
                tensor.narrow(dim, s.start, s.stop - s.start).zero_()
            state[key] = tensor
    return state


def apply_pruning(model: nn.Module, pruned_heads: Mapping) -> None:
    """Zero the pruned heads in the model's own weights, in place."""
    state = sanitized_state_dict(model, pruned_heads)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if state[name] is not tensor:
                tensor.copy_(state[name])




def _reference_logits(model: PreTrainedModel, batch: Mapping[str, torch.Tensor], pruned: Mapping) -> torch.Tensor:
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
    model: PreTrainedModel,
    tokenizer,
    out_dir: str | Path,
    *,
    pruned_heads: Mapping | None = None,
    metadata: Mapping | None = None,
    report: Mapping | None = None,
    probe_texts: Sequence[str] = DEFAULT_PROBE_TEXTS,
    overwrite: bool = False,
    atol: float = 1e-4,
    extra_files: Mapping[str, str | Path] | None = None,
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
        strip_auto_map(tmp / "tokenizer_config.json")  # a sanitized export never points at custom code
        save_file({"input_ids": batch["input_ids"].cpu().contiguous(),
                   "attention_mask": batch["attention_mask"].cpu().contiguous(),
                   "logits": reference.contiguous()}, str(tmp / PROBE_FILE),
                  metadata={PROBE_TEXTS_KEY: json.dumps(list(probe_texts))})
        meta = {**(metadata or {}), "pruned_heads": {str(k): v for k, v in pruned.items()}, **provenance()}
        config_path = tmp / "config.json"
        config = json.loads(config_path.read_text())
        config["purify"] = meta
        config.pop("auto_map", None)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(model_card(meta, report))
        for name, src in (extra_files or {}).items():
            dest = tmp / name
            if Path(src).is_dir():
                shutil.copytree(src, dest)
            else:
                shutil.copy2(src, dest)
        pause_point("staging")
        hashes = file_hashes(tmp)  # every file but the report, which is written last
        result = verify(tmp, atol=atol, hashes=hashes)
        full_report = {**(report or {}), "export": {"verify": result.__dict__, "path": str(out_dir)},
                       HASHES_KEY: hashes, **provenance()}
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
