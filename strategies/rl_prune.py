"""rl_prune: a MaskablePPO policy learns which heads to prune and when to stop.

Chapagain, Hamdi and Filali Boubrahimi (CIKM 2025) cast head pruning as a sequential decision problem. Here the
environment (`strategies.rl_env.HeadPruningEnv`, a `gymnasium.Env`) starts from the unpruned model; each action
prunes one head or stops, rewarded for every head pruned and charged for the clean validation accuracy it
costs. Each head is observed through three cheap clean-data signals: gradient importance |dL/d gate|,
attention entropy and the norm of the head's output-projection columns. Masks are evaluated by the shared,
cached `MaskEvaluator` on a fixed validation subset.

Under the backdoor objective the reward is the fall in the proxy ASR (the run's backdoor signal, measured on a
seeded subset of its triggered texts) minus the clean-accuracy penalty; pruning a head pays nothing by itself (a
small cost), and the episode ends once the proxy reaches the engine's stop level. Each head is also observed
through its backdoor support, and the proxy's progress is a global feature. The engine then keeps a step only
when the full proxy falls.

The policy (`strategies.rl_policy.HeadSharedPolicy`) scores every head with one network shared across heads, so
what it learns about one head's signals transfers to all of them. After training, a deterministic rollout gives
the order in which the policy prunes; heads pruned earlier get lower scores, and the shared engine prunes in that
order with its own guard and trajectory. The policy is saved as ``rl_policy.zip`` and travels with the export.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sb3_contrib import MaskablePPO

from purify.backdoor_signal import backdoor_scores
from purify.checkpoint import LoadedModel
from purify.data import TaskData
from purify.errors import ConfigError
from purify.heads import HeadGates
from purify.progress import enabled as progress_enabled
from purify.pruning import HeadRanking, PruneContext, PruningStrategy, batches_for
from purify.prune_engine import MaskEvaluator, PruneConfig, order_to_scores, subsample
from purify.registry import option, register_strategy

from .rl_env import BACKDOOR_SIGNAL, SIGNALS, HeadPruningEnv, ProxyTerms
from .rl_policy import HeadSharedPolicy, deterministic_torch, rollout


@dataclass
class RLPruneConfig(PruneConfig):
    """Knobs of rl_prune (plus the engine's, see PruneConfig): a head-shared PPO policy that learns which heads to
    prune from per-head signals, under the engine's accuracy guard (and, backdoor objective, its proxy guard)."""

    total_timesteps: int = option(384, "environment steps PPO trains for; each costs at most one (cached) mask "
                                  "evaluation on rl_val_samples validation samples, so this sets the run time", low=1)
    learning_rate: float = option(3e-3, "Adam learning rate of the policy and value networks", low=0, low_open=True)
    n_steps: int = option(64, "environment steps collected between two PPO updates", low=2)
    ppo_batch_size: int = option(32, "minibatch size of a PPO update (at most n_steps)", low=2)
    ppo_epochs: int = option(10, "passes over each collected rollout per update", low=1)
    gamma: float = option(0.99, "discount factor of the return", low=0, low_open=True, high=1)
    ent_coef: float = option(0.01, "weight of the entropy bonus (keeps exploring early on)", low=0)
    policy_hidden: int = option(32, "width of the head-shared policy and value networks", low=1)
    prune_reward: float = option(1.0, "informative objective: reward for each head pruned", low=0)
    proxy_reward: float = option(4.0, "backdoor objective: reward for bringing the proxy ASR from its start down to "
                                 "the stop level, paid in proportion to each step's fall (a rise costs)", low=0)
    prune_cost: float = option(0.05, "backdoor objective: cost of each head pruned (in place of prune_reward, so "
                               "pruning pays only through the proxy)", low=0)
    stop_bonus: float = option(1.0, "backdoor objective: bonus for the step that brings the proxy down to the stop "
                               "level (the episode ends there)", low=0)
    drop_penalty: float = option(2.0, "penalty per max_acc_drop of clean validation accuracy a step loses (a gain "
                                 "refunds it)", low=0)
    breach_penalty: float = option(1.0, "penalty when a step takes accuracy below baseline - max_acc_drop; the "
                                   "episode ends there", low=0)
    rl_val_samples: int | None = option(64, "validation samples the environment evaluates masks on (fixed, seeded "
                                        "subset; none = the guard's own subset)", low=1)
    rl_proxy_samples: int | None = option(64, "backdoor objective: triggered samples the environment measures the "
                                          "proxy ASR on (fixed, seeded subset; none = all of the engine's)", low=1)
    score_samples: int = option(256, "clean training samples the gradient importance and attention entropy are "
                                "measured on", low=1)
    follow_policy_stop: bool = option(True, "prune only the heads the policy pruned in its rollout (true), or let the "
                                      "rest follow in importance order so the engine's guard alone decides where to "
                                      "stop (false)")

    def validate(self) -> None:
        super().validate()
        if self.total_timesteps < self.n_steps:
            raise ConfigError("RLPruneConfig: total_timesteps must be >= n_steps (PPO needs at least one full rollout)")
        if self.ppo_batch_size > self.n_steps:
            raise ConfigError("RLPruneConfig: ppo_batch_size must be <= n_steps")

    @classmethod
    def search_space(cls) -> dict[str, dict]:
        return {
            "max_acc_drop": {"type": "float", "low": 0.005, "high": 0.05},
            "max_prune_fraction": {"type": "float", "low": 0.1, "high": 0.8},
            "total_timesteps": {"type": "int", "low": 256, "high": 4096, "log": True},
            "learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
            "drop_penalty": {"type": "float", "low": 0.5, "high": 8.0},
            "proxy_reward": {"type": "float", "low": 1.0, "high": 16.0, "log": True},
            "prune_cost": {"type": "float", "low": 0.0, "high": 0.5},
            "breach_penalty": {"type": "float", "low": 0.0, "high": 10.0},
            "follow_policy_stop": {"type": "categorical", "choices": [True, False]},
        }


# -- per-head clean-data signals -----------------------------------------------------------------------------
def attention_entropy(gates: HeadGates, batches: list[dict]) -> torch.Tensor:
    """Mean entropy of each head's attention rows over real tokens, divided by log(length), shape (L, H)."""
    total = torch.zeros(gates.shape, dtype=torch.float64)
    rows = 0
    for batch in batches:
        valid = batch["attention_mask"].to(torch.float64).cpu()  # (B, T)
        norm = torch.log(valid.sum(dim=1).clamp_min(2.0))  # (B,)
        for layer, probs in enumerate(gates.attention_probs(batch)):
            p = probs.to(torch.float64).cpu() * valid[:, None, None, :]
            ent = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1)  # (B, H, T)
            ent = ent / norm[:, None, None] * valid[:, None, :]
            total[layer] += ent.sum(dim=(0, 2))
        rows += int(valid.sum())
    return (total / max(rows, 1)).float()


