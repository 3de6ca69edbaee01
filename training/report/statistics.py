"""Intervals for the honest-uncertainty note: what the size of the test set allows us to conclude."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata

BOOTSTRAP_SEED = 0
Z_95 = float(norm.ppf(0.975))


def hanley_mcneil_interval(auc: float, positives: int, negatives: int) -> tuple[float, float]:
    """Approximate 95% interval of ROC-AUC from its value and the class counts (Hanley & McNeil, 1982)."""
    q1 = auc / (2 - auc)
    q2 = 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / (
        positives * negatives
    )
    half = Z_95 * math.sqrt(max(variance, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


def rank_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic (ties count half), fast enough to bootstrap."""
    positives = int(y.sum())
    negatives = y.size - positives
    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def bootstrap_auc_interval(y: np.ndarray, p: np.ndarray, *, seed: int = BOOTSTRAP_SEED) -> tuple[float, float, int]:
    """Percentile 95% interval of test ROC-AUC over resamples of the test customers, and the resample count."""
    resamples = 1000 if y.size <= 20_000 else 200  # the interval's width settles long before this
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, y.size, y.size)
        sample_y = y[pick]
        if 0 < sample_y.sum() < sample_y.size:
            values.append(rank_auc(sample_y, p[pick]))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high), len(values)


def wilson_interval(successes: int, trials: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (well behaved for small counts and rates near 0 or 1)."""
    if trials == 0:
        return 0.0, 1.0
    rate = successes / trials
    denominator = 1 + Z_95**2 / trials
    centre = (rate + Z_95**2 / (2 * trials)) / denominator
    half = Z_95 * math.sqrt(rate * (1 - rate) / trials + Z_95**2 / (4 * trials**2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
