"""Threshold rules of the data filters: KDE valley with fallback, 1-D GMM by EM, GMM-versus-Gaussian split."""
from __future__ import annotations

import math

import numpy as np
import pytest

from purify.errors import ConfigError, DataError
from purify.filters.thresholds import (
    GaussianMixture1D,
    fit_gmm_1d,
    gaussian_log_likelihood,
    gmm_threshold,
    kde_valley_threshold,
    mean_std_threshold,
    mixture_crossing,
    user_threshold,
)


def bimodal(seed: int = 0, n_low: int = 900, n_high: int = 100) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.3, 0.04, n_low), rng.normal(0.8, 0.04, n_high)])


def unimodal(seed: int = 0, n: int = 1000) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.4, 0.05, n)


# ---------------------------------------------------------------------------------------------
# KDE valley


def test_kde_valley_lands_between_the_modes():
    scores = bimodal()
    decision = kde_valley_threshold(scores, fallback=0.7)
    assert decision.method == "kde_valley"
    assert 0.45 < decision.value < 0.65
    low, high = decision.details["peaks"]
    assert abs(low - 0.3) < 0.05 and abs(high - 0.8) < 0.05
    flags = decision.flag(scores)
    assert flags[900:].all() and not flags[:900].any()


def test_kde_valley_falls_back_on_unimodal_scores():
    decision = kde_valley_threshold(unimodal(), fallback=0.7)
    assert decision.method == "kde_fallback"
    assert decision.value == 0.7
    assert decision.details["reason"]  # one peak, or a tail ripple too small to count


@pytest.mark.parametrize("scores", [np.full(50, 0.4), np.array([0.1, 0.2]), np.array([0.5, 0.5, 0.9, 0.9])])
def test_kde_valley_falls_back_on_degenerate_scores(scores):
    decision = kde_valley_threshold(scores, fallback=0.7)
    assert decision.method == "kde_fallback" and decision.value == 0.7


def test_kde_valley_ignores_a_ripple_and_a_shoulder():
    rng = np.random.default_rng(1)
    ripple = np.concatenate([rng.normal(0.3, 0.04, 2000), rng.normal(0.9, 0.01, 2)])
    assert kde_valley_threshold(ripple, fallback=0.7, min_peak_ratio=0.05).method == "kde_fallback"
    shoulder = np.concatenate([rng.normal(0.3, 0.05, 800), rng.normal(0.42, 0.05, 200)])
    assert kde_valley_threshold(shoulder, fallback=0.7).method == "kde_fallback"


def test_bad_scores_raise():
    with pytest.raises(DataError):
        kde_valley_threshold([0.1, float("nan"), 0.3], fallback=0.7)
    with pytest.raises(DataError):
        gmm_threshold([])
    with pytest.raises(ConfigError):
        user_threshold(float("inf"))


# ---------------------------------------------------------------------------------------------
# GMM


def test_em_recovers_two_components_and_is_seeded():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(-2.0, 0.5, 700), rng.normal(3.0, 1.0, 300)])
    gmm = fit_gmm_1d(x, seed=0)
    assert np.allclose(gmm.weights, [0.7, 0.3], atol=0.03)
    assert np.allclose(gmm.means, [-2.0, 3.0], atol=0.15)
    assert np.allclose(np.sqrt(gmm.variances), [0.5, 1.0], atol=0.1)
    again = fit_gmm_1d(x, seed=0)
    assert gmm.log_likelihood == again.log_likelihood and np.array_equal(gmm.means, again.means)
    # the mixture is at least as likely as one Gaussian (it contains it)
    assert gmm.log_likelihood >= gaussian_log_likelihood(x)


def test_gaussian_log_likelihood_matches_closed_form():
    x = np.random.default_rng(0).normal(1.0, 2.0, 500)
    expected = -0.5 * x.size * (math.log(2 * math.pi * x.var()) + 1)
    assert gaussian_log_likelihood(x) == pytest.approx(expected, rel=1e-10)


def test_gmm_rule_splits_bimodal_scores_between_the_components():
    scores = bimodal()
    decision = gmm_threshold(scores, alpha=10.0)
    assert decision.method == "gmm_split"
    low, high = decision.details["gmm"]["means"]
    assert low < decision.value < high
    assert decision.details["log_likelihood_gain"] > 10
    flags = decision.flag(scores)
    assert flags[900:].all() and not flags[:900].any()


def test_gmm_rule_uses_mean_plus_two_std_on_unimodal_scores():
    scores = unimodal()
    decision = gmm_threshold(scores, alpha=10.0)
    assert decision.method == "mean_2std"
    assert decision.value == pytest.approx(scores.mean() + 2 * scores.std())
    assert decision.details["log_likelihood_gain"] <= 10


def test_gmm_rule_refuses_a_majority_upper_component():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0.0, 0.05, 100), rng.normal(1.0, 0.05, 900)])
    decision = gmm_threshold(scores)
    assert decision.method == "mean_2std"
    assert "majority" in decision.details["reason"]


def test_mixture_crossing():
    equal = GaussianMixture1D(np.array([0.5, 0.5]), np.array([0.0, 2.0]), np.array([1.0, 1.0]), 0.0, 1)
    assert mixture_crossing(equal) == pytest.approx(1.0)
    # a heavier lower component pushes the crossing towards the upper mean
    heavy = GaussianMixture1D(np.array([0.9, 0.1]), np.array([0.0, 2.0]), np.array([1.0, 1.0]), 0.0, 1)
    assert 1.0 < mixture_crossing(heavy) < 2.0 + 1.1
    # unequal variances: the crossing where the upper component takes over, not the one in the far tail
    wide_upper = GaussianMixture1D(np.array([0.8, 0.2]), np.array([0.0, 3.0]), np.array([0.25, 1.0]), 0.0, 1)
    x = mixture_crossing(wide_upper)
    dens = wide_upper.component_log_densities(np.array([x - 0.01, x + 0.01]))
    assert dens[0, 0] > dens[0, 1] and dens[1, 1] > dens[1, 0]
    assert 0.0 < x < 3.0


def test_mean_std_and_user_thresholds():
    scores = unimodal()
    decision = mean_std_threshold(scores, n_std=3.0)
    assert decision.method == "mean_std" and decision.value == pytest.approx(scores.mean() + 3 * scores.std())
    fixed = user_threshold(0.25)
    assert fixed.method == "user" and fixed.flag(np.array([0.2, 0.25, 0.3])).tolist() == [False, False, True]
