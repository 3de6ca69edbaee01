"""Estimated performance, live: gauges after traffic, the report section, the reference, reloads."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.monitoring import Monitor
from bundle.performance_estimate import ScoreBins, estimate_performance
from tests.app.monitoring.monitoring_helpers import (
    API_KEY,
    build_app,
    make_event,
    make_manifest,
    make_settings,
    metric_value,
)

AUTH = {"X-API-Key": API_KEY}
REFERENCE = {
    "estimated": {"roc_auc": 0.81, "precision": 0.6, "recall": 0.55, "f1": 0.57, "expected_churn_rate": 0.3},
    "realized": {"roc_auc": 0.83, "precision": 0.62, "recall": 0.5, "f1": None, "churn_rate": 0.29},
    "threshold": 0.5,
}


def manifest_with_reference(version: str = "20261123T000000Z-aaaaaa"):
    return dataclasses.replace(make_manifest(version), performance_reference=REFERENCE)


def test_traffic_exports_the_estimate_of_the_window_with_its_band_and_reference(tmp_path):
    monitor = Monitor(make_settings(tmp_path))
    manifest = manifest_with_reference()
    events = [make_event(manifest, 400, seed=seed) for seed in range(3)]
    with TestClient(build_app(monitor.settings, monitor, manifest)) as client:
        for event in events:
            monitor.record(event)
        snapshot = monitor.update_drift()
        text = client.get("/metrics").text
    scores = np.concatenate([event.scores for event in events])
    expected = estimate_performance(ScoreBins.for_threshold(manifest.threshold).summarise(scores))
    assert snapshot.estimate == expected
    version = manifest.version
    assert metric_value(text, "churn_estimated_roc_auc", model_version=version) == pytest.approx(expected.roc_auc.value)
    for metric in ("roc_auc", "precision", "recall", "f1"):
        point = metric_value(text, f"churn_estimated_{metric}", model_version=version)
        lower = metric_value(
            text, "churn_estimated_performance_bound", model_version=version, metric=metric, bound="lower"
        )
        upper = metric_value(
            text, "churn_estimated_performance_bound", model_version=version, metric=metric, bound="upper"
        )
        assert lower <= point <= upper, metric
        assert upper - lower < 0.2, metric
    reference = {"model_version": version, "metric": "roc_auc"}
    assert metric_value(text, "churn_reference_performance", source="estimated", **reference) == 0.81
    assert metric_value(text, "churn_reference_performance", source="realized", **reference) == 0.83
    # Undefined reference figures read NaN, never a misleading 0.
    f1 = metric_value(text, "churn_reference_performance", model_version=version, metric="f1", source="realized")
    assert f1 != f1


def test_report_shows_the_estimate_beside_realized_performance(tmp_path):
    monitor = Monitor(make_settings(tmp_path))
    manifest = manifest_with_reference()
    with TestClient(build_app(monitor.settings, monitor, manifest)) as client:
        monitor.record(make_event(manifest, 500, seed=4))
        monitor.update_drift()
        report = client.get("/monitoring/report", headers=AUTH).json()
    assert "realized_performance" in report
    section = report["estimated_performance"]
    window = section["drift_window"]
    assert window["model_version"] == manifest.version
    assert window["predictions"] == 500
    assert window["window_seconds"] == monitor.settings.drift_window_seconds
    assert window["roc_auc"]["lower"] <= window["roc_auc"]["value"] <= window["roc_auc"]["upper"]
    assert section["reference"] == REFERENCE
    assert "estimate" not in report["drift"]


def test_a_window_without_traffic_has_no_estimate_and_a_bundle_without_reference_reads_nan(tmp_path):
    monitor = Monitor(make_settings(tmp_path))
    manifest = make_manifest()  # trained before the reference existed
    with TestClient(build_app(monitor.settings, monitor, manifest)) as client:
        monitor.update_drift()
        text = client.get("/metrics").text
        report = client.get("/monitoring/report", headers=AUTH).json()
    auc = metric_value(text, "churn_estimated_roc_auc", model_version=manifest.version)
    assert auc != auc  # NaN: nothing to estimate yet
    reference = metric_value(
        text, "churn_reference_performance", model_version=manifest.version, metric="roc_auc", source="estimated"
    )
    assert reference != reference
    assert report["estimated_performance"]["drift_window"]["roc_auc"]["value"] is None
    assert report["estimated_performance"]["reference"] is None


def test_a_reload_retires_the_previous_versions_estimate(tmp_path):
    monitor = Monitor(make_settings(tmp_path))
    first = manifest_with_reference("20261123T000000Z-aaaaaa")
    second = manifest_with_reference("20261124T000000Z-bbbbbb")
    with TestClient(build_app(monitor.settings, monitor, first)) as client:
        monitor.record(make_event(first, 300, seed=1))
        monitor.update_drift()
        monitor.model_loaded(second)
        monitor.record(make_event(second, 300, seed=2))
        monitor.update_drift()
        text = client.get("/metrics").text
    assert metric_value(text, "churn_estimated_roc_auc", model_version=first.version) is None
    assert metric_value(text, "churn_reference_performance", model_version=first.version, metric="f1") is None
    assert metric_value(text, "churn_estimated_roc_auc", model_version=second.version) is not None


def test_metadata_shows_the_bundles_reference_and_an_old_bundle_shows_none(serve, bundle_builder, tmp_path):
    models_dir = tmp_path / "models"
    bundle_dir = bundle_builder(models_dir, "logistic_regression")
    assert serve(models_dir).get("/metadata").json()["performance_reference"] == {}
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(manifest | {"performance_reference": REFERENCE}))
    assert serve(models_dir).get("/metadata").json()["performance_reference"] == REFERENCE
