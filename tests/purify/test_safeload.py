"""Strict loading: legitimate folders of every tiny architecture still load exactly; hostile ones are refused early."""
import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from purify.checkpoint import load_checkpoint
from purify.errors import CheckpointError, UnsafeCheckpointError
from purify.export import export_checkpoint
from purify.inference import encode, model_inputs
from purify.loadcheck import check_field_types, check_raw_config, weight_layer_count
from purify.safeload import inside_file, read_json_object, safetensors_shapes
from purify.testing.tiny import TINY_ARCHITECTURES, save_tiny_checkpoint, tiny_model, tiny_texts

ARCH_TASKS = [(a, t) for a in TINY_ARCHITECTURES for t in ("classification", "causal_lm")
              if not (a == "distilbert" and t == "causal_lm")]


def _logits(model, tokenizer):
    return model.eval()(**model_inputs(model, encode(tokenizer, tiny_texts()[:3]))).logits


@pytest.mark.parametrize("arch,task", ARCH_TASKS)
def test_every_tiny_architecture_loads_exactly(tmp_path, arch, task):
    """safetensors and (opted-in) pickle weights reproduce the saved model, tied heads included."""
    folder = save_tiny_checkpoint(arch, tmp_path / "m", task=task)
    original = tiny_model(arch, task=task)
    loaded = load_checkpoint(folder)
    with torch.no_grad():
        expected = _logits(original, loaded.tokenizer)
        assert torch.allclose(_logits(loaded.model, loaded.tokenizer), expected, atol=1e-5)
        state = load_file(str(folder / "model.safetensors"))
        (folder / "model.safetensors").unlink()
        torch.save(state, folder / "pytorch_model.bin")
        pickled = load_checkpoint(folder, allow_pickle=True)
        assert torch.allclose(_logits(pickled.model, pickled.tokenizer), expected, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_a_requested_fresh_head_may_be_missing(tmp_path, arch):
    """A causal LM loaded as a classifier gets a new head (as the zoo does with SmolLM2); nothing else may miss."""
    folder = save_tiny_checkpoint(arch, tmp_path / "lm", task="causal_lm")
    loaded = load_checkpoint(folder, task="classification", num_labels=3)
    assert loaded.task == "classification" and loaded.model.config.num_labels == 3
    state = load_file(str(folder / "model.safetensors"))
    victim = next(k for k in state if ".1." in k)
    save_file({k: v for k, v in state.items() if k != victim}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=re.escape(victim)):
        load_checkpoint(folder, task="classification", num_labels=3)


def test_bare_encoder_gets_a_head(tmp_path):
    from transformers import AutoModel

    from purify.testing.tiny import tiny_config, tiny_tokenizer

    AutoModel.from_config(tiny_config("bert")).save_pretrained(tmp_path / "bare")
    tiny_tokenizer(tmp_path / "bare")
    assert load_checkpoint(tmp_path / "bare", task="classification", num_labels=2).task == "classification"
    with pytest.raises(CheckpointError, match="no sequence-classification"):
        load_checkpoint(tmp_path / "bare")


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    folder = save_tiny_checkpoint("bert", tmp_path / "m")
    state = load_file(str(folder / "model.safetensors"))
    state["rogue.weight"] = torch.zeros(3)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 tensor the config has no place for \(rogue.weight\)"):
        load_checkpoint(folder)
    del state["rogue.weight"], state["classifier.bias"]
    save_file(state, str(folder / "model.safetensors"))
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="classifier.bias"):
        load_checkpoint(folder, allow_pickle=True)


def test_sharded_index_is_cross_checked(tmp_path):
    model = tiny_model("gpt2")
    model.save_pretrained(tmp_path / "s", max_shard_size="20KB")
    from purify.testing.tiny import tiny_tokenizer

    tiny_tokenizer(tmp_path / "s")
    assert set(safetensors_shapes(tmp_path / "s")) == set(model.state_dict())
    assert load_checkpoint(tmp_path / "s").task == "classification"
    index_path = tmp_path / "s" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first, shard = next(iter(index["weight_map"].items()))
    other = next(s for s in index["weight_map"].values() if s != shard)
    index["weight_map"][first] = other
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="does not hold it"):
        load_checkpoint(tmp_path / "s")


