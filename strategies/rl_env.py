"""The pruning environment of rl_prune: a `gymnasium.Env` that prunes one head per step (or stops).

It starts from the unpruned model. The observation holds, for every head, whether it is still kept, the
strategy's clean-data signals (each in [0, 1]), its layer's position and kept share and whether pruning it is
legal, plus the current clean validation accuracy (relative to the unpruned model and to the guard) and the
pruned share. Illegal actions (heads already pruned, heads whose layer would fall below `min_heads_per_layer`,
any head once the budget is spent) are masked out. The reward pays `prune_reward` per pruned head, charges
`drop_penalty` per `max_acc_drop` of accuracy lost by a step, and ends the episode with `breach_penalty` when
accuracy falls below the guard; the episode also ends on stop or when the prune budget is spent.

Under the backdoor objective (`ProxyTerms`) the environment also measures the proxy ASR after each step: a step
earns `reward` times the proxy's fall divided by its start's distance to the stop level, and each head pruned costs
`prune_cost` instead of paying `prune_reward`, so pruning pays only when it lowers the proxy. The episode ends with
`stop_bonus` when the proxy reaches the stop level. The strategy adds the backdoor support to the signals, and the
observation adds the proxy's remaining share of the way down (1 at the start, 0 at the stop level).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

#: per-head signals in the observation, in this order (each scaled to [0, 1])
SIGNALS = ("importance", "attention_entropy", "output_norm")
#: the extra per-head signal of the backdoor objective
BACKDOOR_SIGNAL = "backdoor_support"
#: per-head observation features besides the signals: kept, layer position, layer kept share, legal
HEAD_STATE_FEATURES = 4
#: per-head observation features of the informative objective: the state plus `SIGNALS`
HEAD_FEATURES = HEAD_STATE_FEATURES + len(SIGNALS)
#: global observation features: accuracy / baseline, slack to the guard, pruned share, budget used (the backdoor
#: objective adds the proxy's remaining share)
GLOBAL_FEATURES = 4
#: features whose value may leave [0, 1] are clipped to this range
OBS_LOW, OBS_HIGH = -1.0, 2.0


@dataclass
class ProxyTerms:
    """The backdoor objective's side of the environment: the proxy ASR under a mask and what its fall earns."""

    proxy: Callable[[torch.Tensor], float]
    stop_at: float  # the episode ends once the proxy is at most this
    reward: float = 4.0  # paid in all for a fall from the start to `stop_at`, in proportion at each step
    prune_cost: float = 0.05  # charged per head pruned (replaces prune_reward)
    stop_bonus: float = 1.0  # paid when a step brings the proxy down to `stop_at`


