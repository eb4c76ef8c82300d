"""bayes_prune: a posterior over per-head gates, fitted by SVI on clean data; prune heads the data does not need.

Chapagain, Hamdi and Filali Boubrahimi (CIKM 2025) prune the heads a Bayesian treatment finds least informative.
Here every head i carries a latent logit z_i with a sparsity-favouring prior

    z_i ~ Normal(mu_0, s_0),   mu_0 = s_0 * Phi^-1(prior_inclusion)   (so P(z_i > 0) = prior_inclusion < 1/2)

and gates the model through g_i = sigmoid(z_i / temperature) (a logit-normal, concrete-like gate: a low
temperature pushes gates towards 0 or 1). Clean training labels are observed through the classifier's
logits with the gated heads (``gates.differentiable``); the transformer weights stay fixed. The mean-field
guide q(z_i) = Normal(loc_i, scale_i) is fitted with ``pyro.infer.SVI`` and ``Trace_ELBO`` on minibatches
(the likelihood scaled up to the whole clean subset, the prior and guide terms scaled by `sparsity_weight`).
A head the data leans on is pulled towards gate 1 with a tight posterior; a head it does not need relaxes to
the prior. From `num_posterior_samples` draws of the posterior, a head's inclusion probability is the share
of draws with g_i > 1/2 and its uncertainty the standard deviation of g_i. Heads are pruned in ascending
inclusion, ties (equal estimated inclusion) broken by the more uncertain head first, through the shared
engine with its guard.

Backdoor objective: the likelihood also observes the backdoor signal's triggered training texts (under its latent
shift where no trigger word was found) with their own labels, the answers the model should give but for the
trigger, weighted by `probe_weight`. Gates whose heads make the trigger work are then pulled towards 0, so those
heads lose inclusion and are pruned first, under the engine's proxy guard.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from torch.distributions import constraints

from purify.backdoor_signal import BackdoorSignal
from purify.checkpoint import LoadedModel
from purify.data import TaskData
from purify.errors import ConfigError
from purify.heads import HeadGates
from purify.progress import track
from purify.pruning import HeadRanking, PruneContext, PruningStrategy, batches_for
from purify.prune_engine import PruneConfig, order_to_scores, subsample
from purify.registry import option, register_strategy

#: names of the guide's parameters in pyro's parameter store
LOC, SCALE = "bayes_prune.loc", "bayes_prune.scale"
#: initial posterior scale of every head's logit
INIT_SCALE = 0.5


@dataclass
class BayesPruneConfig(PruneConfig):
    """Knobs of bayes_prune (plus the engine's, see PruneConfig): SVI over per-head gate logits under a sparse
    prior, then pruning in order of posterior inclusion."""

    svi_steps: int = option(150, "SVI (Adam) steps, one clean training minibatch each", low=1)
    lr: float = option(0.1, "Adam learning rate of the guide's per-head locations and scales", low=0, low_open=True)
    prior_inclusion: float = option(0.3, "prior probability that a head is on, P(g > 1/2); below 1/2 the prior "
                                    "favours sparsity", low=0, low_open=True, high=1, high_open=True)
    prior_scale: float = option(1.0, "prior standard deviation of a head's gate logit", low=0, low_open=True)
    sparsity_weight: float = option(1.0, "weight of the prior (KL) term against the clean-data likelihood; above 1 "
                                    "the posterior leans harder towards the sparse prior (a tempered posterior)",
                                    low=0, low_open=True)
    temperature: float = option(0.5, "gate = sigmoid(logit / temperature); lower is closer to a hard 0/1 gate",
                                low=0, low_open=True)
    init_logit: float = option(3.0, "the guide's initial logit location (3.0 with the default temperature: every "
                               "gate starts near 1, the unpruned model)")
    num_posterior_samples: int = option(256, "posterior draws inclusion and uncertainty are estimated from (an "
                                        "uncertainty needs two)", low=2)
    svi_samples: int = option(1024, "clean training samples the likelihood is taken over (seeded subset)", low=1)
    svi_batch_size: int = option(32, "minibatch size of an SVI step", low=1)
    probe_weight: float = option(1.0, "backdoor objective: weight of the probe likelihood (the signal's triggered "
                                 "training texts observed with their own labels) against the clean-data likelihood; "
                                 "1 = both weigh as much in total, 0 = no probe term", low=0)

    @classmethod
    def search_space(cls) -> dict[str, dict]:
        return {
            "max_acc_drop": {"type": "float", "low": 0.005, "high": 0.05},
            "max_prune_fraction": {"type": "float", "low": 0.1, "high": 0.8},
            "svi_steps": {"type": "int", "low": 50, "high": 600, "log": True},
            "lr": {"type": "float", "low": 0.005, "high": 0.2, "log": True},
            "prior_inclusion": {"type": "float", "low": 0.05, "high": 0.5},
            "sparsity_weight": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
            "temperature": {"type": "float", "low": 0.1, "high": 1.0, "log": True},
            "probe_weight": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
        }


class GatePosterior:
    """The pyro model (prior over head-gate logits, labels through the gated classifier) and its mean-field guide;
    with a probe batch, its labels are observed too (inside `applied`, the signal's latent shift)."""

    def __init__(self, gates: HeadGates, num_data: int, config: BayesPruneConfig,
                 applied: Callable[[], Any] = contextlib.nullcontext) -> None:
        self.gates = gates
        self.num_data = num_data
        self.config = config
        self.applied = applied
        self.n = gates.num_layers * gates.num_heads
        self.device = next(gates.model.parameters()).device
        z = NormalDist().inv_cdf(config.prior_inclusion)
        self.prior_loc = torch.full((self.n,), config.prior_scale * z, device=self.device)
        self.prior_scale = torch.full((self.n,), config.prior_scale, device=self.device)

    def model(self, batch: dict, probe: dict | None = None) -> None:
        """Gate logits from the prior; observed labels from the gated model's logits (clean, then probe, batch);
        each term is scaled up to the whole clean subset, the probe's also by `probe_weight`."""
        cfg = self.config
        with poutine.scale(scale=cfg.sparsity_weight), pyro.plate("heads", self.n):
            z = pyro.sample("z", dist.Normal(self.prior_loc, self.prior_scale))
        gate = torch.sigmoid(z / cfg.temperature).reshape(self.gates.shape)
        self._observe("data", "y", batch, gate, 1.0)
        if probe is not None:
            with self.applied():
                self._observe("probe", "y_probe", probe, gate, cfg.probe_weight)

    def _observe(self, plate: str, site: str, batch: dict, gate: torch.Tensor, weight: float) -> None:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with self.gates.differentiable(gate):
            logits = self.gates.model(**inputs).logits
        labels = batch["labels"]
        with pyro.plate(plate, labels.shape[0]), poutine.scale(scale=weight * self.num_data / labels.shape[0]):
            pyro.sample(site, dist.Categorical(logits=logits.float()), obs=labels)

    def guide(self, batch: dict, probe: dict | None = None) -> None:
        """Mean-field Normal posterior over each head's gate logit."""
        cfg = self.config
        loc = pyro.param(LOC, torch.full((self.n,), cfg.init_logit, device=self.device))
        scale = pyro.param(SCALE, torch.full((self.n,), INIT_SCALE, device=self.device),
                           constraint=constraints.positive)
        with poutine.scale(scale=cfg.sparsity_weight), pyro.plate("heads", self.n):
            pyro.sample("z", dist.Normal(loc, scale))

    def posterior(self, num_samples: int) -> dict[str, torch.Tensor]:
        """Per-head inclusion P(g > 1/2) and gate std from posterior draws, plus the guide's loc and scale (L, H)."""
        store = pyro.get_param_store()
        loc = store[LOC].detach().double().cpu()
        scale = store[SCALE].detach().double().cpu()
        draws = dist.Normal(loc, scale).sample((num_samples,))  # (S, N), float64
        gate = torch.sigmoid(draws / self.config.temperature)
        shape = self.gates.shape
        return {
            "inclusion": (gate > 0.5).double().mean(dim=0).reshape(shape),
            "uncertainty": gate.std(dim=0).reshape(shape),
            "loc": loc.reshape(shape),
            "scale": scale.reshape(shape),
        }


@contextlib.contextmanager
def private_param_store() -> Iterator[None]:
    """Run with an empty pyro parameter store, then put the caller's parameters back."""
    store = pyro.get_param_store()
    saved = store.get_state()
    store.clear()
    try:
        yield
    finally:
        store.clear()
        store.set_state(saved)


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients inside the block (only the gates learn), restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def shuffled_forever(items: list[dict], seed: int) -> Iterator[dict]:
    """`items` in seeded random order, pass after pass (each pass a fresh permutation)."""
    rng = np.random.default_rng(seed)
    while True:
        queue = [int(i) for i in rng.permutation(len(items))]
        while queue:
            yield items[queue.pop()]


def posterior_order(inclusion: torch.Tensor, uncertainty: torch.Tensor) -> list[tuple[int, int]]:
    """Heads by ascending inclusion; equal inclusion: higher uncertainty first; then by position."""
    num_layers, num_heads = inclusion.shape
    keys = [(float(inclusion[layer, h]), -float(uncertainty[layer, h]), layer, h)
            for layer in range(num_layers) for h in range(num_heads)]
    return [(layer, h) for _, _, layer, h in sorted(keys)]


class BayesPrune(PruningStrategy):
    """Prune heads with low posterior inclusion under a sparsity prior over head gates (SVI in pyro)."""

    config: BayesPruneConfig
    fast_options = {
        "svi_steps": 60, "lr": 0.1, "svi_samples": 128, "svi_batch_size": 32, "num_posterior_samples": 128,
        "val_samples": 120, "step": 2,
    }

    def fit_posterior(self, loaded: LoadedModel, gates: HeadGates, train: TaskData,
                      signal: BackdoorSignal | None = None) -> dict[str, torch.Tensor]:
        """Fit the gate posterior by SVI on clean training data (and, with `signal` and a positive `probe_weight`,
        its relabelled triggered texts); per-head statistics as (L, H) tensors."""
        cfg = self.config
        data = subsample(train, cfg.svi_samples, cfg.seed)
        if len(data) == 0:
            raise ConfigError("bayes_prune needs at least one clean training sample")
        batches = shuffled_forever(batches_for(loaded.model, loaded.tokenizer, data, cfg.svi_batch_size), cfg.seed)
        probes: Iterator[dict] | None = None
        applied: Callable[[], Any] = contextlib.nullcontext
        if signal is not None and cfg.probe_weight > 0 and len(signal.score_data):
            relabelled = batches_for(loaded.model, loaded.tokenizer, signal.score_data_relabelled(), cfg.svi_batch_size)
            probes, applied = shuffled_forever(relabelled, cfg.seed + 1), signal.applied
        posterior = GatePosterior(gates, len(data), cfg, applied)
        losses: list[float] = []
        with private_param_store(), frozen(loaded.model):
            pyro.set_rng_seed(cfg.seed)
            # pyro.optim.Adam is generated at import time, so its stubs lack it
            svi = SVI(posterior.model, posterior.guide, pyro.optim.Adam({"lr": cfg.lr}),  # type: ignore[attr-defined]
                      loss=Trace_ELBO())
            for _ in track(range(cfg.svi_steps), description="bayes_prune: SVI", total=cfg.svi_steps):
                batch = next(batches)
                losses.append(float(svi.step(batch) if probes is None else svi.step(batch, next(probes))))
            stats = posterior.posterior(cfg.num_posterior_samples)
        stats["elbo_loss"] = torch.tensor(losses)
        return stats

    def head_scores(self, ctx: PruneContext) -> HeadRanking:
        stats = self.fit_posterior(ctx.loaded, ctx.gates, ctx.train, ctx.signal)
        order = posterior_order(stats["inclusion"], stats["uncertainty"])
        losses = stats["elbo_loss"]
        every = max(1, len(losses) // 50)
        facts = {
            "posterior_inclusion": stats["inclusion"].tolist(),
            "posterior_uncertainty": stats["uncertainty"].tolist(),
            "posterior_logit_loc": stats["loc"].tolist(),
            "posterior_logit_scale": stats["scale"].tolist(),
            "prune_order": [list(x) for x in order],
            "svi_loss_curve": [round(float(x), 4) for x in losses[::every]],
            "svi_final_loss": float(losses[-max(1, len(losses) // 10):].mean()),
        }
        if ctx.signal is not None:
            facts["probe_term"] = {"weight": self.config.probe_weight, "samples": len(ctx.signal.score_data)}
        return HeadRanking(order_to_scores(order, ctx.gates.shape), order=order, facts=facts)


register_strategy("bayes_prune", BayesPruneConfig, BayesPrune)
