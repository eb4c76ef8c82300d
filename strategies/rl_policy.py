"""The policy of rl_prune: a maskable actor-critic that scores every head with one network shared across heads
(plus a stop logit), and the greedy rollout that turns a trained policy into a prune order.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from torch import nn

from .rl_env import GLOBAL_FEATURES, HEAD_FEATURES, HeadPruningEnv


class HeadwiseExtractor(nn.Module):
    """Encode each head with one shared MLP (its features plus the global ones); pool them for stop and value."""

    def __init__(self, num_heads: int, head_features: int, global_features: int, hidden: int) -> None:
        super().__init__()
        self.num_heads, self.head_features, self.hidden = num_heads, head_features, hidden
        self.encoder = nn.Sequential(nn.Linear(head_features + global_features, hidden), nn.Tanh(),
                                     nn.Linear(hidden, hidden), nn.Tanh())
        self.stop = nn.Sequential(nn.Linear(hidden + global_features, hidden), nn.Tanh())
        self.critic = nn.Sequential(nn.Linear(hidden + global_features, hidden), nn.Tanh())
        self.latent_dim_pi = (num_heads + 1) * hidden
        self.latent_dim_vf = hidden

    def _encode(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        split = self.num_heads * self.head_features
        per_head = features[:, :split].reshape(-1, self.num_heads, self.head_features)
        glob = features[:, split:]
        x = torch.cat([per_head, glob[:, None, :].expand(-1, self.num_heads, -1)], dim=-1)
        encoded = self.encoder(x)  # (B, N, hidden)
        return encoded, torch.cat([encoded.mean(dim=1), glob], dim=-1)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        encoded, context = self._encode(features)
        return torch.cat([encoded, self.stop(context)[:, None, :]], dim=1).flatten(1)

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.critic(self._encode(features)[1])

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoded, context = self._encode(features)
        actor = torch.cat([encoded, self.stop(context)[:, None, :]], dim=1).flatten(1)
        return actor, self.critic(context)


class HeadwiseLogits(nn.Module):
    """One linear read-out shared by every head's latent and the stop latent, plus a learned offset per action.

    Maps (B, (N+1)*h) to (B, N+1) logits. The shared read-out generalises across heads through their features;
    the per-action offsets (zero at first) let the policy learn what a particular head of this model costs. The
    stop offset starts at `stop_offset` (negative: an untrained policy prunes rather than stops, so early
    episodes explore pruning; training moves it).
    """

    def __init__(self, num_heads: int, hidden: int, stop_offset: float = -2.0) -> None:
        super().__init__()
        self.hidden = hidden
        self.linear = nn.Linear(hidden, 1)
        offsets = torch.zeros(num_heads + 1)
        offsets[-1] = stop_offset
        self.offsets = nn.Parameter(offsets)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.linear(latent.reshape(latent.shape[0], -1, self.hidden)).squeeze(-1) + self.offsets


class HeadSharedPolicy(MaskableActorCriticPolicy):
    """Maskable actor-critic whose action logits come from one network shared across heads (plus a stop logit)."""

    def __init__(self, *args, num_heads: int, head_features: int = HEAD_FEATURES,
                 global_features: int = GLOBAL_FEATURES, hidden: int = 32, **kwargs) -> None:
        self.policy_num_heads = num_heads
        self.head_features = head_features
        self.global_features = global_features
        self.hidden = hidden
        super().__init__(*args, **kwargs)

    def _build(self, lr_schedule) -> None:
        # sb3 types mlp_extractor as its MlpExtractor; a module with its interface is the documented extension
        self.mlp_extractor = HeadwiseExtractor(  # type: ignore[assignment]
            self.policy_num_heads, self.head_features, self.global_features, self.hidden)
        self.action_net = HeadwiseLogits(self.policy_num_heads, self.hidden)
        self.value_net = nn.Linear(self.hidden, 1)
        with torch.no_grad():  # start close to a uniform choice among legal actions
            self.action_net.linear.weight.mul_(0.01)
            self.action_net.linear.bias.zero_()
        # as sb3's own _build: optimizer_class is typed as the bare Optimizer base, which takes no lr
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1),  # type: ignore[call-arg]
                                              **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict:
        data = super()._get_constructor_parameters()
        data.update(num_heads=self.policy_num_heads, head_features=self.head_features,
                    global_features=self.global_features, hidden=self.hidden)
        return data


@contextlib.contextmanager
def deterministic_torch() -> Iterator[None]:
    """Ask torch for deterministic kernels inside the block (warn-only), then restore the previous setting."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def rollout(model: MaskablePPO, env: HeadPruningEnv, seed: int) -> tuple[list[tuple[int, int]], str]:
    """Run the policy greedily (deterministic) from the unpruned model: heads in the order pruned, and why it ended."""
    obs, _ = env.reset(seed=seed)
    reason = "budget"
    for _ in range(env.n + 1):
        action, _ = model.predict(obs, deterministic=True, action_masks=env.action_masks())
        obs, _, terminated, truncated, info = env.step(int(action))
        if terminated or truncated:
            reason = info.get("reason", reason)
            break
    return list(env.pruned_order), reason