def test_inside_file_rules(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    os.symlink("a.json", tmp_path / "link.json")
    os.symlink("/etc/hostname", tmp_path / "out.json")
    os.mkfifo(tmp_path / "pipe.json")
    assert inside_file(tmp_path, "a.json") == tmp_path / "a.json"
    assert inside_file(tmp_path, "link.json") == tmp_path / "link.json"
    assert inside_file(tmp_path, "absent.json") is None
    with pytest.raises(UnsafeCheckpointError, match="outside the model folder"):
        inside_file(tmp_path, "out.json")
    with pytest.raises(UnsafeCheckpointError, match="not a regular file"):
        inside_file(tmp_path, "pipe.json")
    with pytest.raises(CheckpointError, match="more than the 1 bytes"):
        inside_file(tmp_path, "a.json", max_bytes=1)
    os.symlink("nowhere.json", tmp_path / "dangling.json")
    with pytest.raises(CheckpointError, match="cannot read"):
        inside_file(tmp_path, "dangling.json")


@pytest.mark.parametrize("text,match", [("[1]", "JSON object"), ('{"a": NaN}', "NaN"), ("{", "not valid JSON"),
                                        ('{"a": Infinity}', "Infinity")])
def test_read_json_object_refuses(tmp_path, text, match):
    (tmp_path / "c.json").write_text(text)
    with pytest.raises(CheckpointError, match=match):
        read_json_object(tmp_path / "c.json")


def test_config_checks_accept_legitimate_values(tmp_path):
    from transformers import LlamaConfig

    for impl in ("eager", "sdpa", "flex_attention", "flash_attention_2", None):
        check_raw_config(tmp_path, {"model_type": "llama", "attn_implementation": impl, "num_key_value_heads": None})
    # a list of end tokens (Llama 3) and an integer where a float belongs are legitimate
    check_field_types(tmp_path, {"eos_token_id": [1, 2], "rope_theta": 10000, "rms_norm_eps": 1e-5}, LlamaConfig)
    with pytest.raises(CheckpointError, match="rms_norm_eps"):
        check_field_types(tmp_path, {"rms_norm_eps": "1e-5"}, LlamaConfig)
    with pytest.raises(UnsafeCheckpointError, match="text_config.attn_implementation"):
        check_raw_config(tmp_path, {"model_type": "x", "text_config": {"attn_implementation": "org/kernel"}})


def test_weight_layer_count():
    assert weight_layer_count(["bert.encoder.layer.0.x", "bert.encoder.layer.5.y", "classifier.weight"]) == 6
    assert weight_layer_count(["transformer.h.1.attn.c_attn.weight", "transformer.wte.weight"]) == 2
    assert weight_layer_count(["model.decoder.layers.3.fc1.weight"]) == 4
    assert weight_layer_count(["embeddings.weight"]) is None


def test_adapter_missing_a_lora_tensor_is_refused(tmp_path):
    from peft import LoraConfig, get_peft_model

    base = save_tiny_checkpoint("bert", tmp_path / "base")
    lora = get_peft_model(tiny_model("bert"), LoraConfig(r=4, target_modules=["query", "value"]))
    lora.save_pretrained(tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "base_model_name_or_path": str(base)}))
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    state = load_file(str(weights))
    victim = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != victim}, str(weights))
    with pytest.raises(CheckpointError, match="adapter weights lack 1 tensor"):
        load_checkpoint(tmp_path / "adapter")
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "r": 10 ** 9}))
    with pytest.raises(CheckpointError, match="'r' is 1000000000"):
        load_checkpoint(tmp_path / "adapter")


def test_export_never_writes_an_auto_map(tmp_path):
    from purify.testing.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.init_kwargs["auto_map"] = {"AutoTokenizer": ["tokenization_evil.Evil", None]}
    model = tiny_model("bert")
    model.config.auto_map = {"AutoModel": "modeling_evil.Evil"}
    out = tmp_path / "out"
    assert export_checkpoint(model, tokenizer, out, probe_texts=tiny_texts()).ok
    assert "auto_map" not in json.loads((out / "tokenizer_config.json").read_text())
    assert "auto_map" not in json.loads((out / "config.json").read_text())
    assert load_checkpoint(out).task == "classification"


def test_tokenizer_smaller_than_embeddings_is_fine(tmp_path):
    folder = save_tiny_checkpoint("bert", tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    state = load_file(str(folder / "model.safetensors"))
    key = "bert.embeddings.word_embeddings.weight"
    state[key] = torch.cat([state[key], torch.zeros(9, state[key].shape[1])])
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 9}))
    assert load_checkpoint(folder).model.get_input_embeddings().num_embeddings == config["vocab_size"] + 9
