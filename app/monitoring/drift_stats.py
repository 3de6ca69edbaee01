"""Drift statistics: PSI and Jensen-Shannon distance of live bin counts against the frozen reference.

Why the threshold moves with the window: with no drift at all, ``n * PSI`` over ``k`` bins is
approximately chi-square with ``k - 1`` degrees of freedom (inflated by the reference's own
sampling noise, hence ``1/n + 1/N_ref``), so PSI itself is about ``(k-1)/n``. A fixed 0.2
threshold would fire on small windows for no reason; the threshold in force is the larger of
``drift_psi_threshold`` and the chi-square 99.9% null quantile scaled to the window.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bundle.drift_reference import FeatureReference
from bundle.performance_estimate import PerformanceEstimate

if TYPE_CHECKING:
    from app.monitoring.drift import DriftLayout, FeatureBinner

PSI_EPSILON = 1e-4  # floor for empty bins on either side, so PSI stays finite
NULL_QUANTILE = 0.999  # how unlikely a no-drift window must be to cross the window-size threshold


def population_stability_index(live_counts: np.ndarray, reference: np.ndarray) -> float:
    """PSI = sum((p - q) * ln(p / q)) with both shares floored at PSI_EPSILON (empty bins stay finite)."""
    n = live_counts.sum()
    if n <= 0:
        return math.nan
    p = np.maximum(live_counts / n, PSI_EPSILON)
    q = np.maximum(np.asarray(reference, dtype=np.float64), PSI_EPSILON)
    return float(np.sum((p - q) * np.log(p / q)))


def jensen_shannon_distance(live_counts: np.ndarray, reference: np.ndarray) -> float:
    """Jensen-Shannon distance with base-2 logarithms: 0 for identical, 1 for disjoint distributions."""
    n = live_counts.sum()
    if n <= 0:
        return math.nan
    from scipy.spatial.distance import jensenshannon  # imported here: scipy adds ~1 s to process start

    distance = jensenshannon(live_counts / n, np.asarray(reference, dtype=np.float64), base=2)
    return float(min(max(distance, 0.0), 1.0))


def psi_threshold(base: float, n: int, reference: FeatureReference) -> float:
    """The PSI a no-drift window of ``n`` records exceeds only with probability 1 - NULL_QUANTILE, or ``base``.

    ``n * PSI`` ~ chi-square(k - 1) under no drift, scaled by ``1 + n / N_ref`` for the reference's
    own sampling noise; ``k`` counts the bins the reference actually populates.
    """
    if n <= 0:
        return base
    populated = sum(1 for share in reference.proportions if share > 0)
    degrees = max(populated - 1, 1)
    noise = 1.0 / n + (1.0 / reference.count if reference.count > 0 else 0.0)
    from scipy.stats import chi2  # imported here: scipy adds ~1 s to process start

    return float(max(base, chi2.ppf(NULL_QUANTILE, degrees) * noise))


@dataclass
class FeatureDrift:
    feature: str
    kind: str
    count: int
    psi: float
    js: float
    threshold: float
    drifting: bool


@dataclass
class DriftSnapshot:
    """The figures of one background update (also what the daily report shows)."""

    computed_at: float
    model_version: str
    window_seconds: int
    window_predictions: int
    predicted_churn_rate: float
    features: list[FeatureDrift]
    score: FeatureDrift
    # Reported beside realized performance rather than under drift, so left out of to_dict().
    estimate: PerformanceEstimate | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("estimate")
        return _nan_to_none(data)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    return value


def feature_drift(binner: FeatureBinner, counts: np.ndarray, base: float, min_count: int) -> FeatureDrift:
    live = counts[binner.offset - 1 : binner.offset - 1 + binner.n_bins].astype(np.float64)
    reference = binner.reference
    n = int(live.sum())
    psi = population_stability_index(live, reference.proportions)
    threshold = psi_threshold(base, n, reference)
    return FeatureDrift(
        feature=binner.name,
        kind=reference.kind,
        count=n,
        psi=psi,
        js=jensen_shannon_distance(live, reference.proportions),
        threshold=threshold,
        drifting=bool(n >= min_count and psi > threshold),
    )


def compute_snapshot(
    layout: DriftLayout, counts: np.ndarray, now: float, window_seconds: int, base: float, min_count: int
) -> DriftSnapshot:
    decisions = counts[layout.decision_offset - 1 : layout.decision_offset + 1]
    window = int(decisions.sum())
    return DriftSnapshot(
        computed_at=now,
        model_version=layout.model_version,
        window_seconds=window_seconds,
        window_predictions=window,
        predicted_churn_rate=float(decisions[1] / window) if window else math.nan,
        features=[feature_drift(binner, counts, base, min_count) for binner in layout.features],
        score=feature_drift(layout.score, counts, base, min_count),
    )
