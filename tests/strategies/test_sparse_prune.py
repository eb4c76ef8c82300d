"""Behaviour of sparse_prune: the group-lasso penalty by hand, shrinking group norms, the original-model guard."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from purify.errors import ConfigError, UnsupportedArchitectureError
from purify.heads import HeadGates, find_attention_blocks
from purify.prune_engine import MaskEvaluator, subsample
from purify.testing.tiny import tiny_model
from purify.testing.tiny_task import tiny_backdoored
from strategies.sparse_prune import SparsePrune, SparsePruneConfig, group_lasso_penalty, group_norms


def _hand_penalty(model, lam: float) -> float:
    """lam * sum over heads of sqrt(sum of squares of the head's block), written out weight by weight."""
    total = 0.0
    for block in find_attention_blocks(model):
        params = {name: p.detach() for name, p in model.named_parameters()}
        d, group = block.head_dim, block.group_size
        for h in range(block.num_heads):
            sq = 0.0
            if block.spec.fused_qkv:
                w = params[f"{block.name}.{block.spec.fused_qkv}.weight"]  # (in, 3 * hidden)
                b = params[f"{block.name}.{block.spec.fused_qkv}.bias"]
                hidden = block.num_heads * d
                for part in range(3):
                    cols = slice(part * hidden + h * d, part * hidden + (h + 1) * d)
                    sq += float(w[:, cols].pow(2).sum()) + float(b[cols].pow(2).sum())
                sq += float(params[f"{block.out_proj_name}.weight"][h * d:(h + 1) * d, :].pow(2).sum())
            else:
                for proj, index, share in ((block.spec.q_proj, h, 1.0), (block.spec.k_proj, h // group, 1 / group),
                                           (block.spec.v_proj, h // group, 1 / group)):
                    rows = slice(index * d, (index + 1) * d)
                    sq += share * float(params[f"{block.name}.{proj}.weight"][rows, :].pow(2).sum())
                    bias = params.get(f"{block.name}.{proj}.bias")
                    if bias is not None:
                        sq += share * float(bias[rows].pow(2).sum())
                sq += float(params[f"{block.out_proj_name}.weight"][:, h * d:(h + 1) * d].pow(2).sum())
            total += math.sqrt(sq)
    return lam * total


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2", "distilbert"])
def test_penalty_equals_hand_computation(arch: str) -> None:
    model = tiny_model(arch)
    blocks = find_attention_blocks(model)
    got = group_lasso_penalty(model, blocks, 0.01)
    assert got.item() == pytest.approx(_hand_penalty(model, 0.01), rel=1e-5)
    got.backward()  # differentiable in the projection weights
    q_like = next(p for n, p in model.named_parameters() if n.endswith(("query.weight", "q_proj.weight",
                                                                        "c_attn.weight", "q_lin.weight")))
    assert q_like.grad is not None and q_like.grad.abs().sum() > 0


def test_gqa_heads_share_their_key_value_group() -> None:
    model = tiny_model("llama")  # 4 query heads, 2 key/value heads
    block = find_attention_blocks(model)[0]
    with torch.no_grad():
        model.get_submodule(f"{block.name}.k_proj").weight[:block.head_dim].mul_(10)  # kv group 0 = heads 0, 1
    before = group_norms(tiny_model("llama"), [block])[0]
    after = group_norms(model, [block])[0]
    assert (after[:2] > before[:2]).all() and torch.allclose(after[2:], before[2:])


def test_mismatched_geometry_is_a_clear_error() -> None:
    model = tiny_model("bert")
    block = dataclasses.replace(find_attention_blocks(model)[0], head_dim=6)
    with pytest.raises(UnsupportedArchitectureError, match="head_dim"):
        group_norms(model, [block])


def test_finetune_with_penalty_shrinks_group_norms() -> None:
    def tuned_norms(lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        loaded, task = tiny_backdoored()
        blocks = find_attention_blocks(loaded.model)
        with torch.no_grad():
            before = group_norms(loaded.model, blocks)
        config = SparsePruneConfig(train_samples=128, epochs=2, lr=2e-3, lam=lam, finetune_batch_size=16,
                                   max_length=32)
        SparsePrune(config).finetune(loaded, blocks, task.clean_train)
        with torch.no_grad():
            return before, group_norms(loaded.model, blocks)

    before, penalised = tuned_norms(0.05)
    _, plain = tuned_norms(0.0)
    assert (penalised < before).all()
    assert (penalised < plain).all()


def test_baseline_is_the_original_model_and_the_guard_holds() -> None:
    loaded, task = tiny_backdoored()
    config = SparsePruneConfig(**{**SparsePrune.fast_options, "lr": 3e-3, "epochs": 2})
    with HeadGates(loaded.model) as gates:
        val = subsample(task.validation, config.val_samples, config.seed)
        original = MaskEvaluator(gates, loaded.tokenizer, val, batch_size=16)(torch.ones(gates.shape))
    weights = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    result = SparsePrune(config).fit(loaded, task.clean_train, task.validation)
    assert result.baseline_val_accuracy == original
    assert result.final_val_accuracy >= original - config.max_acc_drop - 1e-9
    assert result.trajectory[0] == {"step": 0, "pruned": 0, "val_accuracy": original, "action": "original"}
    changed = any(not torch.equal(weights[k], v) for k, v in loaded.model.state_dict().items())
    assert changed == result.extras["finetune_kept"]  # the result model is the fine-tuned one
    assert result.model is loaded.model
    assert torch.isfinite(result.head_scores).all() and result.head_scores.shape == (2, 4)


def test_a_finetune_that_breaks_the_guard_falls_back_to_the_original_weights() -> None:
    loaded, task = tiny_backdoored()
    weights = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    # an absurd learning rate wrecks the fine-tune; the guard then prunes the user's own weights
    config = SparsePruneConfig(**{**SparsePrune.fast_options, "lr": 5.0, "lam": 1.0, "max_acc_drop": 0.0})
    result = SparsePrune(config).fit(loaded, task.clean_train, task.validation)
    assert result.extras["finetune_kept"] is False
    assert result.extras["finetuned_val_accuracy"] < result.baseline_val_accuracy
    assert all(torch.equal(weights[k], v) for k, v in loaded.model.state_dict().items())
    assert result.final_val_accuracy >= result.baseline_val_accuracy - 1e-9


def test_runs_on_a_decoder() -> None:
    loaded, task = tiny_backdoored("llama")
    result = SparsePrune(SparsePruneConfig(**SparsePrune.fast_options)).fit(loaded, task.clean_train, task.validation)
    assert result.head_scores.shape == (2, 4)
    assert result.final_val_accuracy >= result.baseline_val_accuracy - SparsePruneConfig().max_acc_drop - 1e-9


@pytest.mark.parametrize("field,value", [("lam", -1.0), ("epochs", 0), ("lr", 0.0), ("train_samples", 0)])
def test_invalid_config_is_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        SparsePruneConfig(**{field: value}).validate()


def test_search_space_names_config_fields() -> None:
    names = {f.name for f in dataclasses.fields(SparsePruneConfig)}
    space = SparsePruneConfig.search_space()
    assert space and set(space) <= names
