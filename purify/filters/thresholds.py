"""Where a filter draws the line between kept and removed samples: KDE valley, Gaussian-vs-GMM split, or the user's.

Every rule flags the samples whose score is strictly above the threshold it returns (higher score = more
suspicious), and reports how it decided (`method`) plus the numbers behind the decision (`details`) for the report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError

#: methods a filter config may name in its `threshold_method` field
THRESHOLD_METHODS = ("kde_valley", "gmm", "mean_std")


@dataclass
class ThresholdDecision:
    """The threshold, the rule that produced it (e.g. "kde_valley", "kde_fallback", "gmm_split", "mean_2std",
    "user") and JSON-able details of how it was reached."""

    value: float
    method: str
    details: dict[str, Any] = field(default_factory=dict)

    def flag(self, scores: np.ndarray) -> np.ndarray:
        """Boolean mask of the scores strictly above the threshold."""
        return np.asarray(scores, dtype=np.float64) > self.value


def _finite_1d(scores: Any) -> np.ndarray:
    """Scores as a 1-D float64 array; NaN or infinite scores are a bug upstream, so they raise."""
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise DataError("cannot choose a threshold for zero scores")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{int(np.sum(~np.isfinite(arr)))} scores are NaN or infinite; cannot choose a threshold")
    return arr


def user_threshold(value: float) -> ThresholdDecision:
    """The user's fixed threshold, recorded as such."""
    if not math.isfinite(value):
        raise ConfigError(f"threshold must be a finite number, got {value!r}")
    return ThresholdDecision(float(value), "user", {})


# ---------------------------------------------------------------------------------------------
# KDE valley (GradSentry)


def kde_valley_threshold(scores: Any, *, fallback: float, grid_size: int = 512, bandwidth: str | float = "scott",
                         min_peak_ratio: float = 0.02, max_valley_ratio: float = 0.9) -> ThresholdDecision:
    """The density minimum between the two highest peaks of a Gaussian KDE of the scores, else `fallback`.

    The KDE (scipy.stats.gaussian_kde, `bandwidth` as its bw_method) is evaluated on `grid_size` points spanning
    the scores. Peaks are the grid's local maxima; the two highest are the main peaks. The valley qualifies when
    the lower main peak is at least `min_peak_ratio` of the higher one (not a ripple in a tail) and the density at
    the valley is at most `max_valley_ratio` of the lower peak (a real dip, not a shoulder). Fewer than three
    distinct scores, a singular KDE, fewer than two peaks or an unqualified valley all give `fallback`, with
    the reason in `details["reason"]`.
    """
    from scipy.stats import gaussian_kde

    x = _finite_1d(scores)
    if grid_size < 16:
        raise ConfigError("grid_size must be >= 16")

    def fell_back(reason: str, **extra: Any) -> ThresholdDecision:
        return ThresholdDecision(float(fallback), "kde_fallback", {"reason": reason, **extra})

    if np.unique(x).size < 3:
        return fell_back("fewer than three distinct scores")
    try:
        kde = gaussian_kde(x, bw_method=bandwidth)
    except (np.linalg.LinAlgError, ValueError) as exc:
        return fell_back(f"KDE could not be fitted ({type(exc).__name__})")
    grid = np.linspace(x.min(), x.max(), grid_size)
    density = kde(grid)
    inner = np.arange(1, grid_size - 1)
    is_peak = (density[inner] > density[inner - 1]) & (density[inner] >= density[inner + 1])
    peaks = list(inner[is_peak])
    # an end of the range is a peak when the density falls away from it
    if density[0] > density[1]:
        peaks.insert(0, 0)
    if density[-1] > density[-2]:
        peaks.append(grid_size - 1)
    if len(peaks) < 2:
        return fell_back("the score density has one peak", peaks=[float(grid[p]) for p in peaks])
    top = sorted(sorted(peaks, key=lambda p: -density[p])[:2])
    left, right = top
    valley = left + int(np.argmin(density[left:right + 1]))
    low_peak = min(density[left], density[right])
    details = {
        "peaks": [float(grid[left]), float(grid[right])],
        "peak_densities": [float(density[left]), float(density[right])],
        "valley": float(grid[valley]),
        "valley_density": float(density[valley]),
        "bandwidth": float(kde.factor * np.std(x, ddof=1)),
    }
    if low_peak < min_peak_ratio * max(density[left], density[right]):
        return fell_back("the second peak is a ripple (below min_peak_ratio of the first)", **details)
    if density[valley] > max_valley_ratio * low_peak:
        return fell_back("no dip between the peaks (valley above max_valley_ratio of the lower peak)", **details)
    return ThresholdDecision(float(grid[valley]), "kde_valley", details)


