"""The safe loader: safetensors only, no remote code, clear errors, LoRA adapters merged on load."""
import json

import pytest
import torch

from purify.checkpoint import load_checkpoint
from purify.errors import CheckpointError, UnsafeCheckpointError
from purify.inference import predict_logits
from purify.testing.tiny import save_tiny_checkpoint, tiny_texts


def test_loads_classifier_and_causal_lm(tmp_path):
    cls = load_checkpoint(save_tiny_checkpoint("bert", tmp_path / "bert"))
    assert cls.task == "classification" and cls.model_type == "bert"
    lm = load_checkpoint(save_tiny_checkpoint("llama", tmp_path / "llama", task="causal_lm"))
    assert lm.task == "causal_lm"


def test_sharded_safetensors(tmp_path):
    from purify.testing.tiny import tiny_model, tiny_tokenizer

    model = tiny_model("gpt2")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    tiny_tokenizer(tmp_path / "sharded")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    loaded = load_checkpoint(tmp_path / "sharded")
    texts = tiny_texts()
    from purify.testing.tiny import tiny_tokenizer as tok

    assert abs(predict_logits(loaded.model, loaded.tokenizer, texts) - predict_logits(model, tok(), texts)).max() < 1e-6


def _pickled_folder(tmp_path):
    folder = save_tiny_checkpoint("bert", tmp_path / "pickled")
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_pickle_is_refused_with_reason(tmp_path):
    folder = _pickled_folder(tmp_path)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(folder)
    message = str(err.value)
    assert "pytorch_model.bin" in message and "arbitrary code" in message and "safetensors" in message
    assert "--allow-pickle" in message


def test_allow_pickle_uses_weights_only(tmp_path):
    folder = _pickled_folder(tmp_path)
    loaded = load_checkpoint(folder, allow_pickle=True)
    assert loaded.task == "classification"


def test_pickle_with_code_is_refused_even_when_allowed(tmp_path):
    folder = save_tiny_checkpoint("bert", tmp_path / "evil")
    (folder / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (print, ("owned",))

    torch.save({"x": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(folder, allow_pickle=True)


def test_remote_code_is_refused(tmp_path):
    folder = save_tiny_checkpoint("bert", tmp_path / "remote")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeCheckpointError, match="custom code"):
        load_checkpoint(folder)


@pytest.mark.parametrize("breakage,match", [
    ("missing_folder", "does not exist"),
    ("no_config", "no config.json"),
    ("broken_config", "not valid JSON"),
    ("no_weights", "holds no weights"),
    ("no_tokenizer", "no tokenizer"),
    ("no_head", "no sequence-classification or causal-LM head"),
    ("unknown_type", "could not be read by transformers"),
])
def test_broken_folders_give_one_clear_error(tmp_path, breakage, match):
    folder = save_tiny_checkpoint("bert", tmp_path / "m")
    if breakage == "missing_folder":
        folder = tmp_path / "nope"
    elif breakage == "no_config":
        (folder / "config.json").unlink()
    elif breakage == "broken_config":
        (folder / "config.json").write_text("{not json")
    elif breakage == "no_weights":
        (folder / "model.safetensors").unlink()
    elif breakage == "no_tokenizer":
        for f in folder.glob("tokenizer*"):
            f.unlink()
    else:
        config = json.loads((folder / "config.json").read_text())
        if breakage == "no_head":
            config["architectures"] = ["BertModel"]
        else:
            config["model_type"] = "not-a-real-architecture"
        (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(folder)


def test_lora_adapter_folder_is_merged(tmp_path):
    from peft import LoraConfig, get_peft_model

    from purify.testing.tiny import tiny_model, tiny_tokenizer

    base_dir = save_tiny_checkpoint("bert", tmp_path / "base")
    model = tiny_model("bert")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights=False))
    texts = tiny_texts()
    expected = predict_logits(peft_model, tiny_tokenizer(), texts)
    peft_model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base_dir)
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    loaded = load_checkpoint(tmp_path / "adapter")
    assert not hasattr(loaded.model, "peft_config")  # merged into an ordinary model
    assert abs(predict_logits(loaded.model, loaded.tokenizer, texts) - expected).max() < 1e-5


def test_adapter_over_hub_base_is_refused(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "someone/some-model"}))
    with pytest.raises(CheckpointError, match="not a local folder"):
        load_checkpoint(folder)


def test_real_minilm_loads_as_classifier():
    from purify.zoo.bases import minilm_path

    loaded = load_checkpoint(minilm_path(), task="classification", num_labels=2)
    assert loaded.model.config.num_labels == 2
    assert loaded.model.config.num_hidden_layers == 6
