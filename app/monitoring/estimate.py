"""The estimated-performance gauges: the drift window's CBPE figures and the bundle's reference figures.

The estimate itself is computed with the drift figures (``DriftTracker.snapshot``) from the same
shared window; this module only exports it, labelled by model version so a reload never mixes two
models' figures, and retires the previous version's series.
"""

from __future__ import annotations

import math
from typing import Any

from app.monitoring.metrics import Metrics
from bundle.manifest import Manifest
from bundle.performance_estimate import METRICS, PerformanceEstimate

BOUNDS = ("lower", "upper")
SOURCES = ("estimated", "realized")


def _value(figure: Any) -> float:
    return float(figure) if isinstance(figure, int | float) and not isinstance(figure, bool) else math.nan


class EstimateGauges:
    """Exports one model version's estimate and reference; forgets the previous version's."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.version: str | None = None
        self.reference: dict[str, Any] = {}

    def _point_gauges(self):
        m = self.metrics
        return {"roc_auc": m.estimated_auc, "precision": m.estimated_precision, "recall": m.estimated_recall,
                "f1": m.estimated_f1}  # fmt: skip

    def model_loaded(self, manifest: Manifest) -> None:
        """Export ``manifest``'s reference figures (NaN when training recorded none)."""
        if self.version is not None and self.version != manifest.version:
            self._retire(self.version)
        self.version = manifest.version
        self.reference = manifest.performance_reference if isinstance(manifest.performance_reference, dict) else {}
        for source in SOURCES:
            figures = self.reference.get(source)
            figures = figures if isinstance(figures, dict) else {}
            for name in METRICS:
                self.metrics.reference_performance.labels(manifest.version, name, source).set(_value(figures.get(name)))

    def publish(self, model_version: str, estimate: PerformanceEstimate) -> None:
        for name, gauge in self._point_gauges().items():
            figure = getattr(estimate, name)
            gauge.labels(model_version).set(_value(figure.value))
            self.metrics.estimated_bound.labels(model_version, name, "lower").set(_value(figure.lower))
            self.metrics.estimated_bound.labels(model_version, name, "upper").set(_value(figure.upper))

    def _retire(self, version: str) -> None:
        m = self.metrics
        for name, gauge in self._point_gauges().items():
            m.retire_series(gauge, (version,))
            for bound in BOUNDS:
                m.retire_series(m.estimated_bound, (version, name, bound))
            for source in SOURCES:
                m.retire_series(m.reference_performance, (version, name, source))
