"""Confidence-based performance estimation (CBPE): model performance from calibrated scores alone.

When the scores are calibrated, a customer scored ``p`` churns with probability ``p``, so the
expected confusion matrix at the threshold is ``E[TP] = sum(p)`` and ``E[FP] = sum(1 - p)`` over the
flagged customers, ``E[FN] = sum(p)`` and ``E[TN] = sum(1 - p)`` over the others; precision, recall
and F1 follow from it. The expected ROC curve weighs each score as ``p`` of a positive and ``1 - p``
of a negative, so the estimated ROC-AUC is the weighted Mann-Whitney statistic over those weights
(NannyML's definitions). The band is where the *realized* figure of the same customers would fall:
labels are drawn ``y ~ Bernoulli(p)`` many times (seeded, so every process reports the same band) and
the metric's quantiles are taken.

Scores are kept as counts and sums per fine score bin (:class:`ScoreBins`), so a window of any size
costs a fixed, small array; the threshold is a bin edge, so the expected confusion matrix is exact
and only the ROC curve's ordering inside one bin is lost.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ESTIMATE_BINS = 200  # equal-width score bins on [0, 1] (the threshold adds one edge)
SUM_SCALE = 1_000_000  # scores are summed in millionths, so sums add up exactly in integer tables
CONFIDENCE = 0.95
REPLICATES = 400
BAND_SEED = 20261207
METRICS = ("roc_auc", "precision", "recall", "f1")


@dataclass(frozen=True)
class ScoreBins:
    """Equal-width score bins with the decision threshold as one more edge."""

    threshold: float
    edges: np.ndarray  # interior cut points, increasing; bin i is [edges[i-1], edges[i])

    @classmethod
    def for_threshold(cls, threshold: float, n_bins: int = ESTIMATE_BINS) -> ScoreBins:
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, not {threshold!r}")
        grid = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
        edges = np.unique(np.append(grid, threshold)) if threshold > 0 else grid
        return cls(threshold=float(threshold), edges=edges)

    @property
    def n_bins(self) -> int:
        return self.edges.size + 1

    @property
    def width(self) -> int:
        """Table columns: the count of every bin, then the (scaled) score sum of every bin."""
        return 2 * self.n_bins

    def flagged(self) -> np.ndarray:
        """Bins whose every score is at or above the threshold (the service flags them as churn)."""
        lower = np.concatenate(([0.0], self.edges))
        return lower >= self.threshold

    def columns(self, scores: np.ndarray) -> np.ndarray:
        """``int64`` counts then scaled score sums per bin, ready to add into a slot-table row."""
        scores = np.asarray(scores, dtype=np.float64).ravel()
        scores = np.clip(scores[np.isfinite(scores)], 0.0, 1.0)
        index = np.searchsorted(self.edges, scores, side="right")
        counts = np.bincount(index, minlength=self.n_bins)
        sums = np.bincount(index, weights=np.rint(scores * SUM_SCALE), minlength=self.n_bins)
        return np.concatenate((counts, sums)).astype(np.int64)

    def window(self, columns: np.ndarray) -> ScoreWindow:
        """The window's counts and score sums from summed table columns."""
        columns = np.asarray(columns)
        counts = columns[: self.n_bins].astype(np.float64)
        sums = columns[self.n_bins : self.width].astype(np.float64) / SUM_SCALE
        return ScoreWindow(counts=counts, sums=np.minimum(sums, counts), flagged=self.flagged())

    def summarise(self, scores: np.ndarray) -> ScoreWindow:
        return self.window(self.columns(scores))


@dataclass(frozen=True)
class ScoreWindow:
    """How many scores fell in each bin, their sum, and which bins the threshold flags."""

    counts: np.ndarray
    sums: np.ndarray
    flagged: np.ndarray

    @property
    def size(self) -> int:
        return int(np.rint(self.counts.sum()))


@dataclass(frozen=True)
class MetricEstimate:
    value: float | None
    lower: float | None
    upper: float | None


@dataclass(frozen=True)
class PerformanceEstimate:
    """Estimated metrics of a window, each with its band (None where undefined, e.g. nothing flagged)."""

    predictions: int
    expected_churn_rate: float | None
    roc_auc: MetricEstimate
    precision: MetricEstimate
    recall: MetricEstimate
    f1: MetricEstimate
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def point_figures(self) -> dict[str, float | None]:
        """Just the estimates, as the manifest's reference stores them."""
        figures = {name: getattr(self, name).value for name in METRICS}
        return figures | {"expected_churn_rate": self.expected_churn_rate, "predictions": self.predictions}


