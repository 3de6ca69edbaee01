"""Metric exposition, HTTP metrics by route template, model gauges, histograms, and the disabled monitor."""

from __future__ import annotations

import asyncio
import inspect
import math

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.monitoring import Monitor, NullMonitor, create_monitor
from app.monitoring.events import PredictionEvent
from app.monitoring.metrics import LATENCY_BUCKETS, SCORE_BUCKETS, Metrics, bucket_counts, observe_many
from app.monitoring.monitor import LOOP_DRAIN_GRACE_SECONDS, LOOP_DRAIN_MAX_RECORDS, LOOP_DRAIN_RECORDS
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


def test_http_metrics_use_route_templates(client: TestClient, monitor: Monitor):
    for customer in ("42", "43", "7590-VHVEG"):
        assert client.get(f"/customers/{customer}").status_code == 200
    assert client.get("/no/such/path").status_code == 404
    assert client.post("/customers/1").status_code == 405
    text = monitor.metrics.exposition().decode()
    route = "/customers/{customer_id}"
    assert metric_value(text, "churn_http_requests_total", route=route, method="GET", status="200") == 3
    assert metric_value(text, "churn_http_request_duration_seconds_count", route=route, method="GET") == 3
    assert metric_value(text, "churn_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert metric_value(text, "churn_http_requests_total", route=route, method="POST", status="405") == 1
    assert "7590-VHVEG" not in text and "/no/such/path" not in text
    assert metric_value(text, "churn_http_requests_in_flight") == 0


def test_in_flight_counts_the_running_request_and_errors_count_as_500(settings, monitor, manifest):
    app = build_app(settings, monitor, manifest)

    @app.get("/inside")
    def inside() -> dict[str, float | None]:
        return {"in_flight": metric_value(monitor.metrics.exposition().decode(), "churn_http_requests_in_flight")}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("handler failure")

    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/inside").json() == {"in_flight": 1.0}
        assert client.get("/boom").status_code == 500
    text = monitor.metrics.exposition().decode()
    assert metric_value(text, "churn_http_requests_total", route="/boom", method="GET", status="500") == 1
    assert metric_value(text, "churn_http_requests_in_flight") == 0


def test_model_gauges_follow_loads_reloads_and_outages(settings):
    monitor = Monitor(settings)
    first, second = make_manifest(), make_manifest(version="20261124T000000Z-bbbbbb", seed=1)
    assert metric_value(monitor.metrics.exposition().decode(), "churn_model_ready") == 0
    monitor.model_loaded(first)
    monitor.reload_attempted(False)
    monitor.model_loaded(second)
    monitor.reload_attempted(True)
    text = monitor.metrics.exposition().decode()
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
    assert metric_value(monitor.metrics.exposition().decode(), "churn_model_ready") == 0


def test_batch_record_counts_each_record_once(settings, manifest):
    monitor = Monitor(settings)
    monitor.model_loaded(manifest)
    event = make_event(manifest, 10_000, seed=3)
    monitor.record(event)
    text = monitor.metrics.exposition().decode()
    for band in set(event.risk_bands):
        expected = event.risk_bands.count(band)
        assert metric_value(text, "churn_predictions_total", risk_band=band, model_version=manifest.version) == expected
    assert metric_value(text, "churn_predicted_churn_total") == int(event.decisions.sum())
    assert metric_value(text, "churn_prediction_score_count") == 10_000
    assert metric_value(text, "churn_prediction_score_sum") == pytest.approx(float(event.scores.sum()))
    assert metric_value(text, "churn_prediction_stage_duration_seconds_count", stage="inference") == 1
    monitor.log.publish_queue_size()  # what the writer thread does on each wake-up
    assert metric_value(monitor.metrics.exposition().decode(), "churn_prediction_log_queue_size") == 10_000


def test_a_drain_of_singles_from_two_versions_and_a_batch_counts_every_record(settings, manifest):
    monitor = Monitor(settings)
    monitor.model_loaded(manifest)
    current = single_events(make_event(manifest, 60, seed=1))
    previous = single_events(make_event(manifest, 20, seed=2, version="v-previous"))  # answered across a reload
    batch = make_event(manifest, 500, seed=3)
    for event in current[:30] + previous + [batch] + current[30:]:
        monitor.record(event)
    text = monitor.metrics.exposition().decode()
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


def test_observe_many_equals_observing_one_by_one():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.random(5000), np.array(SCORE_BUCKETS), [0.0, 1.0, 1.5]])  # bounds are inclusive
    registry = CollectorRegistry()
    batched = Histogram("batched", "b", buckets=SCORE_BUCKETS, registry=registry)
    single = Histogram("single", "s", buckets=SCORE_BUCKETS, registry=registry)
    observe_many(batched, values)
    for value in values.tolist():
        single.observe(value)

    def samples(name: str) -> list[tuple[str, dict, float]]:
        collected = {m.name: m for m in registry.collect()}[name]
        return [(s.name.replace(name, ""), s.labels, s.value) for s in collected.samples if "created" not in s.name]

    got, expected = samples("batched"), samples("single")
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    np.testing.assert_allclose([g[2] for g in got], [e[2] for e in expected], rtol=1e-12)


