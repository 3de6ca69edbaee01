"""The prediction event: one shape, its columns, read record by record for the log."""

from __future__ import annotations

import numpy as np

from app.monitoring.events import PredictionEvent


def event_of(columns: dict, size: int) -> PredictionEvent:
    return PredictionEvent(
        timestamp=0.0,
        model_version="v1",
        prediction_ids=[f"p{i}" for i in range(size)],
        customer_ids=[None] * size,
        columns=columns,
        scores=np.full(size, 0.5),
        decisions=np.zeros(size, dtype=bool),
        risk_bands=["low"] * size,
    )


def test_records_are_the_columns_read_row_by_row() -> None:
    event = event_of({"tenure": [1, None], "contract": ("One year", "Two year")}, 2)
    assert event.size == 2
    assert list(event.records()) == [
        {"tenure": 1, "contract": "One year"},
        {"tenure": None, "contract": "Two year"},
    ]


def test_an_event_without_features_has_empty_records() -> None:
    assert list(event_of({}, 3).records()) == [{}, {}, {}]
