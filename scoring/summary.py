"""The scored population against the bundle's drift reference, and the counts per risk band.

Partition reports carry the service's drift bin counts (``DriftLayout.bin_counts``); summed over the
whole run they give PSI and Jensen-Shannon distance per feature and for the score exactly as the
service computes them for its window (``compute_snapshot``), with the service's thresholds, and the
performance the scores let one expect (the service's live estimate, docs/monitoring.md).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from app.monitoring.drift import DriftLayout
from app.monitoring.drift_stats import compute_snapshot
from bundle.manifest import Manifest
from bundle.performance_estimate import estimate_performance
from scoring.partition import PartitionReport


class RunTotals:
    """The sum of the partition reports of one job (those written by earlier runs included)."""

    def __init__(self, manifest: Manifest) -> None:
        self.layout = DriftLayout.from_reference(manifest.version, manifest.drift_reference, manifest.threshold)
        self.manifest = manifest
        self.partitions = 0
        self.rows = 0
        self.scored = 0
        self.errors = 0
        self.probability_sum = 0.0
        self.risk_bands: Counter[str] = Counter()
        self.ignored_columns: set[str] = set()
        self.counts = np.zeros(self.layout.width - 1, dtype=np.int64)

    def add(self, report: PartitionReport) -> None:
        self.partitions += 1
        self.rows += report.rows
        self.scored += report.scored
        self.errors += report.errors
        self.probability_sum += report.probability_sum
        self.risk_bands.update(report.risk_bands)
        self.ignored_columns.update(report.ignored_columns)
        self.counts += np.asarray(report.bin_counts, dtype=np.int64)

    def summary(self, base_threshold: float, min_count: int, **about: Any) -> dict[str, Any]:
        """The run's figures, drift and score distribution as JSON-ready data."""
        snapshot = compute_snapshot(self.layout, self.counts, time.time(), 0, base_threshold, min_count).to_dict()
        score = self.layout.score
        score_counts = self.counts[score.offset - 1 : score.offset - 1 + score.n_bins]
        drifting = [item["feature"] for item in snapshot["features"] if item["drifting"]]
        bands = {name: self.risk_bands.get(name, 0) for name in sorted(self.risk_bands)}
        return {
            **about,
            "model_version": self.manifest.version,
            "partitions": self.partitions,
            "rows": self.rows,
            "scored": self.scored,
            "errors": self.errors,
            "ignored_columns": sorted(self.ignored_columns),
            "risk_bands": bands,
            "mean_churn_probability": self.probability_sum / self.scored if self.scored else None,
            "predicted_churn_rate": snapshot["predicted_churn_rate"],
            "score_distribution": {
                "bins": score.reference.bin_labels(),
                "counts": score_counts.tolist(),
                "reference_proportions": score.reference.proportions,
                "psi": snapshot["score"]["psi"],
                "drifting": snapshot["score"]["drifting"],
            },
            "drifting_features": drifting,
            "features": snapshot["features"],
            # What the model's calibrated scores say its performance on this population is likely to be.
            "estimated_performance": estimate_performance(self.layout.score_window(self.counts)).to_dict(),
            "performance_reference": self.manifest.performance_reference or None,
        }


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Written to a temp name and renamed, like the partitions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(temp, path)


def band_lines(summary: dict[str, Any], bands_in_order: list[str]) -> list[str]:
    """``band  count  share`` per risk band, lowest band first, for the closing printout."""
    scored = max(summary["scored"], 1)
    width = max(map(len, bands_in_order), default=4)
    counts = {band: summary["risk_bands"].get(band, 0) for band in bands_in_order}
    return [f"{band:<{width}}  {count:>12,}  {count / scored:7.2%}" for band, count in counts.items()]
