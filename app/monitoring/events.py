"""What the prediction path hands to monitoring: one event per /predict or /predict/batch call."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np


@dataclass(slots=True)
class PredictionEvent:
    """A scored batch (one record for /predict). Built once; monitoring only reads it."""

    timestamp: float  # time.time() when scoring finished
    model_version: str
    prediction_ids: list[str]
    customer_ids: list[str | None]
    # Each feature's cleaned values in schema order (None = missing), one per record: the one shape
    # drift bins and the prediction log writes.
    columns: dict[str, Sequence[Any]]
    scores: np.ndarray  # calibrated churn probabilities
    decisions: np.ndarray  # bool: score >= threshold
    risk_bands: list[str]
    imputed: list[tuple[int, str]] = field(default_factory=list)  # (row, feature) filled with training values
    unseen: list[tuple[int, str]] = field(default_factory=list)  # (row, feature) categories not seen in training
    out_of_range: list[tuple[int, str]] = field(default_factory=list)  # (row, feature) numbers outside training's
    stage_seconds: dict[str, float] = field(default_factory=dict)  # validation, features, inference, explanation
    role: str = "champion"  # the answering model's role: "challenger" for a canary's answers

    @property
    def size(self) -> int:
        return len(self.prediction_ids)

    def records(self) -> Iterator[dict[str, Any]]:
        """Each record's cleaned values by feature (what the prediction log stores as ``inputs``)."""
        names = list(self.columns)
        values = zip(*self.columns.values(), strict=True) if names else repeat((), self.size)
        return (dict(zip(names, row, strict=True)) for row in values)


@dataclass(slots=True)
class RecordedEvent:
    """An event as monitoring queues it: with the latency of the request that produced it."""

    event: PredictionEvent
    latency: float | None  # request start to scoring done; None when recorded outside a request
    rows: list[tuple[Any, ...]] | None = None  # its log rows, when the journal already made them