def test_deferred_updates_expose_exactly_what_direct_updates_do():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.exponential(0.002, 3000), np.array(LATENCY_BUCKETS), [0.0, 50.0, float("inf")]])
    metrics = Metrics()
    direct_registry = CollectorRegistry()
    direct_histogram = Histogram("h", "h", ["route"], buckets=LATENCY_BUCKETS, registry=direct_registry)
    direct_counter = Counter("c", "c", ["route"], registry=direct_registry)
    deferred_registry = CollectorRegistry()
    histogram = Histogram("h", "h", ["route"], buckets=LATENCY_BUCKETS, registry=deferred_registry)
    counter = Counter("c", "c", ["route"], registry=deferred_registry)
    deferred_histogram = metrics.deferred_histogram(histogram.labels("/x"))
    deferred_counter = metrics.deferred_counter(counter.labels("/x"))
    for position, value in enumerate(values.tolist()):
        direct_histogram.labels("/x").observe(value)
        direct_counter.labels("/x").inc(2)
        deferred_histogram.observe(value)
        deferred_counter.inc(2)
        if position % 1000 == 0:
            metrics.flush_pending()  # several flushes add up
    direct_histogram.labels("/x").observe(float("nan"))
    deferred_histogram.observe(float("nan"))
    # Many at once, infinities among them.
    for amounts in ([0.001, 0.2, 7.0], [float("inf"), 0.003], [float("-inf"), 0.5]):
        for amount in amounts:
            direct_histogram.labels("/x").observe(amount)
        deferred_histogram.observe_many(np.array(amounts))
    assert generate_latest(deferred_registry) != generate_latest(direct_registry)  # not applied yet
    metrics.flush_pending()

    def exposition(registry: CollectorRegistry) -> list[str]:
        return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]

    assert exposition(deferred_registry) == exposition(direct_registry)
    metrics.flush_pending()  # nothing pending: nothing changes
    assert exposition(deferred_registry) == exposition(direct_registry)
    with pytest.raises(ValueError):
        deferred_counter.inc(-1)


def test_bucket_counts_take_their_bounds_as_a_list_or_an_array():
    amounts = np.array([0.0005, 0.001, 0.3, float("nan"), float("inf"), 12.0, -1.0])
    from_list, list_sum = bucket_counts(LATENCY_BUCKETS, amounts)
    from_array, array_sum = bucket_counts(np.asarray(LATENCY_BUCKETS, dtype=np.float64), amounts)
    np.testing.assert_array_equal(from_list, from_array)
    assert from_list.sum() == len(amounts) and from_list[-1] == 3  # 12 s, +Inf and NaN: the last (+Inf) bucket
    assert list_sum == array_sum == float("inf")  # the sum leaves NaN out
    assert bucket_counts(LATENCY_BUCKETS, np.array([0.1, float("nan")]))[1] == pytest.approx(0.1)
    assert math.isnan(bucket_counts(LATENCY_BUCKETS, np.array([float("inf"), float("-inf")]))[1])


