"""The fast lane: POST /predict served past FastAPI's stack behaves exactly like the routed endpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.serving.predictor import Predictor
from tests.conftest import customer_record, service_settings


@pytest.fixture
def record(customers: pd.DataFrame) -> dict[str, Any]:
    return customer_record(customers, 5)


def predictions_without_ids(response: Any) -> dict[str, Any]:
    body = response.json()
    body.pop("prediction_id")
    return body


def test_the_lane_and_the_router_give_the_same_answers(
    serve: Any, linear_models_dir: Path, record: dict[str, Any]
) -> None:
    lane = serve(linear_models_dir)
    # A root path sends every request through the router (the lane only serves the bare path).
    routed = TestClient(create_app(service_settings(linear_models_dir)), root_path="/churn")
    with routed:
        for body in (record, {**record, "tenure": -3}, {**record, "surprise": 1}):
            from_lane, from_router = lane.post("/predict", json=body), routed.post("/churn/predict", json=body)
            assert from_lane.status_code == from_router.status_code
            if from_lane.status_code == 200:
                assert predictions_without_ids(from_lane) == predictions_without_ids(from_router)
            else:
                assert from_lane.json() == from_router.json()
        bad_json = {"content": b"{not json", "headers": {"content-type": "application/json"}}
        assert lane.post("/predict", **bad_json).json() == routed.post("/churn/predict", **bad_json).json()


def test_other_methods_on_the_path_still_go_through_the_router(serve: Any, linear_models_dir: Path) -> None:
    client = serve(linear_models_dir)
    response = client.get("/predict")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_the_lane_answers_503_with_the_reason_when_no_model_is_loaded(serve: Any, tmp_path: Path) -> None:
    client = serve(tmp_path / "empty", monitoring_enabled=False)
    response = client.post("/predict", json={"tenure": 3})
    assert response.status_code == 503
    assert "no model is loaded" in response.json()["detail"]
    assert response.headers["retry-after"] == "5"


def test_an_unexpected_error_is_a_logged_plain_500_and_counted(
    serve: Any,
    linear_models_dir: Path,
    record: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = serve(linear_models_dir, monitoring_enabled=True, database_url=f"sqlite:///{tmp_path / 'log.sqlite3'}")

    def broken(self: Predictor, records: Any, explain: bool = True) -> Any:
        raise RuntimeError("simulated defect")

    monkeypatch.setattr(Predictor, "predict_records", broken)
    with caplog.at_level(logging.ERROR, logger="app"):
        response = client.post("/predict", json=record)
    assert response.status_code == 500
    assert response.text == "Internal Server Error"
    assert "simulated defect" in caplog.text
    families = text_string_to_metric_families(client.get("/metrics").text)
    counted = {
        (sample.labels["route"], sample.labels["status"]): sample.value
        for family in families
        for sample in family.samples
        if sample.name == "churn_http_requests_total"
    }
    assert counted[("/predict", "500")] == 1


def test_the_lane_counts_requests_as_the_monitoring_middleware_does(
    serve: Any, linear_models_dir: Path, record: dict[str, Any], tmp_path: Path
) -> None:
    """Requests the lane serves reach the same HTTP metrics as routed ones, by the lane's meter."""
    client = serve(linear_models_dir, monitoring_enabled=True, database_url=f"sqlite:///{tmp_path / 'log.sqlite3'}")
    for body in (record, record, {**record, "tenure": -3}):
        client.post("/predict", json=body)
    client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    client.get("/predict")  # another method: the router and the middleware

    samples = [s for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples]
    requests = {
        (s.labels["method"], s.labels["status"]): s.value
        for s in samples
        if s.name == "churn_http_requests_total" and s.labels["route"] == "/predict"
    }
    assert requests == {("POST", "200"): 2, ("POST", "422"): 2, ("GET", "405"): 1}
    durations = {
        s.labels["method"]: s.value
        for s in samples
        if s.name == "churn_http_request_duration_seconds_count" and s.labels["route"] == "/predict"
    }
    assert durations == {"POST": 4, "GET": 1}
    assert next(s.value for s in samples if s.name == "churn_http_requests_in_flight") == 1  # this scrape alone
