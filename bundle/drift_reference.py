"""Frozen drift reference: per-feature bins built once from training data, shipped in the bundle.

Live traffic is binned with exactly these edges (never refitted), so training and serving
histograms are comparable bin for bin. Every numeric histogram has two overflow bins (below the
lowest and above the highest training edge) and a missing bin; every categorical histogram has
an "unseen" bin and a missing bin. The score histogram covers the model's training scores.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bundle.features import clean_category

UNSEEN_BIN = "__unseen__"
MISSING_BIN = "__missing__"


@dataclass
class FeatureReference:
    """Reference histogram of one feature (or of the model score)."""

    name: str
    kind: str  # "numeric" | "categorical" | "score"
    edges: list[float]  # numeric: interior cut points; bins are (-inf,e0),[e0,e1),...,[e_last,+inf)
    categories: list[str]  # categorical: known values; then the unseen bin, then the missing bin
    proportions: list[float]  # one per bin, sums to 1
    count: int  # training rows behind the proportions

    @property
    def n_bins(self) -> int:
        if self.kind == "categorical":
            return len(self.categories) + 2  # + unseen + missing
        return len(self.edges) + 2  # interior ranges + the upper overflow + missing (edges[0] opens the lowest)

    def bin_labels(self) -> list[str]:
        if self.kind == "categorical":
            return [*self.categories, UNSEEN_BIN, MISSING_BIN]
        edges = self.edges
        labels = [f"< {edges[0]:g}"] if edges else ["all"]
        labels += [f"[{lo:g}, {hi:g})" for lo, hi in itertools.pairwise(edges)]
        if edges:
            labels.append(f">= {edges[-1]:g}")
        labels.append(MISSING_BIN)
        return labels

    def bin_index(self, values: Sequence[Any]) -> np.ndarray:
        """Bin index of each value (vectorised; a few microseconds for one row)."""
        if self.kind == "categorical":
            lookup = {value: i for i, value in enumerate(self.categories)}
            unseen, missing = len(self.categories), len(self.categories) + 1
            return np.fromiter(
                (
                    missing if v is None else lookup.get(v if isinstance(v, str) else clean_category(v), unseen)
                    for v in values
                ),
                dtype=np.int64,
                count=len(values),
            )
        numbers = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        index = np.searchsorted(np.asarray(self.edges, dtype=np.float64), numbers, side="right")
        index[np.isnan(numbers)] = self.n_bins - 1
        return index


def numeric_reference(name: str, values: np.ndarray, n_bins: int = 10, kind: str = "numeric") -> FeatureReference:
    """Quantile bins (at most ``n_bins`` inside the training range) plus overflow and missing bins."""
    values = np.asarray(values, dtype=np.float64)
    present = values[~np.isnan(values)]
    if present.size:
        quantiles = np.quantile(present, np.linspace(0, 1, n_bins + 1))
        edges = np.unique(quantiles).tolist()
    else:
        edges = []
    reference = FeatureReference(name=name, kind=kind, edges=edges, categories=[], proportions=[], count=len(values))
    counts = np.bincount(reference.bin_index(values.tolist()), minlength=len(edges) + 2)
    reference.proportions = (counts / max(len(values), 1)).tolist()
    return reference


def categorical_reference(name: str, values: Sequence[Any], max_categories: int = 50) -> FeatureReference:
    """Frequencies of the most common categories; the rest of training counts toward "unseen"."""
    # Booleans and numbers are binned by their canonical category text, exactly as serving bins them.
    present = [v if isinstance(v, str) else clean_category(v) for v in values if v is not None]
    unique, counts = np.unique(np.asarray(present, dtype=object).astype(str), return_counts=True)
    order = np.argsort(-counts, kind="stable")[:max_categories]
    categories = [str(unique[i]) for i in order]
    reference = FeatureReference(
        name=name, kind="categorical", edges=[], categories=categories, proportions=[], count=len(values)
    )
    index = reference.bin_index(list(values))
    reference.proportions = (np.bincount(index, minlength=reference.n_bins) / max(len(values), 1)).tolist()
    return reference


@dataclass
class DriftReference:
    """All reference histograms of one bundle."""

    features: list[FeatureReference]
    score: FeatureReference

    def to_dict(self) -> dict[str, Any]:
        return {"features": [asdict(f) for f in self.features], "score": asdict(self.score)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftReference:
        return cls(
            features=[FeatureReference(**item) for item in data["features"]],
            score=FeatureReference(**data["score"]),
        )
