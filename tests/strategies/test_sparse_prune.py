"""Behaviour of sparse_prune: the group-lasso penalty by hand, shrinking group norms, the original-model guard."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from purify.errors import ConfigError, UnsupportedArchitectureError
from purify.heads import HeadGates, find_attention_blocks
from purify.probe import BackdoorProbe
from purify.prune_engine import MaskEvaluator, subsample
from purify.pruning import PruneContext
from purify.testing.tiny import tiny_model
from purify.testing.tiny_task import tiny_backdoored
from strategies.sparse_prune import (ProbeResistance, SparsePrune, SparsePruneConfig, group_lasso_penalty, group_norms,
                                     resist_data, support_weights)

INFORMATIVE = {**SparsePrune.fast_options, "objective": "informative"}


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


@pytest.mark.parametrize("objective", ["informative", "backdoor"])
def test_baseline_is_the_original_model_and_the_guard_holds(objective: str) -> None:
    loaded, task = tiny_backdoored()
    config = SparsePruneConfig(**{**SparsePrune.fast_options, "lr": 3e-3, "epochs": 2, "objective": objective})
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
    config = SparsePruneConfig(**{**INFORMATIVE, "lr": 5.0, "lam": 1.0, "max_acc_drop": 0.0})
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


@pytest.mark.parametrize("field,value", [("lam", -1.0), ("epochs", 0), ("lr", 0.0), ("train_samples", 0),
                                         ("support_weight", -1.0), ("resist_weight", -0.5)])
def test_invalid_config_is_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        SparsePruneConfig(**{field: value}).validate()


def test_search_space_names_config_fields() -> None:
    names = {f.name for f in dataclasses.fields(SparsePruneConfig)}
    space = SparsePruneConfig.search_space()
    assert space and set(space) <= names


def test_support_weights_scale_positive_support_to_one_plus_k() -> None:
    weights = support_weights(torch.tensor([[-1.0, 0.0], [0.5, 2.0]]), 4.0)
    assert torch.equal(weights, torch.tensor([[1.0, 1.0], [2.0, 5.0]]))
    assert torch.equal(support_weights(torch.tensor([[-1.0, -0.2]]), 4.0), torch.ones(1, 2))  # none carries it


def test_weighted_penalty_shrinks_the_heads_with_more_support_more() -> None:
    """The penalty is sum_h w_h ||block_h||; a gradient step on it shrinks each head's norm by lr * lam * w_h."""
    model = tiny_model("bert")
    blocks = find_attention_blocks(model)
    weights = support_weights(torch.tensor([[0.0, 1.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]]), 4.0)
    with torch.no_grad():
        before = group_norms(model, blocks)
    penalty = group_lasso_penalty(model, blocks, 0.01, weights)
    assert penalty.item() == pytest.approx(0.01 * float((weights * before).sum()), rel=1e-6)
    assert group_lasso_penalty(model, blocks, 0.01, torch.ones(2, 4)).item() == \
        pytest.approx(group_lasso_penalty(model, blocks, 0.01).item(), rel=1e-6)
    penalty.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
        shrink = before - group_norms(model, blocks)
    torch.testing.assert_close(shrink, 0.5 * 0.01 * weights, atol=1e-5, rtol=1e-3)


def test_weighted_finetune_shrinks_the_weighted_heads_more() -> None:
    def ratios(weights: torch.Tensor | None) -> torch.Tensor:
        loaded, task = tiny_backdoored()
        blocks = find_attention_blocks(loaded.model)
        with torch.no_grad():
            before = group_norms(loaded.model, blocks)
        config = SparsePruneConfig(train_samples=128, epochs=2, lr=2e-3, lam=0.05, finetune_batch_size=16,
                                   max_length=32)
        SparsePrune(config).finetune(loaded, blocks, task.clean_train, weights=weights)
        with torch.no_grad():
            return group_norms(loaded.model, blocks) / before

    weights = torch.ones(2, 4)
    weights[0, 1] = weights[1, 2] = 5.0
    plain, weighted = ratios(None), ratios(weights)
    assert float(weighted[0, 1]) < float(plain[0, 1]) and float(weighted[1, 2]) < float(plain[1, 2])


