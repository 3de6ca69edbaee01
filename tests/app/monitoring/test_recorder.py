"""The queue between the request path and the background: order, bounds, the background thread."""

from __future__ import annotations

from app.monitoring import Monitor
from tests.app.monitoring.monitoring_helpers import (
    make_event,
    make_settings,
    metric_value,
    running,
    single_events,
    wait_until,
)


def written(monitor: Monitor) -> float | None:
    # The metrics alone, without Monitor.exposition's processing: what the background did by itself.
    return metric_value(monitor.metrics.exposition().decode(), "churn_prediction_log_written_total")


def test_the_background_thread_counts_and_logs_without_being_asked(tmp_path, manifest):
    monitor = Monitor(make_settings(tmp_path, prediction_log_flush_seconds=0.05))
    with running(monitor):
        monitor.model_loaded(manifest)
        for event in single_events(make_event(manifest, 30, seed=1)):
            monitor.record(event)
        assert wait_until(lambda: written(monitor) == 30, timeout=10.0)
    text = monitor.metrics.exposition().decode()  # no processing here: the thread did it all
    assert metric_value(text, "churn_prediction_log_written_total") == 30
    assert metric_value(text, "churn_prediction_score_count") == 30


def test_a_batch_wakes_the_background_before_its_period(tmp_path, manifest):
    monitor = Monitor(make_settings(tmp_path, prediction_log_flush_seconds=3600.0, prediction_log_batch_size=100))
    with running(monitor):
        monitor.model_loaded(manifest)
        monitor.record(make_event(manifest, 150, seed=2))
        assert wait_until(lambda: written(monitor) == 150, timeout=10.0)


def test_stop_writes_everything_recorded_before_it(tmp_path, manifest):
    monitor = Monitor(make_settings(tmp_path, prediction_log_flush_seconds=3600.0))
    with running(monitor):
        monitor.model_loaded(manifest)
        for seed in range(5):
            monitor.record(make_event(manifest, 7, seed=seed))
    assert metric_value(monitor.metrics.exposition().decode(), "churn_prediction_log_written_total") == 35


def test_recording_outside_a_request_logs_the_stages_as_latency(tmp_path, manifest):
    monitor = Monitor(make_settings(tmp_path, prediction_log_flush_seconds=3600.0))
    with running(monitor):
        monitor.model_loaded(manifest)
        event = make_event(manifest, 1, seed=3)
        monitor.record(event)
        monitor.write_log()
        report = monitor.daily_report()
    assert report["latency_seconds"]["single"]["p50"] == sum(event.stage_seconds.values())
