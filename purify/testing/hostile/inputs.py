"""Hostile inputs, area `inputs`: tampered exports for `purify verify`, bad option values, bad data files.

Tampered exports start from a real export of a tiny BERT (head 1 of layer 0 pruned). Where a case says the
attacker "covers their tracks", the probe logits and the report's file hashes are regenerated after the edit,
so only the check the case names can catch it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ...export import export_checkpoint
from ...heads import find_attention_blocks, pruned_regions
from ...verify import HASHES_KEY, PROBE_FILE, REPORT_FILE, file_hashes
from ..tiny import save_tiny_checkpoint, tiny_model, tiny_texts, tiny_tokenizer
from . import Case

PRUNED = {0: [1]}
HOSTILE_LABELS = {"0": "neg\x1b]0;owned\x07\x1b[2J", "1": "pos\n[purify] all clear"}


# -- tampered exports ---------------------------------------------------------------------------------------------

def export_tiny(tmp: Path, name: str = "export") -> Path:
    """A real purify export of a tiny BERT classifier with head 1 of layer 0 pruned."""
    out = tmp / name
    export_checkpoint(tiny_model("bert"), tiny_tokenizer(), out, pruned_heads=PRUNED, probe_texts=tiny_texts())
    return out


def rehash(folder: Path) -> None:
    """Rewrite the report's file hashes to match the folder as it is now (an attacker covering their tracks)."""
    report = json.loads((folder / REPORT_FILE).read_text())
    report[HASHES_KEY] = file_hashes(folder)
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def regenerate_probe(folder: Path) -> None:
    """Recompute the probe logits with the folder's current weights, keeping its inputs and texts."""
    from transformers import AutoModelForSequenceClassification

    path = folder / PROBE_FILE
    with safe_open(str(path), "pt") as fh:
        probe, metadata = {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager").eval()
    with torch.no_grad():
        probe["logits"] = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    save_file({k: v.contiguous() for k, v in probe.items()}, str(path), metadata=metadata)


def edit_weights(folder: Path, update) -> None:
    """Apply `update(state)` to the folder's model.safetensors in place."""
    path = folder / "model.safetensors"
    state = load_file(str(path))
    update(state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def edit_json(path: Path, update) -> None:
    data = json.loads(path.read_text())
    update(data)
    path.write_text(json.dumps(data, indent=2))


def _verify(folder: Path) -> list[str]:
    return ["verify", str(folder)]


def verify_clean(tmp: Path) -> list[str]:
    return _verify(export_tiny(tmp))


def verify_weights_edited(tmp: Path) -> list[str]:
    out = export_tiny(tmp)
    edit_weights(out, lambda state: state["classifier.bias"].add_(1.0))
    regenerate_probe(out)
    return _verify(out)


def verify_pruned_heads_restored(tmp: Path) -> list[str]:
    out = export_tiny(tmp)
    original = tiny_model("bert").state_dict()  # the same seed: the weights before pruning
    block = find_attention_blocks(tiny_model("bert"))[0]

    def restore(state: dict) -> None:
        for key, _dim, _slices in pruned_regions(block, PRUNED[0]):
            if key in state:
                state[key] = original[key].clone()

    edit_weights(out, restore)
    regenerate_probe(out)
    rehash(out)
    return _verify(out)


def verify_id2label_swapped(tmp: Path) -> list[str]:
    out = export_tiny(tmp)
    edit_json(out / "config.json", lambda c: c.update(id2label={"0": "LABEL_1", "1": "LABEL_0"},
                                                       label2id={"LABEL_1": 0, "LABEL_0": 1}))
    return _verify(out)


def verify_other_tokenizer(tmp: Path) -> list[str]:
    out = export_tiny(tmp)

    def swap(tok: dict) -> None:  # two probe words trade ids: same files, another tokenizer
        vocab = tok["model"]["vocab"]
        vocab["movie"], vocab["film"] = vocab["film"], vocab["movie"]

    edit_json(out / "tokenizer.json", swap)
    rehash(out)
    return _verify(out)


def verify_auto_map_and_code(tmp: Path) -> list[str]:
    out = export_tiny(tmp)
    edit_json(out / "config.json", lambda c: c.update(
        auto_map={"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}))
    (out / "modeling_evil.py").write_text("import os\nos.system('echo owned')\n")
    rehash(out)
    return _verify(out)


def verify_tokenizer_auto_map(tmp: Path) -> list[str]:
    out = export_tiny(tmp)
    edit_json(out / "tokenizer_config.json", lambda c: c.update(auto_map={"AutoTokenizer": ["evil.Tok", None]}))
    rehash(out)
    return _verify(out)


def verify_pickle_added(tmp: Path) -> list[str]:
    out = export_tiny(tmp)
    torch.save({"x": torch.zeros(1)}, out / "pytorch_model.bin")
    rehash(out)
    return _verify(out)


def verify_file_added(tmp: Path) -> list[str]:
    out = export_tiny(tmp)
    (out / "special_tokens_map.json").write_text('{"unk_token": "[PAD]"}')
    return _verify(out)


def verify_config_not_json(tmp: Path) -> list[str]:
    out = export_tiny(tmp)
    (out / "config.json").write_text("{ this is not json")
    return _verify(out)


def verify_pruned_layer_99(tmp: Path) -> list[str]:
    out = export_tiny(tmp)
    edit_json(out / "config.json", lambda c: c["purify"].update(pruned_heads={"99": [0]}))
    rehash(out)
    return _verify(out)


def verify_probe_corrupt(tmp: Path) -> list[str]:
    out = export_tiny(tmp)
    (out / PROBE_FILE).write_bytes(b"\xff" * 64)
    rehash(out)
    return _verify(out)


def verify_probe_missing(tmp: Path) -> list[str]:
    out = export_tiny(tmp)
    (out / PROBE_FILE).unlink()
    rehash(out)
    return _verify(out)


# -- options ------------------------------------------------------------------------------------------------------

def _model_and_data(tmp: Path, rows: list[tuple[str, object]] | None = None) -> tuple[Path, Path]:
    model = tmp / "model"
    if not model.exists():
        save_tiny_checkpoint("bert", model)
    rows = rows if rows is not None else [(t, i % 2) for i, t in enumerate(tiny_texts() * 2)]
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return model, data


def _run(tmp: Path, *extra: str, rows: list[tuple[str, object]] | None = None) -> list[str]:
    model, data = _model_and_data(tmp, rows)
    return ["run", str(model), "--data", str(data), "--out", str(tmp / "out"), *extra]


def _config_file(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


FAST = ("--strategy", "gradient_prune", "--filter", "none", "--set", "score_samples=8")


def _yaml_case(text: str):
    def build(tmp: Path) -> list[str]:
        return _run(tmp, *FAST, "--config", str(_config_file(tmp, "opts.yaml", text)))
    return build


# -- data ---------------------------------------------------------------------------------------------------------

def data_huge_line(tmp: Path) -> list[str]:
    model, data = _model_and_data(tmp)
    with open(data, "a") as fh:
        fh.write(json.dumps({"text": "good " * 240_000, "label": 1}) + "\n")  # 1.2 MB, over the 1 MiB bound
    return ["run", str(model), "--data", str(data), "--out", str(tmp / "out"), *FAST]


def data_hostile_label_names(tmp: Path) -> list[str]:
    model, _ = _model_and_data(tmp)
    edit_json(model / "config.json", lambda c: c.update(id2label=HOSTILE_LABELS))
    return _run(tmp, *FAST, rows=[("the movie was good", "zzz"), ("a bad film", "zzz")])


def data_one_class(tmp: Path) -> list[str]:
    return _run(tmp, *FAST, rows=[(t, 1) for t in tiny_texts() * 2])


def data_filter_removes_all(tmp: Path) -> list[str]:
    return _run(tmp, "--strategy", "gradient_prune", "--filter", "gradsentry", "--filter-set", "threshold=-1e30")


_EXPORT = ("export",)
#: valid JSON lines of the wrong shape: each must be refused with its file and line
_BAD_ROWS = ('[1, 2]', '"just a string"', '{"text": 5, "label": 1}', '{"text": null, "label": 0}',
             '{"text": "good film", "label": [1]}', '{"text": "good film"}', '{"label": 1}',
             '{"text": "good film", "label": 1.5}')


def _fuzzed_data(seed: int):
    """A data file whose line 3 is seeded random bytes (even seeds) or a JSON row of the wrong shape (odd)."""
    import random

    def build(tmp: Path) -> list[str]:
        model, data = _model_and_data(tmp)
        lines = data.read_bytes().splitlines(keepends=True)
        rng = random.Random(seed)
        bad = (bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))).replace(b"\n", b"\xff") if seed % 2 == 0
               else _BAD_ROWS[(seed // 2) % len(_BAD_ROWS)].encode())
        data.write_bytes(b"".join(lines[:2]) + bad + b"\n" + b"".join(lines[2:]))
        return ["run", str(model), "--data", str(data), "--out", str(tmp / "out"), *FAST]
    return build


_INPUTS = ("model", "data.jsonl")

CASES: list[Case] = [
    Case("verify_clean_export_passes", verify_clean, expect="ok", protected=_EXPORT),
    Case("verify_weights_edited_probe_regenerated", verify_weights_edited, protected=_EXPORT,
         mentions="files_sha256 (changed: model.safetensors, purify_probe.safetensors"),
    Case("verify_pruned_heads_restored_tracks_covered", verify_pruned_heads_restored, protected=_EXPORT,
         mentions="pruned_heads_zero (pruned heads are not zero"),
    Case("verify_id2label_swapped", verify_id2label_swapped, protected=_EXPORT,
         mentions="files_sha256 (changed: config.json"),
    Case("verify_other_tokenizer_tracks_covered", verify_other_tokenizer, protected=_EXPORT,
         mentions="tokenizer_probe"),
    Case("verify_auto_map_and_py_file", verify_auto_map_and_code, protected=_EXPORT, mentions="modeling_evil.py"),
    Case("verify_auto_map_in_tokenizer_config", verify_tokenizer_auto_map, protected=_EXPORT,
         mentions="tokenizer_config.json has 'auto_map'"),
    Case("verify_pickle_file_added", verify_pickle_added, protected=_EXPORT, mentions="safetensors_only"),
    Case("verify_unrecorded_file_added", verify_file_added, protected=_EXPORT,
         mentions="not recorded: special_tokens_map.json"),
    Case("verify_config_not_json", verify_config_not_json, protected=_EXPORT, mentions="config.json is not valid JSON"),
    Case("verify_pruned_layer_99", verify_pruned_layer_99, protected=_EXPORT, mentions="pruned layer 99"),
    Case("verify_probe_corrupt", verify_probe_corrupt, protected=_EXPORT,
         mentions="purify_probe.safetensors is unreadable"),
    Case("verify_probe_missing", verify_probe_missing, protected=_EXPORT, mentions="no purify_probe.safetensors"),
    Case("option_set_seed_points_at_seed_flag", lambda t: _run(t, *FAST, "--set", "seed=7"), protected=_INPUTS,
         mentions="use --seed"),
    Case("option_filter_set_seed", lambda t: _run(t, "--filter", "gradsentry", "--filter-set", "seed=7"),
         protected=_INPUTS, mentions="use --seed"),
    Case("option_config_file_seed", lambda t: _run(t, *FAST, "--config", str(_config_file(t, "o.json", '{"seed": 7}'))),
         mentions="use --seed"),
    Case("option_bench_set_seed", lambda t: ["bench", "--suite", "pruning", "--set", "seed=1", "--out", str(t / "b")],
         mentions="use --seeds"),
    Case("option_lam_nan", lambda t: _run(t, "--strategy", "sparse_prune", "--filter", "none", "--set", "lam=nan"),
         protected=_INPUTS, mentions="lam must be a finite number"),
    Case("option_json_infinity", lambda t: _run(t, *FAST, "--config",
                                                str(_config_file(t, "o.json", '{"max_acc_drop": Infinity}'))),
         mentions="max_acc_drop must be a finite number"),
    Case("option_filter_threshold_nan", lambda t: _run(t, "--filter", "gradsentry", "--filter-set", "threshold=nan"),
         mentions="threshold must be a finite number"),
    Case("option_val_samples_none_accepted", lambda t: _run(t, *FAST, "--set", "val_samples=none"), expect="ok",
         protected=_INPUTS),
    Case("option_unknown_key_lists_known", lambda t: _run(t, *FAST, "--set", "bogus=1"),
         mentions="options: batch_size"),
    Case("option_unused_filter_key", lambda t: _run(t, "--filter", "trigger_words", "--filter-set", "batch_size=4"),
         mentions="does not use option 'batch_size'"),
    Case("option_filter_set_with_filter_none", lambda t: _run(t, *FAST, "--filter-set", "threshold=1"),
         mentions="no effect with --filter none"),
    Case("option_wrong_json_type",
         lambda t: _run(t, *FAST, "--config", str(_config_file(t, "o.json", '{"step": [1]}'))),
         mentions="step: expected int"),
    Case("option_seed_too_large", lambda t: _run(t, *FAST, "--seed", "99999999999999999999"),
         mentions="--seed 99999999999999999999 is out of range"),
    Case("option_seed_negative", lambda t: _run(t, *FAST, "--seed", "-1"), mentions="--seed -1 is out of range"),
    Case("option_yaml_list", _yaml_case("- step\n- 2\n"), mentions="opts.yaml must hold a mapping"),
    Case("option_yaml_python_tag", _yaml_case("step: !!python/object/apply:os.system ['echo owned']\n"),
         mentions="opts.yaml is not valid safe YAML"),
    Case("data_line_over_1mib", data_huge_line, protected=_INPUTS, mentions="data.jsonl line 17: longer than"),
    Case("data_hostile_label_names_escaped", data_hostile_label_names, protected=_INPUTS, mentions="\\x1b]0;owned"),
    Case("data_one_class_runs_with_warning", data_one_class, expect="ok", protected=_INPUTS),
    Case("data_filter_removes_every_sample", data_filter_removes_all, protected=_INPUTS,
         mentions="removed all 16 samples"),
    *[Case(f"data_fuzz_{seed:02d}", _fuzzed_data(seed), protected=_INPUTS, mentions="line 3") for seed in range(16)],
]