def test_resisting_the_probe_lowers_its_asr() -> None:
    """The probe-resisting term's texts keep both labels (no class bias); fine-tuning with it lowers the proxy."""
    def proxy_after(weight: float) -> float:
        loaded, task = tiny_backdoored("llama")
        config = SparsePruneConfig(**{**SparsePrune.fast_options, "resist_weight": weight})
        with HeadGates(loaded.model) as gates:
            ctx = PruneContext.build(loaded, gates, task.clean_train, task.validation, config)
            assert ctx.signal is not None and ctx.proxy is not None and ctx.proxy(torch.ones(gates.shape)) == 1.0
            data = resist_data(ctx, config.seed)
            assert set(data.labels) == {0, 1} and len(data) == 2 * len(ctx.signal.score_data)
            assert all("cf" in t.split() for t in data.texts)
            resist = ProbeResistance(loaded, data, ctx.signal.applied, weight, 16, 32, config.seed) if weight else None
            SparsePrune(config).finetune(loaded, gates.blocks, task.clean_train, resist=resist)
            ctx.close()
            return ctx.proxy.fresh()(torch.ones(gates.shape))

    assert proxy_after(1.0) < proxy_after(0.0)


def test_backdoor_fit_guards_the_proxy_and_is_deterministic() -> None:
    def run(seed: int):
        loaded, task = tiny_backdoored()
        return SparsePrune(SparsePruneConfig(**{**SparsePrune.fast_options, "seed": seed})).fit(
            loaded, task.clean_train, task.validation)

    a, b = run(1), run(1)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.head_scores, b.head_scores)
    assert a.extras["proxy_after"] == b.extras["proxy_after"]
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    extras = a.extras
    assert extras["objective"] == "backdoor" and extras["stop_reason"]
    assert 0.0 <= extras["proxy_after"] <= extras["proxy_before"] and 0.0 <= extras["proxy_original"] <= 1.0
    assert torch.tensor(extras["penalty_weights"]).shape == (2, 4) and len(extras["backdoor_support"]) == 2
    assert extras["resist_weight"] == SparsePruneConfig().resist_weight
    assert a.final_val_accuracy >= a.baseline_val_accuracy - SparsePruneConfig().max_acc_drop - 1e-9


def test_latent_signal_resists_under_its_shift_and_takes_its_hook_off() -> None:
    """A probe with no trigger: the latent stand-in drives the support and the probe term; fit removes its hook."""
    loaded, task = tiny_backdoored()
    hooks = sum(len(m._forward_pre_hooks) for m in loaded.model.modules())
    result = SparsePrune(SparsePruneConfig(**SparsePrune.fast_options)).fit(
        loaded, task.clean_train, task.validation, probe=BackdoorProbe([]))
    assert result.extras["signal"]["kind"] == "latent" and result.extras["resist_weight"] > 0
    assert result.extras["proxy_after"] <= result.extras["proxy_before"]
    assert sum(len(m._forward_pre_hooks) for m in loaded.model.modules()) == hooks


def test_informative_fit_is_the_plain_group_lasso() -> None:
    """The paper's path: no support weights, no probe term, ranked by the plain fine-tune's group norms."""
    loaded, task = tiny_backdoored()
    result = SparsePrune(SparsePruneConfig(**INFORMATIVE)).fit(loaded, task.clean_train, task.validation)
    assert result.extras["objective"] == "informative"
    assert "penalty_weights" not in result.extras and "proxy_before" not in result.extras
    replica, _ = tiny_backdoored()
    blocks = find_attention_blocks(replica.model)
    SparsePrune(SparsePruneConfig(**INFORMATIVE)).finetune(replica, blocks, task.clean_train)
    with torch.no_grad():
        assert torch.equal(result.head_scores, group_norms(replica.model, blocks).float())
