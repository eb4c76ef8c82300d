"""The pruning environment of rl_prune: a `gymnasium.Env` that prunes one head per step (or stops).

It starts from the unpruned model. The observation holds, for every head, whether it is still kept, the
strategy's clean-data signals (each in [0, 1]), its layer's position and kept share and whether pruning it is
legal, plus the current clean validation accuracy (relative to the unpruned model and to the guard) and the
pruned share. Illegal actions (heads already pruned, heads whose layer would fall below `min_heads_per_layer`,
any head once the budget is spent) are masked out. The reward pays `prune_reward` per pruned head, charges
`drop_penalty` per `max_acc_drop` of accuracy lost by a step, and ends the episode with `breach_penalty` when
accuracy falls below the guard; the episode also ends on stop or when the prune budget is spent.
"""
from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

#: per-head signals in the observation, in this order (each scaled to [0, 1])
SIGNALS = ("importance", "attention_entropy", "output_norm")
#: per-head observation features: kept, the signals, layer position, layer kept share, legal
HEAD_FEATURES = 1 + len(SIGNALS) + 3
#: global observation features: accuracy / baseline, slack to the guard, pruned share, budget used
GLOBAL_FEATURES = 4
#: features whose value may leave [0, 1] are clipped to this range
OBS_LOW, OBS_HIGH = -1.0, 2.0


class HeadPruningEnv(gym.Env):
    """Prune one head per step (or stop) while clean validation accuracy is watched; see the module docstring."""

    metadata = {"render_modes": []}

    def __init__(self, evaluate: Callable[[torch.Tensor], float], signals: torch.Tensor, *, max_acc_drop: float,
                 max_prune_fraction: float, min_heads_per_layer: int, prune_reward: float = 1.0,
                 drop_penalty: float = 2.0, breach_penalty: float = 1.0) -> None:
        super().__init__()
        self.evaluate = evaluate
        self.signals = torch.as_tensor(signals, dtype=torch.float32)
        self.num_layers, self.num_heads, _ = self.signals.shape
        self.n = self.num_layers * self.num_heads
        self.max_acc_drop = max_acc_drop
        self.min_heads_per_layer = min_heads_per_layer
        self.budget = int(max_prune_fraction * self.n)
        self.prune_reward, self.drop_penalty, self.breach_penalty = prune_reward, drop_penalty, breach_penalty
        self.drop_scale = max(max_acc_drop, 1e-3)
        self.baseline = float(evaluate(torch.ones(self.num_layers, self.num_heads)))
        self.floor = self.baseline - max_acc_drop
        self.action_space = spaces.Discrete(self.n + 1)  # action n = stop
        size = self.n * HEAD_FEATURES + GLOBAL_FEATURES
        self.observation_space = spaces.Box(OBS_LOW, OBS_HIGH, shape=(size,), dtype=np.float32)
        layer_pos = torch.arange(self.num_layers, dtype=torch.float32) / max(self.num_layers - 1, 1)
        self._layer_pos = layer_pos[:, None].expand(self.num_layers, self.num_heads)
        self.episode_returns: list[float] = []
        self.episode_lengths: list[int] = []
        self.mask = torch.ones(self.num_layers, self.num_heads)
        self.accuracy = self.baseline
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
        obs = torch.cat([per_head.flatten(), glob]).clamp(OBS_LOW, OBS_HIGH)
        return obs.numpy().astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.mask = torch.ones(self.num_layers, self.num_heads)
        self.accuracy = self.baseline
        self.pruned_order = []
        self._return = 0.0
        self._steps = 0
        return self._observation(), {}

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = int(action)
        info: dict = {}
        if action == self.stop_action:
            reward, terminated, info["reason"] = 0.0, True, "stop"
        else:
            layer, head = divmod(action, self.num_heads)
            if not bool(self._legal()[layer, head]):
                # unreachable with action masks; without them (random play) an illegal choice wastes the step
                reward, terminated, info["reason"] = -self.prune_reward, False, "illegal"
            else:
                self.mask[layer, head] = 0.0
                self.pruned_order.append((layer, head))
                accuracy = float(self.evaluate(self.mask))
                reward = self.prune_reward - self.drop_penalty * (self.accuracy - accuracy) / self.drop_scale
                self.accuracy = accuracy
                terminated = False
                if accuracy < self.floor:
                    reward -= self.breach_penalty
                    terminated, info["reason"] = True, "guard"
                elif not bool(self._legal().any()):
                    terminated = True
                    info["reason"] = "budget" if len(self.pruned_order) >= self.budget else "no_legal_head"
        self._return += reward
        self._steps += 1
        truncated = not terminated and self._steps > self.n  # only reachable through illegal (unmasked) actions
        if terminated or truncated:
            self.episode_returns.append(float(self._return))
            self.episode_lengths.append(len(self.pruned_order))
        info["accuracy"] = self.accuracy
        return self._observation(), float(reward), terminated, truncated, info
