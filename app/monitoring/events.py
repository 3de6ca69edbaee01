"""What the prediction path hands to monitoring: one event per /predict or /predict/batch call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
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
    out_of_range: list[tuple[int, str]] = field(default_factory=list)  # (row, feature) numbers outside training's
    stage_seconds: dict[str, float] = field(default_factory=dict)  # validation, features, inference, explanation
    # A single record's values in the order of ``columns`` (None for batches): the background
    # gathers many /predict events into columns with one transposition of these rows, about
    # ten times cheaper than joining their one-value columns.
    row: tuple[Any, ...] | None = None


def transpose(records: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]] | None:
    """Dictionaries with the same keys in the same order turned into one tuple of values per key.

    Transposed in C. None when they differ (then handle them one by one); only the first and
    last key orders are compared, since every event of one model version lists its features in
    schema order and times the same stages.
    """
    if not records:
        return {}
    names = list(records[0])
    try:
        if list(records[-1]) != names or set(map(len, records)) != {len(names)}:
            return None
        # Lengths checked above: the cheaper unchecked transposition is exact.
        return dict(zip(names, zip(*map(dict.values, records), strict=False), strict=True))
    except TypeError:  # not dictionaries
        return None


def gather_columns(columns_of_events: list[dict[str, Sequence[Any]]]) -> dict[str, list[Any]] | None:
    """The columns of many single-record events joined into one column per feature (see ``transpose``)."""
    transposed = transpose(columns_of_events)
    if transposed is None:
        return None
    try:
        if any(set(map(len, values)) != {1} for values in transposed.values()):
            return None  # some event holds more or fewer than one record
        return {name: list(chain.from_iterable(values)) for name, values in transposed.items()}
    except TypeError:  # a value that is not a sequence
        return None
