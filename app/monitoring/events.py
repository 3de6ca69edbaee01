"""What the prediction path hands to monitoring: one event per /predict or /predict/batch call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class PredictionEvent:
    """A scored batch (one record for /predict). Built once; monitoring only reads it."""

    timestamp: float  # time.time() when scoring finished
    model_version: str
    prediction_ids: list[str]
    customer_ids: list[str | None]
    # Each feature's cleaned values in schema order (None = missing), one per record: drift bins
    # them and the prediction log writes each record's row from them, both in the background, so
    # the request path never builds a dictionary per record.
    columns: dict[str, Sequence[Any]]
    scores: np.ndarray  # calibrated churn probabilities
    decisions: np.ndarray  # bool: score >= threshold
    risk_bands: list[str]
    imputed: list[tuple[int, str]] = field(default_factory=list)  # (row, feature) filled with training values
    unseen: list[tuple[int, str]] = field(default_factory=list)  # (row, feature) categories not seen in training
    stage_seconds: dict[str, float] = field(default_factory=dict)  # validation, features, inference, explanation