class HeadPruningEnv(gym.Env):
    """Prune one head per step (or stop) while clean validation accuracy is watched; see the module docstring."""

    metadata = {"render_modes": []}

    def __init__(self, evaluate: Callable[[torch.Tensor], float], signals: torch.Tensor, *, max_acc_drop: float,
                 max_prune_fraction: float, min_heads_per_layer: int, prune_reward: float = 1.0,
                 drop_penalty: float = 2.0, breach_penalty: float = 1.0, terms: ProxyTerms | None = None) -> None:
        super().__init__()
        self.evaluate = evaluate
        self.signals = torch.as_tensor(signals, dtype=torch.float32)
        self.num_layers, self.num_heads, num_signals = self.signals.shape
        self.n = self.num_layers * self.num_heads
        self.max_acc_drop = max_acc_drop
        self.min_heads_per_layer = min_heads_per_layer
        self.budget = int(max_prune_fraction * self.n)
        self.prune_reward, self.drop_penalty, self.breach_penalty = prune_reward, drop_penalty, breach_penalty
        self.drop_scale = max(max_acc_drop, 1e-3)
        self.baseline = float(evaluate(torch.ones(self.num_layers, self.num_heads)))
        self.floor = self.baseline - max_acc_drop
        self.terms = terms
        self.start_proxy = float(terms.proxy(torch.ones(self.num_layers, self.num_heads))) if terms else 0.0
        self.proxy_scale = max(self.start_proxy - terms.stop_at, 1e-2) if terms else 1.0
        self.head_features = HEAD_STATE_FEATURES + num_signals
        self.global_features = GLOBAL_FEATURES + (terms is not None)
        self.action_space = spaces.Discrete(self.n + 1)  # action n = stop
        size = self.n * self.head_features + self.global_features
        self.observation_space = spaces.Box(OBS_LOW, OBS_HIGH, shape=(size,), dtype=np.float32)
        layer_pos = torch.arange(self.num_layers, dtype=torch.float32) / max(self.num_layers - 1, 1)
        self._layer_pos = layer_pos[:, None].expand(self.num_layers, self.num_heads)
        self.episode_returns: list[float] = []
        self.episode_lengths: list[int] = []
        self.episode_proxies: list[float] = []  # the proxy at each episode's end (backdoor objective)
        self.mask = torch.ones(self.num_layers, self.num_heads)
        self.accuracy = self.baseline
        self.proxy = self.start_proxy
        self.pruned_order: list[tuple[int, int]] = []
        self._return = 0.0
        self._steps = 0

    @property
    def stop_action(self) -> int:
        return self.n

    def _legal(self) -> torch.Tensor:
        kept_per_layer = self.mask.sum(dim=1, keepdim=True)
        legal = (self.mask > 0) & (kept_per_layer - 1 >= self.min_heads_per_layer)
        if len(self.pruned_order) >= self.budget:
            legal = torch.zeros_like(legal)
        return legal

    def action_masks(self) -> np.ndarray:
        """Legal actions: unpruned heads whose layer keeps `min_heads_per_layer`, within budget; stop always."""
        return np.append(self._legal().flatten().numpy(), True)

    def _observation(self) -> np.ndarray:
        kept_share = self.mask.sum(dim=1, keepdim=True).expand(-1, self.num_heads) / self.num_heads
        per_head = torch.cat([self.mask[..., None], self.signals, self._layer_pos[..., None], kept_share[..., None],
                              self._legal().float()[..., None]], dim=-1)
        pruned = len(self.pruned_order)
        glob = torch.tensor([
            self.accuracy / self.baseline if self.baseline > 0 else 1.0,
            (self.accuracy - self.floor) / self.drop_scale,
            pruned / self.n,
            pruned / self.budget if self.budget else 1.0,
        ])
        if self.terms is not None:
            glob = torch.cat([glob, torch.tensor([(self.proxy - self.terms.stop_at) / self.proxy_scale])])
        obs = torch.cat([per_head.flatten(), glob]).clamp(OBS_LOW, OBS_HIGH)
        return obs.numpy().astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.mask = torch.ones(self.num_layers, self.num_heads)
        self.accuracy = self.baseline
        self.proxy = self.start_proxy
        self.pruned_order = []
        self._return = 0.0
        self._steps = 0
        return self._observation(), {}

    def _proxy_step(self, info: dict) -> tuple[float, bool]:
        """Measure the proxy after a step inside the guard: the reward for its fall, and whether it reached the stop."""
        assert self.terms is not None
        before, self.proxy = self.proxy, float(self.terms.proxy(self.mask))
        reward = self.terms.reward * (before - self.proxy) / self.proxy_scale
        if self.proxy > self.terms.stop_at:
            return reward, False
        info["reason"] = "proxy"
        return reward + (self.terms.stop_bonus if before > self.terms.stop_at else 0.0), True

    def _prune(self, layer: int, head: int, info: dict) -> tuple[float, bool]:
        """Prune a legal head: the step's reward, and whether the episode ends."""
        self.mask[layer, head] = 0.0
        self.pruned_order.append((layer, head))
        accuracy = float(self.evaluate(self.mask))
        head_reward = self.prune_reward if self.terms is None else -self.terms.prune_cost
        reward = head_reward - self.drop_penalty * (self.accuracy - accuracy) / self.drop_scale
        self.accuracy = accuracy
        if accuracy < self.floor:
            info["reason"] = "guard"
            return reward - self.breach_penalty, True
        if self.terms is not None:
            gain, reached = self._proxy_step(info)
            reward += gain
            if reached:
                return reward, True
        if not bool(self._legal().any()):
            info["reason"] = "budget" if len(self.pruned_order) >= self.budget else "no_legal_head"
            return reward, True
        return reward, False

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = int(action)
        info: dict = {}
        if action == self.stop_action:
            reward, terminated, info["reason"] = 0.0, True, "stop"
        else:
            layer, head = divmod(action, self.num_heads)
            if bool(self._legal()[layer, head]):
                reward, terminated = self._prune(layer, head, info)
            else:
                # unreachable with action masks; without them (random play) an illegal choice wastes the step
                penalty = self.prune_reward if self.terms is None else 1.0
                reward, terminated, info["reason"] = -penalty, False, "illegal"
        self._return += reward
        self._steps += 1
        truncated = not terminated and self._steps > self.n  # only reachable through illegal (unmasked) actions
        if terminated or truncated:
            self.episode_returns.append(float(self._return))
            self.episode_lengths.append(len(self.pruned_order))
            if self.terms is not None:
                self.episode_proxies.append(self.proxy)
        info["accuracy"] = self.accuracy
        if self.terms is not None:
            info["proxy"] = self.proxy
        return self._observation(), float(reward), terminated, truncated, info