def test_a_scrape_applies_this_workers_pending_updates(settings, manifest):
    monitor = Monitor(settings)
    monitor.model_loaded(manifest)
    monitor.record(make_event(manifest, 1))
    text = monitor.metrics.exposition().decode()
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
    monitor.record(bad)  # queued; the problems surface when it is drained and binned, and are contained there
    monitor.update_drift()
    text = monitor.metrics.exposition().decode()
    assert metric_value(text, "churn_monitoring_errors_total", where="drift") == 1
    assert metric_value(text, "churn_predicted_churn_total", model_version=manifest.version) == 1


def test_monitors_in_one_process_do_not_share_metrics(tmp_path, manifest):
    first, second = Monitor(make_settings(tmp_path / "a")), Monitor(make_settings(tmp_path / "b"))
    first.model_loaded(manifest)
    first.record(make_event(manifest, 3))
    assert metric_value(first.metrics.exposition().decode(), "churn_prediction_score_count") == 3
    assert metric_value(second.metrics.exposition().decode(), "churn_prediction_score_count") == 0


# ---- disabled monitoring -------------------------------------------------------------------------------
SERVICE_INTERFACE = [
    "start",
    "stop",
    "model_loaded",
    "model_unavailable",
    "reload_attempted",
    "record",
]


def test_null_monitor_has_the_same_interface(tmp_path):
    disabled = create_monitor(make_settings(tmp_path, monitoring_enabled=False))
    assert isinstance(disabled, NullMonitor)
    for name in SERVICE_INTERFACE:
        assert inspect.signature(getattr(NullMonitor, name)) == inspect.signature(getattr(Monitor, name)), name
        assert inspect.iscoroutinefunction(getattr(NullMonitor, name)) == inspect.iscoroutinefunction(
            getattr(Monitor, name)
        )
    assert disabled.middleware_class is not None and disabled.enabled is False


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
    monitor.flush_metrics()

    text = monitor.metrics.exposition().decode()
    assert metric_value(text, "churn_feature_warnings_total", feature="tenure", kind="out_of_range") == 2
    # Every numeric feature has the series from the start, so a rate over it is 0 rather than absent.
    assert metric_value(text, "churn_feature_warnings_total", feature="monthly_charges", kind="out_of_range") == 0
    monitor.drift.close()


# ---- where recorded predictions are drained ---------------------------------------------------------------
def _singles(manifest, count: int) -> list[PredictionEvent]:
    """``count`` predictions as /predict hands them over: one event each, with its row of values."""
    return single_events(make_event(manifest, count, seed=count))


def _score_count(monitor: Monitor) -> float | None:
    samples = monitor.metrics.score.collect()[0].samples
    return next((sample.value for sample in samples if sample.name == "churn_prediction_score_count"), None)


def test_single_records_are_drained_on_the_event_loop_in_small_steps(tmp_path, manifest):
    # The log thread would only wake after an hour: whatever is drained here was drained by the loop.
    monitor = Monitor(make_settings(tmp_path, prediction_log_flush_seconds=3600.0))
    monitor.model_loaded(manifest)
    events = _singles(manifest, LOOP_DRAIN_RECORDS)

    async def record_all() -> tuple[int, int]:
        for event in events[:-1]:
            monitor.record(event)
        await asyncio.sleep(0)
        waiting_before = monitor._inbox_records  # below the step size: nothing drained yet
        monitor.record(events[-1])
        await asyncio.sleep(0)  # the drain runs once the loop has finished what was queued before it
        return waiting_before, monitor._inbox_records

    waiting_before, waiting_after = asyncio.run(record_all())
    assert (waiting_before, waiting_after) == (LOOP_DRAIN_RECORDS - 1, 0)
    assert monitor.log._pending_records == LOOP_DRAIN_RECORDS  # handed on to the log queue
    assert monitor.drift is not None and not monitor.drift._pending  # and binned
    monitor.metrics.flush_pending()  # counted: the deferred updates the drain made reach the metric
    assert _score_count(monitor) == LOOP_DRAIN_RECORDS