def output_norms(gates: HeadGates) -> torch.Tensor:
    """L2 norm of each head's columns of its attention output projection, shape (L, H)."""
    modules = dict(gates.model.named_modules())
    norms = torch.zeros(gates.shape)
    d = gates.head_dim
    for block in gates.blocks:
        weight = modules[block.out_proj_name].weight.detach().float().cpu()
        for h in range(block.num_heads):
            part = weight[h * d:(h + 1) * d, :] if block.spec.conv1d else weight[:, h * d:(h + 1) * d]
            norms[block.layer, h] = part.norm()
    return norms


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Scale a non-negative tensor to [0, 1] by its maximum (all zeros stay zeros)."""
    x = torch.nan_to_num(x.float(), nan=0.0).clamp_min(0.0)
    top = float(x.max()) if x.numel() else 0.0
    return x / top if top > 0 else x


def head_signals(loaded: LoadedModel, gates: HeadGates, train: TaskData, samples: int, batch_size: int,
                 seed: int) -> torch.Tensor:
    """The per-head signals of `SIGNALS`, each in [0, 1], shape (L, H, len(SIGNALS))."""
    data = subsample(train, samples, seed)
    batches = batches_for(loaded.model, loaded.tokenizer, data, batch_size)
    importance = gates.importance(batches)
    importance = importance / importance.norm(dim=1, keepdim=True).clamp_min(1e-12)  # comparable across layers
    was_training = loaded.model.training
    loaded.model.eval()
    try:
        entropy = attention_entropy(gates, batches)
    finally:
        loaded.model.train(was_training)
    return torch.stack([_unit(importance), _unit(entropy), _unit(output_norms(gates))], dim=-1)


def rollout_scores(order: list[tuple[int, int]], fallback: torch.Tensor) -> torch.Tensor:
    """Scores (low = prune first): the k-th head of the rollout gets k / N; the rest 1 + `fallback` (in [0, 1])."""
    layers, heads = fallback.shape
    return order_to_scores(order, (layers, heads), _unit(fallback))


class RLPrune(PruningStrategy):
    """Prune heads in the order a MaskablePPO policy, trained on clean validation accuracy (and, backdoor objective,
    the fall in the proxy ASR), prunes them."""

    config: RLPruneConfig
    fast_options = {
        "total_timesteps": 64, "n_steps": 32, "ppo_batch_size": 16, "ppo_epochs": 2, "policy_hidden": 16,
        "rl_val_samples": 64, "score_samples": 64, "val_samples": 120, "step": 2,
    }

    def _subset(self, ctx: PruneContext, full: MaskEvaluator, data: TaskData, n: int | None,
                **kwargs: Any) -> MaskEvaluator:
        """`full` (an evaluator on `data` or a subset) when it measures at most `n` samples, else one on `n` seeded
        samples of `data`."""
        if n is None or len(full.labels) <= n:
            return full
        return MaskEvaluator(ctx.gates, ctx.loaded.tokenizer, subsample(data, n, self.config.seed),
                             batch_size=self.config.batch_size, **kwargs)

    def _terms(self, ctx: PruneContext) -> ProxyTerms | None:
        """Backdoor objective: the proxy on `rl_proxy_samples` triggered texts and the engine's stop level."""
        guard = ctx.guard(self.config)
        if guard is None:
            return None
        assert ctx.signal is not None and ctx.proxy is not None
        cfg = self.config
        proxy = self._subset(ctx, ctx.proxy, ctx.signal.probe_data, cfg.rl_proxy_samples, context=ctx.signal.applied)
        return ProxyTerms(proxy, guard.stop_at, cfg.proxy_reward, cfg.prune_cost, cfg.stop_bonus)

    def _train(self, env: HeadPruningEnv) -> MaskablePPO:
        """PPO on `env` for `total_timesteps` (call inside `deterministic_torch`)."""
        cfg = self.config
        model = MaskablePPO(
            HeadSharedPolicy, env, learning_rate=cfg.learning_rate, n_steps=cfg.n_steps,
            batch_size=cfg.ppo_batch_size, n_epochs=cfg.ppo_epochs, gamma=cfg.gamma, ent_coef=cfg.ent_coef,
            policy_kwargs={"num_heads": env.n, "head_features": env.head_features,
                           "global_features": env.global_features, "hidden": cfg.policy_hidden},
            seed=cfg.seed, device="cpu", verbose=0,
        )
        model.learn(total_timesteps=cfg.total_timesteps, progress_bar=progress_enabled())
        return model

    def _engine_order(self, order: list[tuple[int, int]], scores: torch.Tensor) -> list[tuple[int, int]]:
        """The rollout's heads; unless the policy's stop is followed, then the rest by ascending score."""
        if self.config.follow_policy_stop:
            return list(order)
        rest = sorted(((float(scores[layer, h]), layer, h)
                       for layer in range(scores.shape[0]) for h in range(scores.shape[1])
                       if (layer, h) not in set(order)))
        return list(order) + [(layer, h) for _, layer, h in rest]

    def _signals(self, ctx: PruneContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The observed per-head signals (backdoor objective: the support in [0, 1] last), the scores of the heads
        the rollout leaves out (in [0, 1], low first) and the raw backdoor support (None when informative)."""
        cfg = self.config
        signals = head_signals(ctx.loaded, ctx.gates, ctx.train, cfg.score_samples, cfg.batch_size, cfg.seed)
        if not ctx.backdoor:
            return signals, signals[..., 0], None
        support = ctx.support(cfg.batch_size)
        rest = backdoor_scores(support, signals[..., 0])
        return torch.cat([signals, _unit(support)[..., None]], dim=-1), rest - rest.min(), support

    def head_scores(self, ctx: PruneContext) -> HeadRanking:
        cfg = self.config
        signals, fallback, support = self._signals(ctx)
        rl_evaluate = self._subset(ctx, ctx.evaluate, ctx.validation, cfg.rl_val_samples)
        terms = self._terms(ctx)
        env_kwargs: dict[str, Any] = dict(max_acc_drop=cfg.max_acc_drop, max_prune_fraction=cfg.max_prune_fraction,
                          min_heads_per_layer=cfg.min_heads_per_layer, prune_reward=cfg.prune_reward,
                          drop_penalty=cfg.drop_penalty, breach_penalty=cfg.breach_penalty, terms=terms)
        env = HeadPruningEnv(rl_evaluate, signals, **env_kwargs)
        started = time.perf_counter()
        with deterministic_torch():
            model = self._train(env)
            greedy_env = HeadPruningEnv(rl_evaluate, signals, **env_kwargs)
            order, reason = rollout(model, greedy_env, cfg.seed)
        seconds = time.perf_counter() - started
        scratch = tempfile.TemporaryDirectory(prefix="purify-rl-policy-")  # the result takes it over
        policy_path = Path(scratch.name) / "rl_policy.zip"
        try:
            model.save(policy_path)
        except BaseException:
            scratch.cleanup()
            raise
        names = SIGNALS + ((BACKDOOR_SIGNAL,) if support is not None else ())
        facts = {
            "rl_training": {
                "episode_rewards": [round(r, 4) for r in env.episode_returns],
                "episode_lengths": env.episode_lengths,
                "timesteps": int(model.num_timesteps),
                "seconds": round(seconds, 2),
            },
            "rl_rollout": [list(x) for x in order],
            "rl_rollout_end": reason,
            "rl_rollout_val_accuracy": greedy_env.accuracy,
            "rl_baseline_val_accuracy": env.baseline,
            "rl_evaluations": rl_evaluate.calls,
            "rl_val_samples": len(rl_evaluate.labels),
            "head_signals": {name: signals[..., i].tolist() for i, name in enumerate(names)},
        }
        if terms is not None and support is not None:
            facts.update(_proxy_facts(env, greedy_env, terms, support))
        scores = rollout_scores(order, fallback)
        return HeadRanking(scores, order=self._engine_order(order, scores), facts=facts,
                           files={"rl_policy.zip": str(policy_path)}, scratch=[scratch])


def _proxy_facts(env: HeadPruningEnv, greedy_env: HeadPruningEnv, terms: ProxyTerms,
                 support: torch.Tensor) -> dict[str, Any]:
    """What the backdoor objective's RL run did: the proxy at its start, at the end of the greedy rollout and of
    each training episode, the stop level, and the proxy evaluator's size and work."""
    proxy = terms.proxy
    assert isinstance(proxy, MaskEvaluator)
    return {
        "rl_proxy": {
            "start": env.start_proxy,
            "rollout_end": greedy_env.proxy,
            "stop_at": terms.stop_at,
            "episode_ends": [round(p, 4) for p in env.episode_proxies],
            "samples": len(proxy.labels),
            "evaluations": proxy.calls,
        },
        "backdoor_support": support.tolist(),
    }


register_strategy("rl_prune", RLPruneConfig, RLPrune)
