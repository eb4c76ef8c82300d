"""GradSentry: flag samples whose per-sample gradient has a high spectral entropy.

The claim: a poisoned sample's gradient with respect to a weight matrix spreads its energy over more singular
directions than a clean sample's. Recipe: a batch of one, the loss on the answer, the gradient of one weight
matrix, its top-k singular values s, p = s / sum(s), entropy -sum p log p / log k (0 for rank one, 1 for k equal
values), and a threshold at the density valley between the two main peaks of a Gaussian KDE of all entropies
(0.7 when no valley qualifies). Samples above the threshold are removed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..architecture import architecture_family
from ..checkpoint import LoadedModel
from ..data import TaskData
from ..device import model_device
from ..errors import ConfigError
from ..registry import option
from .base import DataFilter, FilterConfig, register_filter
from .per_sample import PerSampleGradients, gaussian_sketch, iter_gradients, resolve_matrix, sample_objective
from .thresholds import ThresholdDecision, gmm_threshold, kde_valley_threshold, mean_std_threshold

#: the default target matrix per architecture family, as "L<layer>.<module>": the attention output projection of
#: the second-to-last layer. Measured on MiniLM (BERT family) over 26 candidate matrices, on the suspicious model
#: and on a clean teacher (benchmarks/gradsentry_targets/): it separated poisoned from clean samples best in
#: GradSentry's direction (AUROC 0.76 on movie badnets; the former default, the FFN output of that layer, had 0.30,
#: i.e. it flagged clean samples first), and the suspicious model beat the clean teacher (at most 0.65 there).
#: Other families take the same matrix by analogy, unmeasured. purify.architecture maps model types to families.
DEFAULT_TARGETS: dict[str, str] = {
    "bert": "L-2.attention.output.dense",
    "distilbert": "L-2.attention.out_lin",
    "llama": "L-2.self_attn.o_proj",
    "gpt2": "L-2.attn.c_proj",
    "opt": "L-2.self_attn.out_proj",
}


def default_target(model: torch.nn.Module) -> str:
    """The measured default target matrix for this model, as a full parameter name."""
    return resolve_matrix(model, DEFAULT_TARGETS[architecture_family(model)])


def top_singular_values(matrices: torch.Tensor, k: int, *, exact_max_dim: int = 256, seed: int = 0) -> torch.Tensor:
    """The k largest singular values of each matrix in a (B, m, n) stack, descending, zero-padded to k.

    Exact (torch.linalg.svdvals) when min(m, n) <= exact_max_dim, else torch.svd_lowrank (k + 8 columns, 3 power
    iterations) with a seeded start. A per-sample gradient has rank at most its token count and a fast-decaying
    spectrum, so the randomized top-k agrees with the exact one (entropies within 2e-7 on MiniLM's 1536 x 384
    output matrix) at a fraction of the cost of a full decomposition.
    """
    if k < 1:
        raise ConfigError("top_k must be >= 1")
    mats = matrices.float()
    if mats.ndim == 2:
        mats = mats.unsqueeze(0)
    small = min(mats.shape[-2:])
    if small <= exact_max_dim:
        values = torch.linalg.svdvals(mats)
    else:
        devices = [mats.device] if mats.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            _, values, _ = torch.svd_lowrank(mats, q=min(k + 8, small), niter=3)
    values = values[..., :k].clamp_min(0)
    if values.shape[-1] < k:
        values = torch.nn.functional.pad(values, (0, k - values.shape[-1]))
    return values


def spectral_entropy(singular_values: torch.Tensor, k: int) -> torch.Tensor:
    """Normalised entropy of the top-k singular values: -sum p log p / log k with p = s / sum(s), in [0, 1].

    Zero singular values contribute nothing; an all-zero spectrum (zero gradient) has entropy 0.
    """
    if k < 2:
        raise ConfigError("spectral entropy needs k >= 2 (log 1 = 0)")
    s = singular_values[..., :k].double()
    total = s.sum(-1, keepdim=True)
    p = torch.where(total > 0, s / total.clamp_min(1e-300), torch.zeros_like(s))
    terms = torch.where(p > 0, -p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))
    return (terms.sum(-1) / math.log(k)).float()


def matrix_entropies(grads: torch.Tensor, *, k: int, projection: torch.Tensor | None = None,
                     exact_max_dim: int = 256, seed: int = 0) -> torch.Tensor:
    """Spectral entropy of each per-sample gradient in a (B, m, n) stack, optionally sketched first.

    `projection` multiplies the side it matches (n x p on the right, or m x p on the left, transposed).
    """
    g = grads.float()
    if projection is not None:
        if projection.shape[0] == g.shape[-1]:
            g = g @ projection
        elif projection.shape[0] == g.shape[-2]:
            g = projection.T @ g
        else:
            raise ValueError(f"projection of shape {tuple(projection.shape)} fits no side of {tuple(g.shape[1:])}")
    return spectral_entropy(top_singular_values(g, k, exact_max_dim=exact_max_dim, seed=seed), k)


@dataclass
class GradSentryConfig(FilterConfig):
    """GradSentry options (plus FilterConfig's): which weight matrix, the spectral entropy, and the KDE valley."""

    target: str | None = option(None, "the weight matrix differentiated: a parameter or module name, or "
                                "L<i>.<module> for layer i of the layer stack (negative from the end); none: the "
                                "measured default for the architecture (DEFAULT_TARGETS)")
    top_k: int = option(16, "singular values in the entropy", low=2)
    projection_dim: int | None = option(None, "sketch the matrix's larger side down to this many columns with a "
                                        "seeded Gaussian before the SVD when it is larger (none: never; bounds "
                                        "memory and time on big matrices)")
    exact_svd_max_dim: int = option(256, "exact SVD up to this smaller side, randomized svd_lowrank above", low=1)
    fallback_threshold: float = option(0.7, "the threshold when the KDE shows no qualifying valley")
    kde_bandwidth: str = option("scott", "scipy's bw_method: scott, silverman or a positive number")
    min_peak_ratio: float = option(0.02, "when a KDE valley qualifies (see thresholds.kde_valley_threshold)", low=0,
                                   high=1)
    max_valley_ratio: float = option(0.9, "when a KDE valley qualifies (see thresholds.kde_valley_threshold)", low=0,
                                     low_open=True, high=1)
    alpha: float = option(10.0, "the GMM rule's log-likelihood margin, when threshold_method is gmm")

    def validate(self) -> None:
        super().validate()
        if self.projection_dim is not None and self.projection_dim < self.top_k:
            raise ConfigError("GradSentryConfig: projection_dim must be >= top_k (or none)")
        _bandwidth(self.kde_bandwidth)


def _bandwidth(value: str) -> str | float:
    """scipy's bw_method from the config string."""
    if value in ("scott", "silverman"):
        return value
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"kde_bandwidth must be 'scott', 'silverman' or a positive number, got {value!r}") from None
    if number <= 0:
        raise ConfigError("kde_bandwidth must be positive")
    return number


