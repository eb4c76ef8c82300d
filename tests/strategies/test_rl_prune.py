"""rl_prune: the pruning environment obeys gymnasium and its action masks, PPO learns, the policy is exported;
under the backdoor objective the reward pays for the fall in the proxy ASR."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from sb3_contrib import MaskablePPO

from purify.errors import ConfigError
from purify.heads import HeadGates
from purify.testing.tiny_task import tiny_backdoored
from strategies.rl_env import GLOBAL_FEATURES, HEAD_FEATURES, HeadPruningEnv, ProxyTerms
from strategies.rl_prune import (
    HeadSharedPolicy,
    RLPrune,
    RLPruneConfig,
    attention_entropy,
    output_norms,
    rollout,
    rollout_scores,
)


def _signals(num_layers=2, num_heads=3, seed=0):
    return torch.rand(num_layers, num_heads, 3, generator=torch.Generator().manual_seed(seed))


def _env(evaluate=None, *, num_layers=2, num_heads=3, **kwargs):
    options = dict(max_acc_drop=0.02, max_prune_fraction=1.0, min_heads_per_layer=1)
    options.update(kwargs)
    return HeadPruningEnv(evaluate or (lambda mask: 1.0), _signals(num_layers, num_heads), **options)


def test_env_passes_gymnasium_checker():
    env = _env(lambda mask: 0.9 - 0.01 * float((mask == 0).sum()))
    check_env(env, skip_render_check=True)


def test_observation_layout_and_bounds():
    env = _env(num_layers=2, num_heads=3)
    obs, info = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape == (6 * HEAD_FEATURES + 4,)
    assert env.observation_space.contains(obs)
    per_head = obs[:6 * HEAD_FEATURES].reshape(6, HEAD_FEATURES)
    assert (per_head[:, 0] == 1).all()  # every head kept
    np.testing.assert_allclose(per_head[:, 1:4], env.signals.reshape(6, 3).numpy(), rtol=1e-6)
    assert obs[-4] == pytest.approx(1.0)  # accuracy / baseline
    obs, *_ = env.step(0)
    assert obs.reshape(-1)[0] == 0  # head (0, 0) now pruned
    assert obs[-2] == pytest.approx(1 / 6)  # pruned share


def test_action_masks_forbid_pruned_heads_and_thin_layers():
    env = _env(num_layers=2, num_heads=3, min_heads_per_layer=2)
    env.reset(seed=0)
    assert env.action_masks().tolist() == [True] * 7  # six heads and stop
    env.step(1)  # prune (0, 1): layer 0 now has 2 heads = the minimum
    legal = env.action_masks()
    assert legal[:3].tolist() == [False, False, False]  # pruned head, and layer 0 may not lose another
    assert legal[3:].tolist() == [True, True, True, True]
    env.step(4)  # prune (1, 1)
    assert env.action_masks().tolist() == [False] * 6 + [True]  # only stop is left
    assert env.pruned_order == [(0, 1), (1, 1)]


def test_budget_ends_episode_and_masks_everything_but_stop():
    env = _env(num_layers=2, num_heads=3, max_prune_fraction=0.34)  # budget int(0.34 * 6) = 2
    env.reset(seed=0)
    _, _, terminated, _, _ = env.step(0)
    assert not terminated
    _, reward, terminated, _, info = env.step(3)
    assert terminated and info["reason"] == "budget" and reward == pytest.approx(1.0)
    assert env.action_masks().tolist() == [False] * 6 + [True]


def test_reward_pays_per_head_and_penalises_accuracy_loss():
    harmful = {(0, 2): 0.01, (1, 0): 0.05}

    def evaluate(mask):
        return 0.9 - sum(d for (layer, h), d in harmful.items() if mask[layer, h] == 0)

    env = _env(evaluate, prune_reward=1.0, drop_penalty=2.0, breach_penalty=5.0)
    env.reset(seed=0)
    _, reward, terminated, _, _ = env.step(0)  # harmless head
    assert reward == pytest.approx(1.0) and not terminated
    _, reward, terminated, _, _ = env.step(2)  # loses 1 point: within the 2-point guard
    assert reward == pytest.approx(1.0 - 2.0 * 0.01 / 0.02) and not terminated
    _, reward, terminated, _, info = env.step(3)  # loses 5 more: below the guard
    assert terminated and info["reason"] == "guard"
    assert reward == pytest.approx(1.0 - 2.0 * 0.05 / 0.02 - 5.0)
    assert env.episode_returns == [pytest.approx(1.0 + 0.0 + (1.0 - 5.0 - 5.0))]


def test_stop_ends_episode_without_reward():
    env = _env()
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(env.stop_action)
    assert (reward, terminated, truncated, info["reason"]) == (0.0, True, False, "stop")


def test_illegal_action_without_masks_changes_nothing():
    env = _env()
    env.reset(seed=0)
    env.step(0)
    _, reward, terminated, _, info = env.step(0)  # (0, 0) is already pruned
    assert info["reason"] == "illegal" and reward < 0 and not terminated
    assert env.pruned_order == [(0, 0)]


def test_ppo_learns_to_avoid_harmful_heads():
    """On a synthetic environment where high-signal heads cost accuracy, the trained policy prunes the others first."""
    signals = torch.rand(2, 4, 3, generator=torch.Generator().manual_seed(0))
    signals[..., 0] = torch.tensor([[0.9, 0.1, 0.8, 0.2], [0.15, 0.95, 0.05, 0.85]])
    harmful = signals[..., 0] > 0.5

    def evaluate(mask):
        return 0.95 - 0.015 * float(((mask == 0) & harmful).sum())

    options = dict(max_acc_drop=0.02, max_prune_fraction=1.0, min_heads_per_layer=1)
    env = HeadPruningEnv(evaluate, signals, **options)
    model = MaskablePPO(HeadSharedPolicy, env, learning_rate=3e-3, n_steps=64, batch_size=32, n_epochs=10,
                        policy_kwargs={"num_heads": env.n, "hidden": 16}, seed=0, device="cpu")
    model.learn(1024)
    order, _ = rollout(model, HeadPruningEnv(evaluate, signals, **options), seed=0)
    assert len(order) >= 4
    assert not any(bool(harmful[layer, h]) for layer, h in order[:4]), order
    assert np.mean(env.episode_returns[-5:]) > np.mean(env.episode_returns[:5])


def test_rollout_scores_follow_the_rollout():
    fallback = torch.tensor([[0.2, 0.9], [0.5, 0.1]])
    scores = rollout_scores([(1, 0), (0, 1)], fallback)
    assert scores[1, 0] < scores[0, 1] < 1.0 <= scores[1, 1] < scores[0, 0]


def test_signals_are_finite_and_shaped():
    loaded, task = tiny_backdoored("bert")
    with HeadGates(loaded.model) as gates:
        from purify.pruning import batches_for

        batches = batches_for(loaded.model, loaded.tokenizer, task.clean_train.subset(range(16)), 8)
        entropy = attention_entropy(gates, batches)
        norms = output_norms(gates)
    assert entropy.shape == norms.shape == gates.shape
    assert torch.isfinite(entropy).all() and (entropy > 0).all() and (entropy <= 1 + 1e-6).all()
    assert (norms > 0).all()


def test_config_validation_and_search_space():
    with pytest.raises(ConfigError):
        RLPruneConfig(total_timesteps=10, n_steps=64).validate()
    with pytest.raises(ConfigError):
        RLPruneConfig(ppo_batch_size=256, n_steps=128).validate()
    with pytest.raises(ConfigError):
        RLPruneConfig(drop_penalty=-1.0).validate()
    with pytest.raises(ConfigError):
        RLPruneConfig(rl_val_samples=0).validate()
    RLPruneConfig().validate()
    fields = set(RLPruneConfig.__dataclass_fields__)
    assert set(RLPruneConfig.search_space()) <= fields


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_run_exports_a_loadable_policy_and_training_curve(arch):
    loaded, task = tiny_backdoored(arch)
    strategy = RLPrune(RLPruneConfig(**RLPrune.fast_options, objective="informative"))
    result = strategy.run(loaded, task.clean_train, task.validation)
    path = Path(result.files["rl_policy.zip"])
    assert path.is_file()
    curve = result.extras["rl_training"]["episode_rewards"]
    assert curve and all(isinstance(x, float) for x in curve)
    json.dumps(result.extras)  # the report must be able to store it
    # pruned heads come from the policy's rollout, and the engine's guard held
    rollout_heads = {tuple(x) for x in result.extras["rl_rollout"]}
    assert {(layer, h) for layer, hs in result.pruned_heads.items() for h in hs} <= rollout_heads
    assert result.final_val_accuracy >= result.baseline_val_accuracy - strategy.config.max_acc_drop - 1e-9
    policy = MaskablePPO.load(path, device="cpu")
    assert isinstance(policy.policy, HeadSharedPolicy)
    assert (policy.policy.head_features, policy.policy.global_features) == (HEAD_FEATURES, GLOBAL_FEATURES)
    assert "rl_proxy" not in result.extras and "backdoor_support" not in result.extras["head_signals"]
    env = _env(num_layers=2, num_heads=4)
    obs, _ = env.reset(seed=0)
    env.step(0)
    env.step(1)
    env.step(2)  # layer 0 is down to one head
    obs = env._observation()
    action, _ = policy.predict(obs, deterministic=True, action_masks=env.action_masks())
    assert env.action_masks()[int(action)]


def test_same_seed_same_heads_on_llama():
    runs = []
    for _ in range(2):
        loaded, task = tiny_backdoored("llama")
        result = RLPrune(RLPruneConfig(**{**RLPrune.fast_options, "seed": 5, "objective": "informative"})).run(
            loaded, task.clean_train, task.validation)
        runs.append((result.pruned_heads, result.extras["rl_rollout"], result.extras["rl_training"]["episode_rewards"]))
    assert runs[0] == runs[1]


# -- the backdoor objective -------------------------------------------------------------------------------------
def _proxy_falls_at_1_2(mask):
    """A synthetic proxy ASR that only pruning head (1, 2) brings down (to the stop level)."""
    return 0.1 if mask[1, 2] == 0 else 0.9


def _backdoor_env(proxy=_proxy_falls_at_1_2, evaluate=None, *, stop_at=0.1, **terms):
    signals = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(1))
    signals[..., 3] = torch.tensor([[0.9, 0.5, 0.7], [0.8, 0.6, 0.0]])  # the support points away from (1, 2)
    return HeadPruningEnv(evaluate or (lambda mask: 0.9 - 0.002 * float((mask == 0).sum())), signals,
                          max_acc_drop=0.02, max_prune_fraction=1.0, min_heads_per_layer=1,
                          terms=ProxyTerms(proxy, stop_at, **terms))


def test_backdoor_observation_adds_the_support_and_the_proxy():
    env = _backdoor_env()
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert (env.head_features, env.global_features) == (HEAD_FEATURES + 1, GLOBAL_FEATURES + 1)
    assert obs.shape == env.observation_space.shape == (6 * (HEAD_FEATURES + 1) + GLOBAL_FEATURES + 1,)
    per_head = obs[:6 * env.head_features].reshape(6, env.head_features)
    np.testing.assert_allclose(per_head[:, 1:5], env.signals.reshape(6, 4).numpy(), rtol=1e-6)
    assert obs[-1] == pytest.approx(1.0)  # the proxy has all its way down to go
    obs, *_ = env.step(5)
    assert obs[-1] == pytest.approx(0.0)  # at the stop level


def test_backdoor_reward_pays_for_the_proxy_fall_not_for_pruning():
    env = _backdoor_env(reward=4.0, prune_cost=0.05, stop_bonus=1.0)
    steps = {}
    for action in range(6):
        env.reset(seed=0)
        steps[action] = env.step(action)
    rewards = {action: step[1] for action, step in steps.items()}
    assert max(rewards, key=rewards.get) == 5  # head (1, 2)
    drop = 2.0 * 0.002 / 0.02
    assert rewards[5] == pytest.approx(4.0 - 0.05 - drop + 1.0)
    assert all(rewards[a] == pytest.approx(-0.05 - drop) for a in range(5))  # pruning alone costs
    _, _, terminated, _, info = steps[5]
    assert terminated and info["reason"] == "proxy" and info["proxy"] == pytest.approx(0.1)
    assert env.episode_proxies[-1] == pytest.approx(0.1)


def test_backdoor_reward_is_proportional_and_breaches_skip_the_proxy():
    calls = []

    def proxy(mask):
        calls.append(mask.clone())
        return 0.9 - 0.4 * float(mask[1, 2] == 0) + 0.1 * float(mask[0, 0] == 0)

    env = _backdoor_env(proxy, lambda mask: 0.5 if mask[0, 1] == 0 else 0.9, reward=4.0, prune_cost=0.0)
    env.reset(seed=0)
    _, reward, terminated, _, _ = env.step(5)  # half the way down: half the reward, no bonus
    assert reward == pytest.approx(2.0) and not terminated
    _, reward, terminated, _, _ = env.step(0)  # the proxy rises: that costs
    assert reward == pytest.approx(-0.5) and not terminated
    measured = len(calls)
    _, reward, terminated, _, info = env.step(1)  # below the accuracy guard
    assert terminated and info["reason"] == "guard" and len(calls) == measured
    assert reward == pytest.approx(-2.0 * 0.4 / 0.02 - 1.0)


def test_ppo_learns_the_head_that_lowers_the_proxy():
    env = _backdoor_env()
    model = MaskablePPO(HeadSharedPolicy, env, learning_rate=3e-3, n_steps=64, batch_size=32, n_epochs=10,
                        policy_kwargs={"num_heads": env.n, "head_features": env.head_features,
                                       "global_features": env.global_features, "hidden": 16}, seed=0, device="cpu")
    model.learn(256)
    order, reason = rollout(model, _backdoor_env(), seed=0)
    assert (order, reason) == ([(1, 2)], "proxy")


def _backdoor_run(seed=0, **options):
    loaded, task = tiny_backdoored("bert")
    strategy = RLPrune(RLPruneConfig(**{**RLPrune.fast_options, "seed": seed, **options}))
    return strategy.run(loaded, task.clean_train, task.validation)


def test_backdoor_run_records_the_proxy_and_observes_the_support():
    result = _backdoor_run()
    extras = result.extras
    assert extras["objective"] == "backdoor"
    facts = extras["rl_proxy"]
    assert facts["start"] == extras["proxy_before"]  # the probe has fewer texts than rl_proxy_samples: same proxy
    assert facts["stop_at"] == extras["proxy_stop_at"]
    assert 0.0 <= facts["rollout_end"] <= 1.0 and facts["evaluations"] >= 1
    assert len(facts["episode_ends"]) == len(extras["rl_training"]["episode_rewards"])
    support = np.array(extras["head_signals"]["backdoor_support"])
    assert support.shape == (2, 4) and support.min() >= 0.0 and support.max() <= 1.0
    assert np.array(extras["backdoor_support"]).shape == (2, 4)
    json.dumps(extras)
    pruned = {(layer, h) for layer, hs in result.pruned_heads.items() for h in hs}
    assert pruned <= {tuple(x) for x in extras["rl_rollout"]}
    policy = MaskablePPO.load(Path(result.files["rl_policy.zip"]), device="cpu").policy
    assert (policy.head_features, policy.global_features) == (HEAD_FEATURES + 1, GLOBAL_FEATURES + 1)
    result.cleanup()


def test_backdoor_run_is_deterministic_with_a_proxy_subset():
    runs = []
    for _ in range(2):
        result = _backdoor_run(seed=3, rl_proxy_samples=16)
        runs.append((result.pruned_heads, result.head_scores.tolist(), result.extras["rl_rollout"],
                     result.extras["rl_training"]["episode_rewards"], result.extras["rl_proxy"]))
        result.cleanup()
    assert runs[0] == runs[1]
    assert runs[0][4]["samples"] == 16
