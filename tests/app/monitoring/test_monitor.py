"""Monitoring through the real service (create_app) with a real bundle: metrics, drift bins, log, feedback, report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from app.monitoring.drift import window_counts
from tests.app.monitoring.monitoring_helpers import metric_value
from tests.conftest import API_KEY, customer_record


@pytest.fixture
def monitored(serve: Any, linear_models_dir: Path, tmp_path: Path) -> Any:
    return serve(
        linear_models_dir,
        monitoring_enabled=True,
        database_url=f"sqlite:///{tmp_path / 'predictions.sqlite3'}",
        drift_update_seconds=3600,
        performance_update_seconds=3600,
    )


def test_service_traffic_reaches_every_monitoring_output(monitored: Any, customers: pd.DataFrame) -> None:
    monitor = monitored.app.state.monitor
    version = monitored.get("/ready").json()["model_version"]
    singles = []
    for row in range(20):
        response = monitored.post("/predict", json={**customer_record(customers, row), "customer_id": f"S-{row}"})
        assert response.status_code == 200, response.text
        singles.append(response.json())
    batch = [customer_record(customers, row) for row in range(20, 320)]
    assert monitored.post("/predict/batch", json=batch).status_code == 200

    text = monitored.get("/metrics").text
    predictions = sum(
        metric_value(text, "churn_predictions_total", risk_band=band, model_version=version) or 0
        for band in ("low", "medium", "high")
    )
    assert predictions == 320
    assert metric_value(text, "churn_http_requests_total", route="/predict", method="POST", status="200") == 20
    assert metric_value(text, "churn_http_requests_total", route="/predict/batch", method="POST", status="200") == 1
    assert metric_value(text, "churn_model_ready") == 1
    assert metric_value(text, "churn_model_info", version=version) == 1
    assert metric_value(text, "churn_prediction_stage_duration_seconds_count", stage="inference") == 21

    # Live values from the training table land in the reference bins: none in "unseen", nothing flagged.
    snapshot = monitor.update_drift()
    assert snapshot.window_predictions == 320
    for figures in snapshot.features:
        assert figures.count == 320, figures.feature
        assert not figures.drifting, figures
    tracker = monitor.drift.tracker
    counts = window_counts(
        monitor.drift.directory, tracker.layout, time.time(), tracker.slot_seconds, tracker.window_seconds
    )
    for binner in tracker.layout.features:
        if binner.categorical:
            unseen_column = binner.offset - 1 + len(binner.reference.categories)
            assert int(counts[unseen_column]) == 0, binner.name

    # Feedback joins to the logged predictions (flushed first), by prediction id and by customer id.
    outcomes = {
        "outcomes": [
            {"prediction_id": singles[0]["prediction_id"], "churned": True},
            {"customer_id": "S-1", "churned": False},
            {"customer_id": "never-predicted", "churned": True},
        ]
    }
    body = monitored.post("/feedback", json=outcomes, headers={"X-API-Key": API_KEY}).json()
    assert [item["prediction_id"] for item in body["matched"]] == [
        singles[0]["prediction_id"],
        singles[1]["prediction_id"],
    ]
    assert len(body["unknown"]) == 1

    report = monitored.get("/monitoring/report", headers={"X-API-Key": API_KEY}).json()
    assert report["predictions"] == 320
    assert report["model_versions"][0]["version"] == version
    assert report["realized_performance"]["predictions_of_the_day"]["labelled_predictions"] == 2
    assert 0 < report["latency_seconds"]["single"]["p50"] < report["latency_seconds"]["batch"]["p50"]


def test_reload_switches_model_info_and_counts_reloads(
    serve: Any, bundle_builder: Any, tmp_path: Path, customers: pd.DataFrame
) -> None:
    models_dir = tmp_path / "models"
    bundle_builder(models_dir, "logistic_regression")
    client = serve(models_dir, monitoring_enabled=True, database_url=f"sqlite:///{tmp_path / 'log.sqlite3'}")
    first = client.get("/ready").json()["model_version"]
    bundle_builder(models_dir, "logistic_regression", seed=1)
    assert client.post("/admin/reload", headers={"X-API-Key": API_KEY}).status_code == 200
    second = client.get("/ready").json()["model_version"]
    assert second != first
    text = client.get("/metrics").text
    assert metric_value(text, "churn_model_info", version=second) == 1
    assert metric_value(text, "churn_model_info", version=first) is None
    assert metric_value(text, "churn_model_reloads_total", outcome="success") == 1
    assert client.post("/predict", json=customer_record(customers, 0)).status_code == 200
    assert client.app.state.monitor.update_drift().window_predictions == 1
