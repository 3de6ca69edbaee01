"""The prediction log on a real PostgreSQL: values the columns refuse, an outage and its replay.

Uses a throwaway server (initdb + pg_ctl in a temp dir) when the PostgreSQL binaries are installed;
skipped otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from app.monitoring import Monitor
from app.monitoring.log_store import CUSTOMER_ID_WIDTH, predictions_table
from bench import throwaway_postgres
from tests.app.monitoring.monitoring_helpers import make_event, make_settings, metric_value, running

pytestmark = pytest.mark.skipif(not throwaway_postgres.available(), reason="PostgreSQL server binaries not installed")


@pytest.fixture(scope="module")
def postgres() -> Iterator[throwaway_postgres.ThrowawayPostgres]:
    server = throwaway_postgres.ThrowawayPostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()


def logged(monitor: Monitor) -> dict[str, str | None]:
    with monitor.log.connection() as connection:
        p = predictions_table.c
        return {pid: customer for pid, customer in connection.execute(select(p.prediction_id, p.customer_id))}


def counter(monitor: Monitor, name: str, **labels: str) -> float | None:
    return metric_value(monitor.metrics.exposition().decode(), name, **labels)


def test_a_value_too_long_or_refused_costs_no_other_row(postgres, tmp_path, manifest):
    monitor = Monitor(make_settings(tmp_path, database_url=postgres.url, prediction_log_flush_seconds=3600))
    customers = [f"C-{i}" for i in range(2000)]
    customers[5] = "x" * 300  # longer than the column: cut to fit
    customers[9] = "nul\x00byte"  # PostgreSQL text refuses NUL: that row alone is dropped
    event = make_event(manifest, 2000, seed=1, customer_ids=customers)
    with running(monitor):
        monitor.model_loaded(manifest)
        monitor.record(event)
        assert monitor.write_log() == 1999
        rows = logged(monitor)
        report = monitor.daily_report()
    assert set(rows) == set(event.prediction_ids) - {event.prediction_ids[9]}
    assert rows[event.prediction_ids[5]] == "x" * CUSTOMER_ID_WIDTH
    assert counter(monitor, "churn_prediction_log_dropped_total", reason="invalid") == 1
    assert counter(monitor, "churn_prediction_log_truncated_total") == 1
    assert report["predictions"] == 1999


def test_a_restart_of_the_database_loses_nothing(postgres, tmp_path, manifest):
    monitor = Monitor(make_settings(tmp_path, database_url=postgres.url, prediction_log_flush_seconds=3600))
    events = [make_event(manifest, 100, seed=seed) for seed in range(4)]
    with running(monitor):
        monitor.model_loaded(manifest)
        monitor.record(events[0])
        assert monitor.write_log() == 100
        postgres.stop()
        try:
            monitor.record(events[1])
            monitor.record(events[2])
            assert monitor.write_log() == 0
        finally:
            postgres.start()
        monitor.record(events[3])
        assert monitor.write_log() == 100
        assert monitor.log.replay() == 200
        assert set(logged(monitor)) >= {pid for event in events for pid in event.prediction_ids}
    assert counter(monitor, "churn_prediction_log_written_total") == 400
    assert (
        sum(counter(monitor, "churn_prediction_log_dropped_total", reason=r) for r in ("write_error", "invalid")) == 0
    )
