"""GradShield: remove samples whose gradient step would hurt a trusted probe objective, with an adaptive threshold.

Why the sign: one gradient-descent step of size lr on sample s moves the parameters by -lr g_s, which changes the
probe objective P (the mean loss on a trusted clean set) by about -lr <g_s, g_P>. The step is harmful (P rises)
exactly when <g_s, g_P> < 0, so the harmfulness score is  score_s = -<g_s, g_P>  and high scores are removed.
The safety proxy for causal LMs (P = logit of a compliance token minus a refusal token on probe prompts, higher
meaning less safe) gets the same formula: a harmful step raises P, i.e. <g_s, g_P> < 0.

Threshold: a single Gaussian and a 2-component Gaussian mixture are fitted to the scores; when the mixture's
log-likelihood beats the Gaussian's by more than `alpha`, the threshold is where the two weighted components
cross between their means, otherwise mean + 2 std (thresholds.gmm_threshold).

Without trusted data the probe is a seeded random `probe_fraction` of the untrusted data itself (each probe
sample is scored against the probe without its own gradient). Its weakness: the probe holds poison at the same
rate as the data, and its mean gradient partly points along the backdoor, so poisoned samples look less
harmful; the more poison and the better the model already fits it, the less this works. Pass trusted data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..architecture import architecture_family
from ..checkpoint import LoadedModel
from ..data import TaskData
from ..device import model_device
from ..errors import ConfigError
from ..inference import encode
from ..pruning import subsample
from ..registry import option
from .base import DataFilter, FilterConfig, register_filter
from .per_sample import (
    CountSketch,
    PerSampleGradients,
    flatten,
    iter_gradients,
    last_token_logit_margin,
    resolve_parameters,
    sample_objective,
)
from .thresholds import ThresholdDecision, gmm_threshold, kde_valley_threshold, mean_std_threshold

OBJECTIVES = ("trusted_loss", "safety")

#: default parameter subsets per architecture family (a design choice, not yet compared by measurement: see
#: benchmarks/filters.md); "L-1" is the whole last layer
DEFAULT_PARAMETERS: dict[str, list[str]] = {
    "bert": ["L-1"],
    "distilbert": ["L-1"],
    "llama": ["L-1"],
    "gpt2": ["L-1"],
    "opt": ["L-1"],
}


def default_parameters(model: torch.nn.Module) -> list[str]:
    """The measured default parameter subset for this model, as full parameter names."""
    return resolve_parameters(model, DEFAULT_PARAMETERS[architecture_family(model)])


@dataclass
class GradShieldConfig(FilterConfig):
    """GradShield options (plus FilterConfig's): the compared parameters, the probe objective and the GMM rule.

    objective "safety" is for causal LMs only: the logit of `compliance_text`'s first token minus `refusal_text`'s
    at the end of each probe prompt; the probe prompts are the trusted texts, which are then required.
    """

    parameters: list[str] | None = option(None, "parameters whose gradients are compared: parameter or module names "
                                          "(a module means all its parameters), L<i> for layer i of the layer "
                                          "stack; none: the measured default (DEFAULT_PARAMETERS)")
    objective: str = option("trusted_loss", "trusted_loss (mean loss on the probe set) or safety (causal LMs only)",
                            choices=OBJECTIVES)
    probe_fraction: float = option(0.1, "share of the untrusted data held out as the probe when no trusted data is "
                                   "given", low=0, low_open=True, high=1, high_open=True)
    probe_samples: int | None = option(256, "at most this many probe samples (seeded subset; none: all)", low=1)
    projection_dim: int | None = option(None, "count-sketch gradients to this many coordinates first (none: exact "
                                        "dot products; memory is bounded by batch_size x parameters either way)",
                                        low=1)
    normalize: bool = option(False, "cosine instead of the raw dot product")
    alpha: float = option(10.0, "log-likelihood margin the GMM needs over one Gaussian", low=0)
    n_std: float = option(2.0, "standard deviations above the mean otherwise", low=0)
    compliance_text: str = option("Sure", "the compliance answer of the safety objective")
    refusal_text: str = option("Sorry", "the refusal answer of the safety objective")

    def validate(self) -> None:
        super().validate()
        if self.parameters is not None and (not isinstance(self.parameters, list) or not self.parameters):
            raise ConfigError("GradShieldConfig: parameters must be a non-empty list of names or none")


def _first_token(tokenizer, text: str) -> int:
    """Id of the first non-special token of `text`, tokenized the one purify way."""
    ids = encode(tokenizer, [text])["input_ids"][0].tolist()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i in ids:
        if i not in special:
            return int(i)
    raise ConfigError(f"{text!r} tokenizes to special tokens only")


class GradShield(DataFilter):
    """Remove samples whose gradient opposes a trusted probe's gradient (harmfulness score, adaptive GMM threshold)."""

    config: GradShieldConfig
    default_threshold_method = "gmm"
    fast_options = {"batch_size": 32, "probe_samples": 64}

    def _probe(self, data: TaskData, trusted: TaskData | None) -> tuple[TaskData, np.ndarray | None, str]:
        """The probe set, the positions in `data` it was taken from (None for trusted data), and its source."""
        cfg = self.config
        if trusted is not None and len(trusted) > 0:
            return subsample(trusted, cfg.probe_samples, cfg.seed), None, "trusted"
        if cfg.objective == "safety":
            raise ConfigError("GradShield's safety objective needs probe prompts: pass trusted data (its texts)")
        if len(data) < 10:
            raise ConfigError("GradShield without trusted data needs at least 10 samples to hold out a probe")
        n = max(2, round(cfg.probe_fraction * len(data)))
        if cfg.probe_samples is not None:
            n = min(n, cfg.probe_samples)
        positions = np.sort(np.random.default_rng(cfg.seed).choice(len(data), size=n, replace=False))
        return data.subset(positions.tolist()), positions, "held_out_untrusted"

    def score_with_details(self, loaded: LoadedModel, data: TaskData, trusted: TaskData | None = None, *,
                           reference: LoadedModel | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """-<g_sample, g_probe> for every sample (cosine when `normalize`), leave-one-out for held-out probe samples."""
        cfg = self.config
        grad_model, kind = self.gradient_model(loaded, reference)
        model = grad_model.model
        if cfg.objective == "safety" and grad_model.task != "causal_lm":
            raise ConfigError("GradShield's safety objective needs a causal LM; use objective='trusted_loss'")
        names = resolve_parameters(model, cfg.parameters) if cfg.parameters else default_parameters(model)
        n_params = sum(dict(model.named_parameters())[n].numel() for n in names)
        sketch = (CountSketch(n_params, cfg.projection_dim, seed=cfg.seed, device=model_device(model))
                  if cfg.projection_dim is not None else None)

        def rows(grads: dict[str, torch.Tensor]) -> torch.Tensor:
            flat = flatten(grads, names)
            return sketch(flat) if sketch is not None else flat

        probe, probe_positions, probe_source = self._probe(data, trusted)
        if cfg.objective == "safety":
            tok = grad_model.tokenizer
            objective = last_token_logit_margin(_first_token(tok, cfg.compliance_text),
                                                _first_token(tok, cfg.refusal_text))
        else:
            objective = sample_objective(grad_model)
        probe_computer = PerSampleGradients(model, names, objective, chunk_size=cfg.chunk_size)
        probe_sum: torch.Tensor | None = None
        for _, grads, _ in iter_gradients(grad_model, probe, probe_computer, batch_size=cfg.batch_size,
                                          max_length=cfg.max_length, description="GradShield: probe gradient",
                                          verify=cfg.verify, answers=cfg.objective != "safety"):
            r = rows(grads).double()
            probe_sum = r.sum(0) if probe_sum is None else probe_sum + r.sum(0)
        assert probe_sum is not None
        n_probe = len(probe)
        g_probe = probe_sum / n_probe
        in_probe = np.zeros(len(data), dtype=bool)
        if probe_positions is not None:
            in_probe[probe_positions] = True

        computer = PerSampleGradients(model, names, sample_objective(grad_model), chunk_size=cfg.chunk_size)
        scores = np.zeros(len(data), dtype=np.float64)
        losses = np.zeros(len(data), dtype=np.float64)
        for positions, grads, values in iter_gradients(grad_model, data, computer, batch_size=cfg.batch_size,
                                                       max_length=cfg.max_length,
                                                       description="GradShield: harmfulness scores", verify=cfg.verify):
            r = rows(grads).double()
            dots = r @ g_probe
            probe_norm2 = torch.full_like(dots, float(g_probe @ g_probe))
            own = torch.as_tensor(in_probe[positions], device=dots.device)
            if own.any():
                # a held-out probe sample is scored against the probe without its own gradient:
                # g' = (n g - g_i) / (n - 1), so <g_i, g'> and |g'|^2 follow from <g_i, g>, |g_i|^2 and |g|^2
                self_norm2 = (r * r).sum(1)
                loo_dots = (n_probe * dots - self_norm2) / (n_probe - 1)
                loo_norm2 = (n_probe ** 2 * probe_norm2 - 2 * n_probe * dots + self_norm2) / (n_probe - 1) ** 2
                dots = torch.where(own, loo_dots, dots)
                probe_norm2 = torch.where(own, loo_norm2, probe_norm2)
            if cfg.normalize:
                dots = dots / (r.norm(dim=1) * probe_norm2.clamp_min(0).sqrt()).clamp_min(1e-30)
            scores[positions] = (-dots).cpu().numpy()
            losses[positions] = values.float().cpu().numpy()
        details = {"parameters": names if len(names) <= 32 else names[:32] + ["..."], "num_parameters": int(n_params),
                   "gradient_model": kind, "objective": cfg.objective, "probe_source": probe_source,
                   "probe_size": n_probe, "probe_gradient_norm": float(g_probe.norm()),
                   "probe_indices": ([int(data.samples[i].index) for i in probe_positions]
                                     if probe_positions is not None else None),
                   "projected_to": cfg.projection_dim, "mean_loss": float(losses.mean())}
        return scores, details

    def adaptive_threshold(self, scores: np.ndarray) -> ThresholdDecision:
        """The GMM-versus-Gaussian rule by default; mean + n_std std or the KDE valley when configured."""
        cfg = self.config
        method = cfg.threshold_method or self.default_threshold_method
        if method == "mean_std":
            return mean_std_threshold(scores, n_std=cfg.n_std)
        if method == "kde_valley":
            fallback = float(np.mean(scores) + cfg.n_std * np.std(scores))
            return kde_valley_threshold(scores, fallback=fallback)
        return gmm_threshold(scores, alpha=cfg.alpha, n_std=cfg.n_std, seed=cfg.seed)


register_filter("gradshield", GradShieldConfig, GradShield)