def test_batches_and_records_from_other_threads_are_left_to_the_background(tmp_path, manifest):
    monitor = Monitor(make_settings(tmp_path, prediction_log_flush_seconds=3600.0))
    monitor.model_loaded(manifest)

    async def record_batch() -> int:
        monitor.record(make_event(manifest, LOOP_DRAIN_MAX_RECORDS + 1, seed=1))
        await asyncio.sleep(0)
        return len(monitor._inbox)

    assert asyncio.run(record_batch()) == 1  # the loop never stalls on a batch's drain
    assert monitor.log._wake.is_set()  # the log thread was asked to drain it
    monitor.drain()
    monitor.log._wake.clear()
    for event in _singles(manifest, LOOP_DRAIN_RECORDS):  # no event loop in this thread
        monitor.record(event)
    assert monitor._inbox_records == LOOP_DRAIN_RECORDS and monitor.log._wake.is_set()
    assert monitor.drain() == LOOP_DRAIN_RECORDS


def test_a_drain_on_the_loop_never_waits_for_another_threads_drain(tmp_path, manifest):
    monitor = Monitor(make_settings(tmp_path, prediction_log_flush_seconds=3600.0))
    monitor.model_loaded(manifest)
    events = _singles(manifest, LOOP_DRAIN_RECORDS)

    async def record_while_draining_elsewhere() -> int:
        with monitor._drain_lock:  # as if the log thread were draining right now
            for event in events:
                monitor.record(event)
            await asyncio.sleep(0)  # the loop's drain step finds the lock taken and returns
            return monitor._inbox_records

    assert asyncio.run(record_while_draining_elsewhere()) == LOOP_DRAIN_RECORDS
    # Not handed to the log's thread, which would then drain in competition with the loop: the
    # step the next record schedules takes them.
    assert not monitor.log._wake.is_set()

    async def record_one_more() -> int:
        monitor.record(single_events(make_event(manifest, 1, seed=7))[0])
        await asyncio.sleep(0)
        return monitor._inbox_records

    assert asyncio.run(record_one_more()) == 0


def test_the_log_thread_drains_only_what_the_loop_will_not_drain_soon(tmp_path, manifest):
    now = [1_800_000_000.0]
    monitor = Monitor(make_settings(tmp_path, prediction_log_flush_seconds=3600.0), clock=lambda: now[0])
    monitor.model_loaded(manifest)
    assert monitor.drain_if_due() == 0  # nothing waiting
    for seed in range(3):
        monitor.record(make_event(manifest, 1, seed=seed, timestamp=now[0]))
    assert monitor.drain_if_due() == 0  # just recorded: the loop's next step takes them under traffic
    now[0] += LOOP_DRAIN_GRACE_SECONDS + 0.001
    assert monitor.drain_if_due() == 3  # left waiting (light traffic): drained in the background
    monitor.record(make_event(manifest, LOOP_DRAIN_MAX_RECORDS + 1, seed=5, timestamp=now[0]))
    assert monitor.drain_if_due() == LOOP_DRAIN_MAX_RECORDS + 1  # a batch is the background's at once
    for seed in range(LOOP_DRAIN_RECORDS):  # a step's worth recorded off the event loop: no loop to drain it
        monitor.record(make_event(manifest, 1, seed=seed, timestamp=now[0]))
    assert monitor.drain_if_due() == LOOP_DRAIN_RECORDS
