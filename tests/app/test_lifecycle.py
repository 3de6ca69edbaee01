"""Startup, readiness, missing and corrupt bundles, and hot reload (success, failure, under load, announced)."""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from app.main import GC_YOUNG_THRESHOLD
from app.serving.reload import Announcement, WorkerReport, WorkerSync
from bundle.manifest import MANIFEST
from bundle.store import current_bundle_dir, set_current
from tests.conftest import API_KEY, build_bundle, customer_record

KEY = {"X-API-Key": API_KEY}


@pytest.fixture
def record(customers: pd.DataFrame) -> dict[str, Any]:
    return customer_record(customers, 0)


@pytest.fixture
def models_dir(tmp_path: Path, linear_models_dir: Path) -> Path:
    """A private copy of the shared linear models directory, free to modify."""
    copy = tmp_path / "models"
    shutil.copytree(linear_models_dir, copy)
    return copy


def test_startup_sets_the_young_collection_threshold_and_keeps_the_older_ones(serve: Any, models_dir: Path) -> None:
    before = gc.get_threshold()
    try:
        serve(models_dir)
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    finally:
        gc.set_threshold(*before)


def test_health_and_ready_when_a_bundle_is_loaded(serve: Any, models_dir: Path) -> None:
    client = serve(models_dir)

    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "model_version": current_bundle_dir(models_dir).name,
        "challenger": {"mode": "off", "share": 1.0, "version": None, "error": None},
    }


def test_missing_bundle_keeps_the_process_up_but_not_ready(
    serve: Any, tmp_path: Path, record: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "empty").mkdir()
    with caplog.at_level(logging.ERROR, logger="app"):
        client = serve(tmp_path / "empty")

    assert client.get("/health").status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert "no current bundle" in ready.json()["reason"]
    assert "python -m training" in ready.json()["reason"]
    assert "no current bundle" in caplog.text
    predict = client.post("/predict", json=record)
    assert predict.status_code == 503
    assert "no current bundle" in predict.json()["detail"]
    assert client.get("/metadata").status_code == 503
    assert client.post("/predict/batch", json=[record]).status_code == 503


def test_tampered_model_file_is_refused_with_the_checksum_reason(serve: Any, models_dir: Path) -> None:
    artifact = current_bundle_dir(models_dir) / "model.joblib"
    artifact.write_bytes(artifact.read_bytes() + b"tampered")

    ready = serve(models_dir).get("/ready")

    assert ready.status_code == 503
    assert "checksum mismatch for model.joblib" in ready.json()["reason"]


def test_malformed_manifest_is_refused_with_the_reason(serve: Any, models_dir: Path) -> None:
    (current_bundle_dir(models_dir) / MANIFEST).write_text("{ not json")

    ready = serve(models_dir).get("/ready")

    assert ready.status_code == 503
    assert "is not valid JSON" in ready.json()["reason"]


def test_current_naming_a_missing_bundle_is_refused(serve: Any, models_dir: Path) -> None:
    (models_dir / "current").write_text("20990101T000000Z-gone00\n")

    ready = serve(models_dir).get("/ready")

    assert ready.status_code == 503
    assert "20990101T000000Z-gone00" in ready.json()["reason"]


def test_reload_swaps_in_the_new_current_bundle(serve: Any, models_dir: Path, record: dict[str, Any]) -> None:
    client = serve(models_dir)
    old_version = client.get("/ready").json()["model_version"]
    new_version = build_bundle(models_dir, "xgboost", seed=1).name

    response = client.post("/admin/reload", headers=KEY)

    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["model_version"], body["previous_version"]) == ("reloaded", new_version, old_version)
    assert client.post("/predict", json=record).json()["model_version"] == new_version
    assert client.get("/metadata").json()["model"]["family"] == "xgboost"