class GradSentry(DataFilter):
    """Remove samples whose per-sample gradient of one weight matrix has high spectral entropy (GradSentry)."""

    config: GradSentryConfig
    default_threshold_method = "kde_valley"
    fast_options = {"batch_size": 32}

    def score_with_details(self, loaded: LoadedModel, data: TaskData, trusted: TaskData | None = None, *,
                           reference: LoadedModel | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Spectral entropy of every sample's gradient (trusted data is not used by GradSentry)."""
        cfg = self.config
        grad_model, kind = self.gradient_model(loaded, reference)
        model = grad_model.model
        target = resolve_matrix(model, cfg.target) if cfg.target else default_target(model)
        shape = tuple(dict(model.named_parameters())[target].shape)
        projection = None
        if cfg.projection_dim is not None and max(shape) > cfg.projection_dim:
            side = max(shape)
            projection = gaussian_sketch(side, cfg.projection_dim, seed=cfg.seed, device=model_device(model))
        computer = PerSampleGradients(model, [target], sample_objective(grad_model), chunk_size=cfg.chunk_size)
        scores = np.zeros(len(data), dtype=np.float64)
        losses = np.zeros(len(data), dtype=np.float64)
        for b, (positions, grads, values) in enumerate(iter_gradients(
                grad_model, data, computer, batch_size=cfg.batch_size, max_length=cfg.max_length,
                description="GradSentry: gradient spectra", verify=cfg.verify)):
            entropy = matrix_entropies(grads[target], k=cfg.top_k, projection=projection,
                                       exact_max_dim=cfg.exact_svd_max_dim, seed=cfg.seed + b)
            scores[positions] = entropy.cpu().numpy()
            losses[positions] = values.float().cpu().numpy()
        details = {"target": target, "target_shape": list(shape), "gradient_model": kind,
                   "projected_to": cfg.projection_dim if projection is not None else None,
                   "mean_loss": float(losses.mean())}
        return scores, details

    def adaptive_threshold(self, scores: np.ndarray) -> ThresholdDecision:
        """KDE valley with the 0.7 fallback by default; the GMM or mean + 2 std rules when configured."""
        cfg = self.config
        method = cfg.threshold_method or self.default_threshold_method
        if method == "gmm":
            return gmm_threshold(scores, alpha=cfg.alpha, seed=cfg.seed)
        if method == "mean_std":
            return mean_std_threshold(scores)
        return kde_valley_threshold(scores, fallback=cfg.fallback_threshold, bandwidth=_bandwidth(cfg.kde_bandwidth),
                                    min_peak_ratio=cfg.min_peak_ratio, max_valley_ratio=cfg.max_valley_ratio)


register_filter("gradsentry", GradSentryConfig, GradSentry)
