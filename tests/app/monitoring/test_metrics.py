"""Metric exposition through the monitor: every metric, model gauges, prediction counts, and the disabled monitor."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.monitoring import Monitor, NullMonitor, create_monitor
from app.monitoring.events import PredictionEvent
from app.monitoring.routes import DISABLED_DETAIL
from tests.app.monitoring.monitoring_helpers import (
    API_KEY,
    build_app,
    make_event,
    make_manifest,
    make_settings,
    metric_value,
    single_events,
)

EXPECTED_SAMPLES = [
    "churn_http_requests_total",
    "churn_http_request_duration_seconds_bucket",
    "churn_http_requests_in_flight",
    "churn_predictions_total",
    "churn_predicted_churn_total",
    "churn_prediction_stage_duration_seconds_bucket",
    "churn_prediction_score_bucket",
    "churn_model_info",
    "churn_model_ready",
    "churn_model_reloads_total",
    "churn_feature_warnings_total",
    "churn_feature_drift_psi",
    "churn_feature_drift_js",
    "churn_feature_drift_threshold",
    "churn_feature_drifting",
    "churn_score_drift_psi",
    "churn_score_drift_js",
    "churn_score_drifting",
    "churn_drift_window_predictions",
    "churn_predicted_churn_rate",
    "churn_reference_predicted_churn_rate",
    "churn_prediction_log_written_total",
    "churn_prediction_log_dropped_total",
    "churn_prediction_log_errors_total",
    "churn_prediction_log_queue_size",
    "churn_feedback_outcomes_total",
    "churn_realized_roc_auc",
    "churn_realized_precision",
    "churn_realized_recall",
    "churn_realized_f1",
    "churn_realized_labelled_predictions",
    "churn_worker_resident_memory_bytes",
]


def sample_names(exposition: str) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}


def test_every_metric_is_exposed_after_traffic(client: TestClient, monitor: Monitor):
    for seed in range(5):
        assert client.post("/predict", params={"seed": seed}).status_code == 200
    assert client.post("/predict", params={"seed": 7, "n": 500}).status_code == 200
    monitor.reload_attempted(True)
    response = client.post("/feedback", json={"customer_id": "C-7-0", "churned": True}, headers={"X-API-Key": API_KEY})
    assert response.status_code == 200
    monitor.update_drift()
    scrape = client.get("/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    missing = [name for name in EXPECTED_SAMPLES if name not in sample_names(scrape.text)]
    assert missing == []
    text = scrape.text
    assert metric_value(text, "churn_predicted_churn_rate") == pytest.approx(
        metric_value(text, "churn_predicted_churn_total", model_version=make_manifest().version) / 505
    )
    assert metric_value(text, "churn_prediction_log_written_total") == 505
    assert metric_value(text, "churn_feedback_outcomes_total", status="matched") == 1
    assert metric_value(text, "churn_feature_warnings_total", feature="monthly_charges", kind="imputed") > 0


def test_model_gauges_follow_loads_reloads_and_outages(settings):
    monitor = Monitor(settings)
    first, second = make_manifest(), make_manifest(version="20261124T000000Z-bbbbbb", seed=1)
    assert metric_value(monitor.exposition().decode(), "churn_model_ready") == 0
    monitor.model_loaded(first)
    monitor.reload_attempted(False)
    monitor.model_loaded(second)
    monitor.reload_attempted(True)
    text = monitor.exposition().decode()
    info = [
        (s.labels, s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "churn_model_info"
    ]
    assert info == [
        (
            {
                "version": second.version,
                "family": "logistic_regression",
                "framework": "scikit-learn",
                "trained_at": second.created_at,
            },
            1.0,
        )
    ]
    assert metric_value(text, "churn_model_ready") == 1
    assert metric_value(text, "churn_model_reloads_total", outcome="success") == 1
    assert metric_value(text, "churn_model_reloads_total", outcome="failure") == 1
    monitor.model_unavailable("bundle checksum mismatch")
    assert metric_value(monitor.exposition().decode(), "churn_model_ready") == 0


def test_batch_record_counts_each_record_once(settings, manifest):
    monitor = Monitor(settings)
    monitor.model_loaded(manifest)
    event = make_event(manifest, 10_000, seed=3)
    monitor.record(event)
    text = monitor.exposition().decode()
    for band in set(event.risk_bands):
        expected = event.risk_bands.count(band)
        assert metric_value(text, "churn_predictions_total", risk_band=band, model_version=manifest.version) == expected
    assert metric_value(text, "churn_predicted_churn_total") == int(event.decisions.sum())
    assert metric_value(text, "churn_prediction_score_count") == 10_000
    assert metric_value(text, "churn_prediction_score_sum") == pytest.approx(float(event.scores.sum()))
    assert metric_value(text, "churn_prediction_stage_duration_seconds_count", stage="inference") == 1
    assert metric_value(text, "churn_prediction_log_queue_size") == 10_000  # counted, not yet written
    assert monitor.write_log() == 0  # not started: nothing can write them, so they are dropped and counted
    text = monitor.exposition().decode()
    assert metric_value(text, "churn_prediction_log_queue_size") == 0
    assert metric_value(text, "churn_prediction_log_dropped_total", reason="write_error") == 10_000


def test_singles_from_two_versions_and_a_batch_count_every_record(settings, manifest):
    monitor = Monitor(settings)
    monitor.model_loaded(manifest)
    current = single_events(make_event(manifest, 60, seed=1))
    previous = single_events(make_event(manifest, 20, seed=2, version="v-previous"))  # answered across a reload
    batch = make_event(manifest, 500, seed=3)
    for event in current[:30] + previous + [batch] + current[30:]:
        monitor.record(event)
    text = monitor.exposition().decode()
    for version, events in [(manifest.version, [*current, batch]), ("v-previous", previous)]:
        bands = [band for event in events for band in event.risk_bands]
        for band in set(bands):
            counted = metric_value(text, "churn_predictions_total", risk_band=band, model_version=version)
            assert counted == bands.count(band)
        churned = sum(int(event.decisions.sum()) for event in events)
        assert metric_value(text, "churn_predicted_churn_total", model_version=version) == churned
    everything = [*current, *previous, batch]
    assert metric_value(text, "churn_prediction_score_count") == 580
    assert metric_value(text, "churn_prediction_score_sum") == pytest.approx(
        sum(float(e.scores.sum()) for e in everything)
    )
    assert metric_value(text, "churn_prediction_stage_duration_seconds_count", stage="inference") == 81
    warnings = sum(1 for e in everything for _, feature in e.unseen if feature == "contract")
    counted = metric_value(text, "churn_feature_warnings_total", feature="contract", kind="unseen_category")
    assert counted == warnings
    # Drift counts the serving version's records only: the other version has its own reference.
    assert monitor.update_drift().window_predictions == 560


def test_a_scrape_applies_this_workers_pending_updates(settings, manifest):
    monitor = Monitor(settings)
    monitor.model_loaded(manifest)
    monitor.record(make_event(manifest, 1))
    text = monitor.exposition().decode()
    assert metric_value(text, "churn_prediction_score_count") == 1
    assert (
        sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "churn_predictions_total"
        )
        == 1
    )


def test_record_never_raises_on_a_malformed_event(settings, manifest):
    monitor = Monitor(settings)
    monitor.model_loaded(manifest)
    bad = PredictionEvent(
        timestamp=0.0,
        model_version=manifest.version,
        prediction_ids=["x"],
        customer_ids=[None],
        columns={"tenure": [["not", "a", "number"]]},
        scores=np.array([0.5]),
        decisions=np.array([True]),
        risk_bands=[],  # inconsistent with one prediction id
    )
    monitor.record(bad)  # queued; the problems surface in the background, and are contained there
    monitor.update_drift()
    text = monitor.exposition().decode()
    assert metric_value(text, "churn_monitoring_errors_total", where="drift") == 1
    assert metric_value(text, "churn_predicted_churn_total", model_version=manifest.version) == 1


def test_monitors_in_one_process_do_not_share_metrics(tmp_path, manifest):
    first, second = Monitor(make_settings(tmp_path / "a")), Monitor(make_settings(tmp_path / "b"))
    first.model_loaded(manifest)
    first.record(make_event(manifest, 3))
    assert metric_value(first.exposition().decode(), "churn_prediction_score_count") == 3
    assert metric_value(second.exposition().decode(), "churn_prediction_score_count") == 0


# ---- disabled monitoring -------------------------------------------------------------------------------
SERVICE_INTERFACE = [
    "start",
    "stop",
    "model_loaded",
    "model_unavailable",
    "reload_attempted",
    "record",
    "install",
]


def test_null_monitor_has_the_same_interface(tmp_path):
    disabled = create_monitor(make_settings(tmp_path, monitoring_enabled=False))
    assert isinstance(disabled, NullMonitor)
    for name in SERVICE_INTERFACE:
        assert inspect.signature(getattr(NullMonitor, name)) == inspect.signature(getattr(Monitor, name)), name
        assert inspect.iscoroutinefunction(getattr(NullMonitor, name)) == inspect.iscoroutinefunction(
            getattr(Monitor, name)
        )
    assert disabled.enabled is False


def test_disabled_monitor_answers_404_with_the_reason_and_passes_requests_through(tmp_path):
    settings = make_settings(tmp_path, monitoring_enabled=False)
    disabled = create_monitor(settings)
    manifest = make_manifest()
    with TestClient(build_app(settings, disabled, manifest)) as client:
        assert client.post("/predict").status_code == 200
        assert client.get("/customers/1").json() == {"customer_id": "1"}
        for method, path in (("GET", "/metrics"), ("POST", "/feedback"), ("GET", "/monitoring/report")):
            response = client.request(method, path, headers={"X-API-Key": API_KEY})
            assert response.status_code == 404
            assert response.json() == {"detail": DISABLED_DETAIL}
    assert not (tmp_path / "predictions.sqlite3").exists()  # nothing was logged


def test_enabled_and_disabled_routers_expose_the_same_paths(tmp_path):
    enabled = create_monitor(make_settings(tmp_path / "on"))
    disabled = create_monitor(make_settings(tmp_path / "off", monitoring_enabled=False))
    paths = lambda monitor: {(route.path, tuple(sorted(route.methods))) for route in monitor.router.routes}  # noqa: E731
    assert paths(enabled) == paths(disabled)


def test_openapi_documents_the_monitoring_answers_on_and_off(tmp_path):
    from app.main import create_app

    documented = {}
    for enabled in (True, False):
        paths = create_app(make_settings(tmp_path, monitoring_enabled=enabled)).openapi()["paths"]
        documented[enabled] = {
            (path, method): set(paths[path][method]["responses"])
            for path, method in (("/metrics", "get"), ("/feedback", "post"), ("/monitoring/report", "get"))
        }
    assert documented[True][("/feedback", "post")] >= {"200", "401", "403", "422", "503"}
    assert "503" in documented[True][("/monitoring/report", "get")]
    assert all("404" in statuses for statuses in documented[False].values())


def test_numbers_outside_the_training_range_are_counted_by_feature(tmp_path):
    from dataclasses import replace

    manifest = make_manifest()
    monitor = Monitor(make_settings(tmp_path))
    monitor.model_loaded(manifest)
    event = make_event(manifest, 3, seed=5)
    monitor.record(replace(event, out_of_range=[(0, "tenure"), (2, "tenure")]))
    monitor.record(make_event(manifest, 2, seed=6))
    text = monitor.exposition().decode()
    assert metric_value(text, "churn_feature_warnings_total", feature="tenure", kind="out_of_range") == 2
    # Every numeric feature has the series from the start, so a rate over it is 0 rather than absent.
    assert metric_value(text, "churn_feature_warnings_total", feature="monthly_charges", kind="out_of_range") == 0
