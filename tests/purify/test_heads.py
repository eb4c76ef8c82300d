"""Head gates on every supported architecture: identity at 1, equal to the zeroed export at 0, importance."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from purify.errors import UnsupportedArchitectureError
from purify.export import export_checkpoint
from purify.architecture import SUPPORTED_ARCHITECTURES
from purify.heads import HeadGates, find_attention_blocks, mask_to_pruned, pruned_to_mask
from purify.inference import encode
from purify.testing.tiny import ENCODERS, TINY_ARCHITECTURES, tiny_model, tiny_texts, tiny_tokenizer

CASES = [(a, t) for a in TINY_ARCHITECTURES for t in ("classification", "causal_lm")
         if not (a in ENCODERS and t == "causal_lm")]


def _inputs(arch):
    batch = encode(tiny_tokenizer(), tiny_texts())
    if arch not in ("bert", "electra"):
        batch.pop("token_type_ids", None)
    return batch


@pytest.mark.parametrize("arch,task", CASES)
def test_gates_at_one_are_bit_identical(arch, task):
    model = tiny_model(arch, task=task)
    batch = _inputs(arch)
    with torch.no_grad():
        before = model(**batch).logits
        with HeadGates(model) as gates:
            assert gates.shape == (2, 4)
            gated = model(**batch).logits
            with gates.masked(torch.ones(gates.shape)):
                masked_ones = model(**batch).logits
    assert torch.equal(before, gated)
    assert torch.equal(before, masked_ones)


@pytest.mark.parametrize("arch,task", CASES)
def test_gate_zero_equals_reloaded_export(arch, task, tmp_path):
    model = tiny_model(arch, task=task)
    # the tokenizer as vanilla transformers reloads it next to this config (for qwen2 that is Qwen2Tokenizer,
    # whatever tokenizer_class says), so the export's tokenizer probe can round-trip
    tiny_tokenizer(tmp_path / "tok")
    model.config.save_pretrained(tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    batch = _inputs(arch)
    gates = HeadGates(model)
    gates.set_head(0, 1, 0.0)
    gates.set_head(1, 0, 0.0)
    gates.set_head(1, 1, 0.0)  # with GQA (group size 2) this prunes a whole key/value group
    with torch.no_grad():
        gated = model(**batch).logits
        with gates.masked(torch.ones(gates.shape)):
            ungated = model(**batch).logits
    assert (gated - ungated).abs().max() > 0  # the gate changes the function
    out = tmp_path / "export"
    result = export_checkpoint(model, tokenizer, out, pruned_heads=gates.pruned_heads(), probe_texts=tiny_texts(),
                               atol=1e-5)
    assert result.ok and result.pruned_zero
    cls = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    reloaded = cls.from_pretrained(str(out)).eval()
    with torch.no_grad():
        exported = reloaded(**batch).logits
    assert (exported - gated).abs().max() < 1e-5


@pytest.mark.parametrize("arch,task", CASES)
def test_importance_is_finite_nonnegative_per_head(arch, task):
    model = tiny_model(arch, task=task)
    batch = _inputs(arch)
    if task == "classification":
        batch["labels"] = torch.tensor([0, 1] * 4)
    with HeadGates(model) as gates:
        importance = gates.importance([batch, batch])
    assert importance.shape == (2, 4)
    assert torch.isfinite(importance).all() and (importance >= 0).all()
    assert importance.sum() > 0
    assert not any(p.grad is not None for p in model.parameters())  # only the gates were differentiated


def test_attention_probs_per_layer():
    model = tiny_model("bert")
    batch = _inputs("bert")
    with HeadGates(model) as gates:
        probs = gates.attention_probs(batch)
    assert len(probs) == 2
    assert probs[0].shape[:2] == (8, 4)
    assert torch.allclose(probs[0].sum(-1), torch.ones(probs[0].shape[:-1]), atol=1e-5)


def test_masked_context_restores_and_remove_detaches():
    model = tiny_model("llama")
    batch = _inputs("llama")
    with torch.no_grad():
        reference = model(**batch).logits
    gates = HeadGates(model)
    mask = torch.ones(gates.shape)
    mask[1, 2] = 0
    with gates.masked(mask):
        assert gates.pruned_heads() == {1: [2]}
    assert gates.pruned_heads() == {}
    gates.set(mask)
    gates.remove()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference)


def test_mask_round_trip():
    pruned = {0: [1, 3], 2: [0]}
    mask = pruned_to_mask({str(k): v for k, v in pruned.items()}, (3, 4))
    assert mask_to_pruned(mask) == pruned


def test_unknown_architecture_names_supported_ones():
    from transformers import T5Config, T5ForSequenceClassification

    model = T5ForSequenceClassification(T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8,
                                                 vocab_size=50))
    with pytest.raises(UnsupportedArchitectureError) as err:
        find_attention_blocks(model)
    for name in ("bert", "llama", "gpt2"):
        assert name in str(err.value)
    assert set(SUPPORTED_ARCHITECTURES) >= {"bert", "roberta", "distilbert", "electra", "gpt2", "opt", "llama",
                                             "mistral", "qwen2", "gemma3_text"}


def test_gqa_group_geometry():
    blocks = find_attention_blocks(tiny_model("qwen2"))
    assert blocks[0].num_heads == 4 and blocks[0].num_kv_heads == 2 and blocks[0].group_size == 2