def test_failed_reload_keeps_the_old_model_serving(serve: Any, models_dir: Path, record: dict[str, Any]) -> None:
    client = serve(models_dir)
    old_version = client.get("/ready").json()["model_version"]
    broken = build_bundle(models_dir, "lightgbm", seed=2)
    (broken / "model.joblib").write_bytes(b"not a model")

    response = client.post("/admin/reload", headers=KEY)

    assert response.status_code == 409
    detail = response.json()["detail"]
    assert f"still serving {old_version}" in detail
    assert "checksum mismatch for model.joblib" in detail
    assert client.get("/ready").json()["model_version"] == old_version
    assert client.post("/predict", json=record).json()["model_version"] == old_version


def test_reload_makes_a_service_that_started_without_a_bundle_ready(
    serve: Any, tmp_path: Path, record: dict[str, Any]
) -> None:
    models_dir = tmp_path / "models"
    client = serve(models_dir)
    assert client.get("/ready").status_code == 503

    version = build_bundle(models_dir, "logistic_regression").name
    assert client.post("/admin/reload", headers=KEY).json()["model_version"] == version

    assert client.get("/ready").status_code == 200
    assert client.post("/predict", json=record).status_code == 200


def test_reload_needs_the_api_key(serve: Any, models_dir: Path) -> None:
    client = serve(models_dir)

    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"X-API-Key": "wrong"}).status_code == 401


def test_reload_is_disabled_without_a_configured_key(serve: Any, models_dir: Path) -> None:
    client = serve(models_dir, api_key=None)

    response = client.post("/admin/reload", headers=KEY)

    assert response.status_code == 403
    assert "CHURN_API_KEY" in response.json()["detail"]


def test_requests_in_flight_during_reloads_all_succeed(serve: Any, models_dir: Path, record: dict[str, Any]) -> None:
    first = current_bundle_dir(models_dir).name
    second = build_bundle(models_dir, "random_forest", seed=3, make_current=False).name
    client = serve(models_dir)

    def predict_many(_: int) -> list[tuple[int, str]]:
        responses = [client.post("/predict", json=record) for _ in range(25)]
        return [(response.status_code, response.json().get("model_version")) for response in responses]

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(predict_many, worker) for worker in range(4)]
        for version in (second, first, second, first):
            set_current(models_dir, version)
            assert client.post("/admin/reload", headers=KEY).status_code == 200
        outcomes = [outcome for future in futures for outcome in future.result()]

    assert {status for status, _ in outcomes} == {200}
    assert {version for _, version in outcomes} <= {first, second}