# ---------------------------------------------------------------------------------------------
# One Gaussian versus a two-component mixture (GradShield)


@dataclass
class GaussianMixture1D:
    """A fitted 1-D Gaussian mixture: weights, means, variances (components sorted by mean) and total log-likelihood."""

    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    log_likelihood: float
    iterations: int

    def component_log_densities(self, x: np.ndarray) -> np.ndarray:
        """log(weight_k * N(x | mean_k, var_k)) for every point and component, shape (n, K)."""
        x = np.asarray(x, dtype=np.float64)[:, None]
        return (np.log(self.weights)[None, :] - 0.5 * np.log(2 * np.pi * self.variances)[None, :]
                - 0.5 * (x - self.means[None, :]) ** 2 / self.variances[None, :])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters for the report."""
        return {"weights": self.weights.tolist(), "means": self.means.tolist(), "variances": self.variances.tolist(),
                "log_likelihood": float(self.log_likelihood), "iterations": int(self.iterations)}


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(top, axis=axis) + np.log(np.sum(np.exp(a - top), axis=axis))


def gaussian_log_likelihood(x: Any) -> float:
    """Log-likelihood of the scores under their maximum-likelihood single Gaussian."""
    x = _finite_1d(x)
    var = max(float(np.var(x)), _variance_floor(x))  # the same floor the mixture's components get
    return float(np.sum(-0.5 * math.log(2 * math.pi * var) - 0.5 * (x - x.mean()) ** 2 / var))


def _variance_floor(x: np.ndarray) -> float:
    """Smallest variance a component may take, so a component cannot collapse onto one repeated score."""
    spread = float(np.var(x))
    return max(spread * 1e-6, 1e-12)


def fit_gmm_1d(x: Any, n_components: int = 2, *, seed: int = 0, n_init: int = 4, max_iter: int = 300,
               tol: float = 1e-9) -> GaussianMixture1D:
    """Fit a 1-D Gaussian mixture by EM: one start at evenly spaced quantiles plus `n_init - 1` seeded random starts.

    The fit with the highest log-likelihood wins. Variances are floored (see `_variance_floor`) so a component
    cannot shrink onto duplicated scores and make the likelihood unbounded.
    """
    x = _finite_1d(x)
    if n_components < 1:
        raise ConfigError("n_components must be >= 1")
    if n_init < 1:
        raise ConfigError("n_init must be >= 1")
    floor = _variance_floor(x)
    rng = np.random.default_rng(seed)
    starts = [np.quantile(x, (np.arange(n_components) + 0.5) / n_components)]
    starts += [np.sort(rng.choice(x, size=n_components, replace=x.size < n_components)) for _ in range(n_init - 1)]
    best: GaussianMixture1D | None = None
    for means in starts:
        fit = _em(x, np.asarray(means, dtype=np.float64), floor, max_iter, tol)
        if best is None or fit.log_likelihood > best.log_likelihood + 1e-12:
            best = fit
    assert best is not None
    order = np.argsort(best.means, kind="stable")
    return GaussianMixture1D(best.weights[order], best.means[order], best.variances[order], best.log_likelihood,
                             best.iterations)


def _em(x: np.ndarray, means: np.ndarray, floor: float, max_iter: int, tol: float) -> GaussianMixture1D:
    """EM iterations from the given initial means (equal weights, the overall variance)."""
    k = means.size
    weights = np.full(k, 1.0 / k)
    variances = np.full(k, max(float(np.var(x)), floor))
    previous = -np.inf
    it = 0
    ll = -np.inf
    for it in range(1, max_iter + 1):
        model = GaussianMixture1D(weights, means, variances, 0.0, it)
        log_dens = model.component_log_densities(x)
        log_norm = _logsumexp(log_dens, axis=1)
        ll = float(np.sum(log_norm))
        resp = np.exp(log_dens - log_norm[:, None])
        nk = resp.sum(axis=0) + 1e-12
        weights = nk / x.size
        means = (resp * x[:, None]).sum(axis=0) / nk
        variances = np.maximum((resp * (x[:, None] - means[None, :]) ** 2).sum(axis=0) / nk, floor)
        if ll - previous < tol * max(1.0, abs(ll)):
            break
        previous = ll
    final = GaussianMixture1D(weights, means, variances, 0.0, it)
    ll = float(np.sum(_logsumexp(final.component_log_densities(x), axis=1)))
    return GaussianMixture1D(weights, means, variances, ll, it)


def mixture_crossing(gmm: GaussianMixture1D) -> float:
    """Where the upper component takes over: the score at which, moving right, the higher-mean component's
    weighted density overtakes the lower one's (the midpoint of the means when it never does).

    With unequal variances the weighted densities cross twice; only one crossing hands over from the lower
    to the upper component (the other is in a tail where the wider component wins again). For well-separated
    components it lies between the means.
    """
    (w1, w2), (m1, m2), (v1, v2) = gmm.weights, gmm.means, gmm.variances
    # d(x) = log w2 N(x|m2,v2) - log w1 N(x|m1,v1) = a x^2 + b x + c; the hand-over is a root with d'(x) > 0
    a = 0.5 / v1 - 0.5 / v2
    b = m2 / v2 - m1 / v1
    c = (0.5 * m1 ** 2 / v1 - 0.5 * m2 ** 2 / v2 + math.log(w2) - math.log(w1)
         - 0.5 * math.log(v2) + 0.5 * math.log(v1))
    if abs(a) <= 1e-12 * max(abs(b), 1e-300):
        roots = [-c / b] if b != 0 else []
    else:
        disc = b * b - 4 * a * c
        roots = [] if disc < 0 else [(-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)]
    rising = [r for r in roots if 2 * a * r + b > 0]
    if rising:
        return float(min(rising, key=lambda r: abs(r - 0.5 * (m1 + m2))))
    return float(0.5 * (m1 + m2))


def gmm_threshold(scores: Any, *, alpha: float = 10.0, n_std: float = 2.0, seed: int = 0, n_init: int = 4,
                  max_upper_weight: float = 0.5) -> ThresholdDecision:
    """Adaptive threshold: split two mixture components when they explain the scores clearly better than one Gaussian.

    A 2-component GMM (`fit_gmm_1d`) and a single Gaussian are fitted by maximum likelihood. When the GMM's
    log-likelihood exceeds the Gaussian's by more than `alpha`, the scores are taken to be two populations and
    the threshold is where the upper component's weighted density overtakes the lower one's (`mixture_crossing`,
    between the means for separated components; "gmm_split");
    otherwise it is mean + `n_std` standard deviations ("mean_2std" for the default n_std = 2). The split is
    also refused (same fallback) when the upper component holds more than `max_upper_weight` of the samples:
    then the mixture has found a low outlier group or a narrow-versus-wide shape, not a suspicious minority,
    and cutting at its crossing would remove most of the data.
    """
    x = _finite_1d(scores)
    if alpha < 0:
        raise ConfigError("alpha must be >= 0")
    if not 0 < max_upper_weight <= 1:
        raise ConfigError("max_upper_weight must be in (0, 1]")
    mean, std = float(x.mean()), float(x.std())
    fallback_method = "mean_2std" if n_std == 2.0 else "mean_std"
    if np.unique(x).size < 4:
        return ThresholdDecision(mean + n_std * std, fallback_method, {"reason": "fewer than four distinct scores"})
    ll_gauss = gaussian_log_likelihood(x)
    gmm = fit_gmm_1d(x, 2, seed=seed, n_init=n_init)
    gain = gmm.log_likelihood - ll_gauss
    details = {"gaussian_log_likelihood": ll_gauss, "gmm": gmm.to_dict(), "log_likelihood_gain": float(gain),
               "alpha": float(alpha), "mean": mean, "std": std}
    if gain <= alpha:
        details["reason"] = "the mixture does not beat one Gaussian by alpha"
    elif gmm.weights[1] > max_upper_weight:
        details["reason"] = "the upper mixture component is the majority"
    else:
        return ThresholdDecision(mixture_crossing(gmm), "gmm_split", details)
    return ThresholdDecision(mean + n_std * std, fallback_method, details)


def mean_std_threshold(scores: Any, *, n_std: float = 2.0) -> ThresholdDecision:
    """mean + n_std standard deviations of the scores."""
    x = _finite_1d(scores)
    mean, std = float(x.mean()), float(x.std())
    return ThresholdDecision(mean + n_std * std, "mean_2std" if n_std == 2.0 else "mean_std",
                             {"mean": mean, "std": std, "n_std": float(n_std)})
