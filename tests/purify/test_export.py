"""Sanitized export: atomic, verified, reloadable with vanilla transformers; real MiniLM round trip."""
import json

import pytest

from purify.checkpoint import load_checkpoint
from purify.errors import ExportError
from purify.export import REPORT_FILE, export_checkpoint, verify
from purify.heads import HeadGates
from purify.testing.tiny import tiny_model, tiny_texts, tiny_tokenizer


def test_export_writes_everything(tmp_path):
    model, tok = tiny_model("bert"), tiny_tokenizer()
    out = tmp_path / "out"
    result = export_checkpoint(model, tok, out, pruned_heads={0: [1]}, metadata={"strategy": "unit"},
                               report={"hello": 1}, probe_texts=tiny_texts())
    assert result.ok
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", REPORT_FILE, "purify_probe.safetensors"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    config = json.loads((out / "config.json").read_text())
    assert config["purify"]["strategy"] == "unit"
    assert config["purify"]["pruned_heads"] == {"0": [1]}
    assert "transformers" in config["purify"]["versions"]
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["hello"] == 1 and report["export"]["verify"]["ok"]
    assert "purify" in (out / "README.md").read_text()
    assert verify(out).ok


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    model, tok = tiny_model("bert"), tiny_tokenizer()
    out = tmp_path / "out"

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(tok), "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_checkpoint(model, tok, out, pruned_heads={0: [0]}, probe_texts=tiny_texts())
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_verification_leaves_nothing(tmp_path, monkeypatch):
    import purify.export as export_mod

    model, tok = tiny_model("bert"), tiny_tokenizer()
    real = export_mod.sanitized_state_dict

    def wrong(model, pruned):  # write weights that do not match the in-memory model
        state = real(model, pruned)
        return {k: (v + 1.0 if v.is_floating_point() and "classifier" in k else v) for k, v in state.items()}

    monkeypatch.setattr(export_mod, "sanitized_state_dict", wrong)
    with pytest.raises(ExportError, match="verification failed"):
        export_checkpoint(model, tok, tmp_path / "out", probe_texts=tiny_texts())
    assert list(tmp_path.iterdir()) == []


def test_existing_destination_needs_overwrite(tmp_path):
    model, tok = tiny_model("bert"), tiny_tokenizer()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export_checkpoint(model, tok, out, probe_texts=tiny_texts())
    assert export_checkpoint(model, tok, out, probe_texts=tiny_texts(), overwrite=True).ok


def test_out_of_range_head_is_rejected(tmp_path):
    with pytest.raises(ExportError, match="out of range"):
        export_checkpoint(tiny_model("bert"), tiny_tokenizer(), tmp_path / "o", pruned_heads={0: [9]},
                          probe_texts=tiny_texts())


def test_real_minilm_round_trip_with_five_heads_pruned(tmp_path):
    from purify.zoo.bases import minilm_path

    loaded = load_checkpoint(minilm_path(), task="classification", num_labels=2)
    gates = HeadGates(loaded.model)
    for layer, head in [(0, 3), (1, 7), (2, 0), (4, 11), (5, 5)]:
        gates.set_head(layer, head, 0.0)
    out = tmp_path / "minilm-sanitized"
    result = export_checkpoint(loaded.model, loaded.tokenizer, out, pruned_heads=gates.pruned_heads(),
                               metadata={"strategy": "manual"})
    assert result.ok and result.pruned_zero
    again = verify(out)
    assert again.ok and again.max_abs_diff < 1e-4
    assert sum(len(v) for v in json.loads((out / "config.json").read_text())["purify"]["pruned_heads"].values()) == 5