def _metrics(positives: np.ndarray, counts: np.ndarray, flagged: np.ndarray) -> dict[str, np.ndarray]:
    """ROC-AUC, precision, recall and F1 from positives per bin (last axis); rows are label draws.

    Inside a bin the order of scores is unknown, so its positive/negative pairs count half (a tie).
    """
    negatives = counts - positives
    total_pos = positives.sum(axis=-1)
    total_neg = negatives.sum(axis=-1)
    above = total_pos[..., None] - np.cumsum(positives, axis=-1)  # positives in higher bins
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (negatives * (above + 0.5 * positives)).sum(axis=-1) / (total_pos * total_neg)
        true_pos = positives[..., flagged].sum(axis=-1)
        n_flagged = counts[flagged].sum()
        precision = true_pos / n_flagged if n_flagged > 0 else np.full_like(true_pos, np.nan)
        recall = true_pos / total_pos
        f1 = 2 * true_pos / (n_flagged + total_pos)
    return {"roc_auc": auc, "precision": precision, "recall": recall, "f1": f1}


def _defined(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def estimate_performance(
    window: ScoreWindow,
    *,
    confidence: float = CONFIDENCE,
    replicates: int = REPLICATES,
    seed: int = BAND_SEED,
) -> PerformanceEstimate:
    """CBPE estimates of ``window`` with a ``confidence`` band from ``replicates`` simulated label sets.

    Each bin's positives are drawn ``Binomial(count, mean score)``: the scores inside one bin are
    within a bin width of each other, so this is the Poisson-binomial of their own labels.
    """
    n = window.size
    if n == 0:
        empty = MetricEstimate(None, None, None)
        return PerformanceEstimate(0, None, empty, empty, empty, empty, confidence)
    points = _metrics(window.sums, window.counts, window.flagged)
    rng = np.random.default_rng(seed)
    means = np.divide(window.sums, window.counts, out=np.zeros_like(window.sums), where=window.counts > 0)
    draws = rng.binomial(window.counts.astype(np.int64), np.clip(means, 0.0, 1.0), size=(replicates, means.size))
    simulated = _metrics(draws.astype(np.float64), window.counts, window.flagged)
    tail = (1.0 - confidence) / 2.0
    figures = {}
    for name in METRICS:
        value = _defined(float(points[name]))
        realized = simulated[name][np.isfinite(simulated[name])]
        if value is None or realized.size == 0:
            figures[name] = MetricEstimate(value, None, None)
            continue
        lower, upper = np.quantile(realized, [tail, 1.0 - tail])
        figures[name] = MetricEstimate(value, float(min(lower, value)), float(max(upper, value)))
    return PerformanceEstimate(
        predictions=n, expected_churn_rate=float(window.sums.sum() / n), confidence=confidence, **figures
    )


def reference_figures(scores: np.ndarray, actual: np.ndarray, threshold: float) -> dict[str, Any]:
    """What the manifest stores: the estimate on held-out scores beside the realized figures there.

    The live estimate is read against the estimated figures (same method, so a gap is the data's);
    the realized ones show how close the estimate came when the model was fresh.
    """
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    scores = np.asarray(scores, dtype=np.float64).ravel()
    actual = np.asarray(actual).astype(bool).ravel()
    estimate = estimate_performance(ScoreBins.for_threshold(threshold).summarise(scores))
    flagged = scores >= threshold
    both_classes = 0 < int(actual.sum()) < actual.size
    realized = {
        "roc_auc": float(roc_auc_score(actual, scores)) if both_classes else None,
        "precision": _defined(float(precision_score(actual, flagged, zero_division=np.nan))),
        "recall": _defined(float(recall_score(actual, flagged, zero_division=np.nan))),
        "f1": _defined(float(f1_score(actual, flagged, zero_division=np.nan))),
        "churn_rate": float(actual.mean()) if actual.size else None,
        "predictions": int(actual.size),
    }
    return {"estimated": estimate.point_figures(), "realized": realized, "threshold": float(threshold)}
