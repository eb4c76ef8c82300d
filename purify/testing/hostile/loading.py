"""Hostile checkpoints for the safe loader: missing or extra tensors, configs that lie about the weights, files
that are symlinks, devices or out-of-folder shards, custom code and hub kernels, broken safetensors and pickles,
and a tokenizer larger than the embedding matrix. Each runs `purify eval MODEL --clean clean.jsonl`, the cheapest
command that reaches the loader; the model folder must come out byte-for-byte unchanged.

A handful of legitimate folders (`expect="ok"`) guard against refusing too much. The generated cases (fuzzed
config values, truncated and random weight files) come from a fixed seed, so the catalogue is the same each run.
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path

from . import Case

MODEL = "model"
SEED = 1234


def _checkpoint(tmp: Path, arch: str = "bert", task: str = "classification") -> Path:
    from purify.testing.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(arch, tmp / MODEL, task=task)


def _eval(tmp: Path, *extra: str) -> list[str]:
    from purify.testing.tiny import tiny_texts

    clean = tmp / "clean.jsonl"
    clean.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(tiny_texts())))
    return ["eval", str(tmp / MODEL), "--clean", str(clean), *extra]


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _rewrite_weights(folder: Path, change: Callable[[dict], dict]) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    save_file(change(load_file(str(path))), str(path), metadata={"format": "pt"})


def _case(name: str, prepare: Callable[[Path], None], *, arch: str = "bert", task: str = "classification",
          expect: str = "refused", mentions: str | None = None, extra: tuple[str, ...] = (),
          outside: bool = False) -> Case:
    """A case over a tiny checkpoint that `prepare(folder)` then damages."""
    def build(tmp: Path) -> list[str]:
        prepare(_checkpoint(tmp, arch, task))
        return _eval(tmp, *extra)

    return Case(name, build, expect=expect, protected=(MODEL, "outside") if outside else (MODEL,), mentions=mentions)


# -- item 5: missing or unexpected tensors, configs that disagree with the weights ----------------------------------

def _drop_head(folder: Path) -> None:
    _rewrite_weights(folder, lambda s: {k: v for k, v in s.items() if not k.startswith("classifier.")})


def _extra_tensor(folder: Path) -> None:
    _rewrite_weights(folder, lambda s: {**s, "backdoor.trigger": s["classifier.bias"].clone()})


def _drop_layer_tensor(folder: Path) -> None:
    _rewrite_weights(folder, lambda s: {k: v for k, v in s.items() if k != "transformer.h.1.mlp.c_fc.weight"})


MISSING = [
    _case("classifier-head-deleted", _drop_head, mentions="classifier.weight"),
    _case("unexpected-extra-tensor", _extra_tensor, mentions="backdoor.trigger"),
    _case("gpt2-layer-tensor-deleted", _drop_layer_tensor, arch="gpt2", mentions="h.1.mlp.c_fc.weight"),
    _case("config-3-layers-over-2", lambda f: _edit_config(f, num_hidden_layers=3), mentions="num_hidden_layers"),
    _case("config-200000-layers", lambda f: _edit_config(f, num_hidden_layers=200_000), mentions="num_hidden_layers"),
    _case("llama-config-1-layer-over-2", lambda f: _edit_config(f, num_hidden_layers=1), arch="llama",
          mentions="num_hidden_layers"),
    _case("config-hidden-size-doubled", lambda f: _edit_config(f, hidden_size=64), mentions="shape"),
    _case("config-vocab-larger-than-weights", lambda f: _edit_config(f, vocab_size=4096), mentions="shape"),
    _case("config-heads-not-dividing-hidden", lambda f: _edit_config(f, num_attention_heads=5),
          mentions="num_attention_heads"),
]


# -- items 7 and 9: custom code and hub kernels -----------------------------------------------------------------

def _tokenizer_auto_map(folder: Path) -> None:
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    path.write_text(json.dumps(config))


CODE = [
    _case("tokenizer-config-auto-map", _tokenizer_auto_map, mentions="auto_map"),
    _case("config-auto-map", lambda f: _edit_config(f, auto_map={"AutoModel": "modeling_evil.Evil"}),
          mentions="auto_map"),
    _case("attn-implementation-hub-kernel",
          lambda f: _edit_config(f, attn_implementation="kernels-community/flash-attn"),
          mentions="attn_implementation"),
    _case("private-attn-implementation-hub-kernel",
          lambda f: _edit_config(f, _attn_implementation="someone/evil-kernel"), arch="llama",
          mentions="attn_implementation"),
    _case("attn-implementation-eager-is-fine", lambda f: _edit_config(f, attn_implementation="eager"), expect="ok"),
]


# -- item 8: paths out of the folder, devices, oversized side files ---------------------------------------------

def _outside_weights(folder: Path) -> Path:
    """A real safetensors file beside (not inside) the model folder."""
    outside = folder.parent / "outside"
    outside.mkdir(exist_ok=True)
    target = outside / "model-00001-of-00001.safetensors"
    os.replace(folder / "model.safetensors", target)
    return target


def _index_to(shard: Callable[[Path], str]) -> Callable[[Path], None]:
    def prepare(folder: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
            keys = list(fh.keys())
        name = shard(folder)
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
            k: name for k in keys}}))
        if (folder / "model.safetensors").exists():
            (folder / "model.safetensors").unlink()
    return prepare


def _dotdot_shard(folder: Path) -> str:
    return f"../outside/{_outside_weights(folder).name}"


def _shard_symlink_out(folder: Path) -> str:
    os.symlink(_outside_weights(folder), folder / "model-00001-of-00001.safetensors")
    return "model-00001-of-00001.safetensors"


def _symlink(name: str, target: str | Callable[[Path], Path]) -> Callable[[Path], None]:
    def prepare(folder: Path) -> None:
        dest = target(folder) if callable(target) else Path(target)
        (folder / name).unlink(missing_ok=True)
        os.symlink(dest, folder / name)
    return prepare


def _fifo_config(folder: Path) -> None:
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")


def _huge_config(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config) + " " * (5 << 20))


def _inside_symlink(folder: Path) -> None:
    os.replace(folder / "model.safetensors", folder / "weights.bin.safetensors")
    os.symlink("weights.bin.safetensors", folder / "model.safetensors")


PATHS = [
    _case("index-shard-dotdot", _index_to(_dotdot_shard), mentions="shard", outside=True),
    _case("index-shard-absolute", _index_to(lambda f: str(_outside_weights(f))), mentions="shard", outside=True),
    _case("index-shard-etc-passwd", _index_to(lambda f: "/etc/passwd"), mentions="/etc/passwd"),
    _case("index-shard-symlink-out", _index_to(_shard_symlink_out), mentions="outside the model folder",
          outside=True),
    _case("index-shard-missing", _index_to(lambda f: "model-00002-of-00002.safetensors"), mentions="not in"),
    _case("config-symlink-dev-zero", _symlink("config.json", "/dev/zero"), mentions="config.json"),
    _case("tokenizer-symlink-dev-zero", _symlink("tokenizer.json", "/dev/zero"), mentions="tokenizer.json"),
    _case("config-fifo", _fifo_config, mentions="regular file"),
    _case("config-larger-than-bound", _huge_config, mentions="config.json"),
    _case("weights-symlink-out", _symlink("model.safetensors", _outside_weights), mentions="outside the model folder",
          outside=True),
    _case("weights-symlink-inside-is-fine", _inside_symlink, expect="ok"),
]


# -- item 10: broken weight files, malformed configs, pickles, oversized tokenizers -----------------------------

def _weights_bytes(data: bytes | Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def prepare(folder: Path) -> None:
        path = folder / "model.safetensors"
        path.write_bytes(data(path.read_bytes()) if callable(data) else data)
    return prepare


def _huge_tensor_header(data: bytes) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 1 << 42]}}).encode()
    return len(header).to_bytes(8, "little") + header + b"\0" * 64


def _config_text(text: str) -> Callable[[Path], None]:
    def prepare(folder: Path) -> None:
        (folder / "config.json").write_text(text)
    return prepare


def _bigger_tokenizer(folder: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.add_tokens([f"extra{i}" for i in range(10)])
    tokenizer.save_pretrained(str(folder))


def _adapter(pickle: bool, payload: str = "weights") -> Callable[[Path], list[str]]:
    """A LoRA adapter folder (`model`) over a tiny base (`base`), its weights as adapter_model.bin if `pickle`."""
    def build(tmp: Path) -> list[str]:
        import torch
        from peft import LoraConfig, get_peft_model

        from purify.testing.tiny import save_tiny_checkpoint, tiny_model

        base = save_tiny_checkpoint("bert", tmp / "base")
        lora = get_peft_model(tiny_model("bert"), LoraConfig(r=4, target_modules=["query", "value"]))
        lora.save_pretrained(str(tmp / MODEL), safe_serialization=not pickle)
        config_path = tmp / MODEL / "adapter_config.json"
        adapter_config = {**json.loads(config_path.read_text()), "base_model_name_or_path": str(base)}
        config_path.write_text(json.dumps(adapter_config))
        if payload == "code":
            torch.save({"x": _Payload()}, tmp / MODEL / "adapter_model.bin")
        elif payload == "garbage":
            (tmp / MODEL / "adapter_model.bin").write_bytes(random.Random(SEED).randbytes(4096))
        return _eval(tmp, "--allow-pickle")
    return build


class _Payload:
    """A pickle that would run code when unpickled (weights_only must refuse it)."""

    def __reduce__(self):
        return (os.system, ("echo owned",))


BROKEN = [
    _case("weights-zero-bytes", _weights_bytes(b""), mentions="model.safetensors"),
    _case("weights-huge-header", _weights_bytes((1 << 62).to_bytes(8, "little") + b"{}"),
          mentions="model.safetensors"),
    _case("weights-header-longer-than-file", _weights_bytes((50 << 20).to_bytes(8, "little") + b"{}"),
          mentions="model.safetensors"),
    _case("weights-header-claims-huge-tensor", _weights_bytes(_huge_tensor_header), mentions="model.safetensors"),
    _case("weights-garbage-header", _weights_bytes(lambda d: d[:8] + b"!" * (len(d) - 8)),
          mentions="model.safetensors"),
    _case("config-json-array", _config_text("[1, 2, 3]"), mentions="JSON object"),
    _case("config-json-nan", lambda f: _edit_config(f, layer_norm_eps=float("nan")), mentions="config.json"),
    _case("config-layers-string", lambda f: _edit_config(f, num_hidden_layers="two"), mentions="num_hidden_layers"),
    _case("config-hidden-negative", lambda f: _edit_config(f, hidden_size=-4), mentions="hidden_size"),
    _case("config-vocab-1e30", lambda f: _edit_config(f, vocab_size=1e30), mentions="vocab_size"),
    _case("config-architectures-string", lambda f: _edit_config(f, architectures="BertForSequenceClassification"),
          mentions="architectures"),
    _case("tokenizer-larger-than-embeddings", _bigger_tokenizer, mentions="51 token ids"),
    Case("adapter-pickle-allowed", _adapter(pickle=True), expect="ok", protected=(MODEL, "base")),
    Case("adapter-pickle-with-code", _adapter(pickle=True, payload="code"), protected=(MODEL, "base"),
         mentions="adapter_model.bin"),
    Case("adapter-pickle-garbage", _adapter(pickle=True, payload="garbage"), protected=(MODEL, "base"),
         mentions="adapter_model.bin"),
    Case("adapter-safetensors-is-fine", _adapter(pickle=False), expect="ok", protected=(MODEL, "base")),
    _case("plain-checkpoint-is-fine", lambda f: None, expect="ok"),
    _case("gpt2-checkpoint-is-fine", lambda f: None, arch="gpt2", expect="ok"),
]


# -- generated: fuzzed config values, truncated and random weight files (fixed seed) ---------------------------

_BAD_INTS: tuple[object, ...] = ("two", -4, 0, 1e30, 1 << 40, True, 3.5, [], {}, None)
_FUZZ_FIELDS = {
    "num_hidden_layers": _BAD_INTS, "num_attention_heads": _BAD_INTS, "hidden_size": _BAD_INTS,
    "vocab_size": _BAD_INTS, "intermediate_size": tuple(v for v in _BAD_INTS if v is not None),
    "max_position_embeddings": tuple(v for v in _BAD_INTS if v is not None),
    "layer_norm_eps": ("tiny", True, [], {}, float("inf")), "hidden_act": (5, [], {}, "no_such_activation"),
}


def _header_length(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


#: where a weight file is cut: inside the length prefix, mid-header, right after the header, mid-data, last byte
_CUTS: dict[str, Callable[[bytes], int]] = {
    "length-prefix": lambda d: 5, "mid-header": lambda d: _header_length(d) // 2,
    "after-header": _header_length, "mid-data": lambda d: (_header_length(d) + len(d)) // 2,
    "last-byte": lambda d: len(d) - 1,
}


def _config_edit(key: str, value: object) -> Callable[[Path], None]:
    """Set one config.json field to `value`."""
    def prepare(folder: Path) -> None:
        _edit_config(folder, **{key: value})
    return prepare


def _cut_at(cut: Callable[[bytes], int]) -> Callable[[bytes], bytes]:
    """The bytes of a weight file up to where `cut` says."""
    return lambda data: data[:cut(data)]


def _random_body(rng: random.Random, size: int, plausible: bool) -> bytes:
    """Random bytes; with `plausible`, behind a length prefix that fits the file (so the header parser runs)."""
    body = rng.randbytes(size)
    return (size - 8).to_bytes(8, "little") + body[8:] if plausible else body


def _generated() -> list[Case]:
    rng = random.Random(SEED)
    pairs = [(field, i) for field in sorted(_FUZZ_FIELDS) for i in range(len(_FUZZ_FIELDS[field]))]
    cases = []
    for n, (field, i) in enumerate(sorted(rng.sample(pairs, 12))):
        value = _FUZZ_FIELDS[field][i]
        cases.append(_case(f"fuzz-config-{n:02d}-{field}", _config_edit(field, value), mentions="config.json"))
    for where, cut in _CUTS.items():
        cases.append(_case(f"weights-truncated-{where}", _weights_bytes(_cut_at(cut)), mentions="model.safetensors"))
    cases.append(_case("weights-one-byte-appended", _weights_bytes(lambda d: d + b"\0"),
                       mentions="model.safetensors"))
    for size, plausible in ((16, False), (4096, False), (4096, True), (150_000, True)):
        data = _random_body(rng, size, plausible)
        name = f"weights-random-{size}-bytes" + ("-fitting-length" if plausible else "")
        cases.append(_case(name, _weights_bytes(data), mentions="model.safetensors"))
    return cases


CASES: list[Case] = [*MISSING, *CODE, *PATHS, *BROKEN, *_generated()]