def test_openapi_follows_the_reloaded_bundle(serve: Any, models_dir: Path, customers: pd.DataFrame) -> None:
    client = serve(models_dir)
    before = client.get("/openapi.json").json()["components"]["schemas"]["CustomerRecord"]
    assert "Region" not in before["properties"]

    extended = customers.assign(Region=["North", "South", "East"] * (len(customers) // 3))
    build_bundle(models_dir, "logistic_regression", frame=extended)
    client.post("/admin/reload", headers=KEY)

    after = client.get("/openapi.json").json()["components"]["schemas"]["CustomerRecord"]
    assert after["properties"]["Region"]["x-known-categories"] == ["East", "North", "South"]


def test_metadata_lets_a_client_build_a_valid_request(serve: Any, models_dir: Path) -> None:
    client = serve(models_dir)

    metadata = client.get("/metadata").json()

    manifest = json.loads((current_bundle_dir(models_dir) / MANIFEST).read_text())
    assert metadata["model"]["version"] == manifest["version"]
    assert metadata["model"]["framework"] == "scikit-learn"
    assert metadata["threshold"] == manifest["threshold"]
    assert metadata["metrics"] == manifest["metrics"]
    assert metadata["risk_bands"] == {"low": 0.0, "medium": 0.3, "high": 0.6}
    assert [item["name"] for item in metadata["inputs"]] == [f["name"] for f in manifest["schema"]["features"]]
    contract = next(item for item in metadata["inputs"] if item["name"] == "Contract")
    assert contract["categories"] == ["Month-to-month", "One year", "Two year"]
    built = {item["name"]: item["example"] for item in metadata["inputs"]}
    assert client.post("/predict", json=built).status_code == 200


# ---- several workers: following reloads announced in the shared directory ---------------------------
def wait_for_version(client: Any, version: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/ready").json().get("model_version") != version:
        assert time.monotonic() < deadline, f"the service never switched to {version}"
        time.sleep(0.05)


def wait_for_report(reload_dir: Path, generation: int, timeout: float = 10.0) -> WorkerReport:
    sync = WorkerSync(reload_dir, pid=os.getpid())
    deadline = time.monotonic() + timeout
    while True:
        report = next((r for r in sync.live_reports() if r.pid == os.getpid()), None)
        if report is not None and report.generation >= generation:
            return report
        assert time.monotonic() < deadline, f"no report for reload generation {generation}"
        time.sleep(0.05)


def test_a_reload_announced_by_another_worker_loads_exactly_that_version(
    serve: Any, models_dir: Path, tmp_path: Path
) -> None:
    reload_dir = tmp_path / "reload"
    client = serve(models_dir, reload_dir=reload_dir, reload_poll_seconds=0.05)
    current_version = current_bundle_dir(models_dir).name
    announced = build_bundle(models_dir, "random_forest", seed=4, make_current=False).name

    another_worker = WorkerSync(reload_dir, pid=os.getppid())
    with another_worker.service_wide_lock():
        another_worker.announce(announced)

    wait_for_version(client, announced)
    assert current_bundle_dir(models_dir).name == current_version, "current was never touched"
    assert client.get("/metadata").json()["model"]["family"] == "random_forest"
    assert wait_for_report(reload_dir, 1) == WorkerReport(os.getpid(), 1, announced, None)


def test_a_worker_that_cannot_load_the_announced_version_keeps_serving_and_says_why(
    serve: Any, models_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reload_dir = tmp_path / "reload"
    client = serve(models_dir, reload_dir=reload_dir, reload_poll_seconds=0.05)
    old_version = client.get("/ready").json()["model_version"]

    with caplog.at_level(logging.ERROR, logger="app"):
        WorkerSync(reload_dir, pid=os.getppid()).announce("20990101T000000Z-gone00")
        report = wait_for_report(reload_dir, 1)

    assert report.model_version == old_version
    assert "bundle 20990101T000000Z-gone00 does not exist" in report.error
    assert f"still serving {old_version}" in caplog.text
    assert client.get("/ready").json()["model_version"] == old_version


def test_a_reload_taken_here_is_announced_to_the_other_workers(serve: Any, models_dir: Path, tmp_path: Path) -> None:
    reload_dir = tmp_path / "reload"
    client = serve(models_dir, reload_dir=reload_dir, reload_wait_seconds=5)
    new_version = build_bundle(models_dir, "logistic_regression", seed=5).name

    response = client.post("/admin/reload", headers=KEY)

    assert response.status_code == 200
    assert response.json()["workers"] == [
        {"pid": os.getpid(), "generation": 1, "model_version": new_version, "error": None}
    ]
    assert WorkerSync(reload_dir).read_announcement() == Announcement(generation=1, version=new_version)


def test_a_failed_reload_announces_nothing(serve: Any, models_dir: Path, tmp_path: Path) -> None:
    reload_dir = tmp_path / "reload"
    client = serve(models_dir, reload_dir=reload_dir)
    broken = build_bundle(models_dir, "logistic_regression", seed=6)
    (broken / "model.joblib").write_bytes(b"not a model")

    assert client.post("/admin/reload", headers=KEY).status_code == 409
    assert WorkerSync(reload_dir).read_announcement() is None


def test_a_broken_announced_bundle_is_reported_with_its_real_location(
    serve: Any, models_dir: Path, tmp_path: Path
) -> None:
    reload_dir = tmp_path / "reload"
    client = serve(models_dir, reload_dir=reload_dir, reload_poll_seconds=0.05)
    old_version = client.get("/ready").json()["model_version"]
    broken = build_bundle(models_dir, "logistic_regression", seed=7, make_current=False)
    (broken / "model.joblib").unlink()

    WorkerSync(reload_dir, pid=os.getppid()).announce(broken.name)
    report = wait_for_report(reload_dir, 1)

    assert report.error == f"model.joblib is listed in the manifest but missing from {broken}"
    assert client.get("/ready").json()["model_version"] == old_version
