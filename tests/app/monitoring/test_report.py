"""The daily report: read from the hourly aggregates (not the raw log), exact counts, behind the API key."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, event

from app.monitoring import Monitor
from app.monitoring.log_store import predictions_table
from app.monitoring.spool import Spool
from tests.app.monitoring.monitoring_helpers import API_KEY, build_app, make_event, make_manifest, make_settings

AUTH = {"X-API-Key": API_KEY}
DAY = datetime(2026, 3, 14, tzinfo=UTC)


def slow_monitor(tmp_path, **overrides) -> Monitor:
    values = {"prediction_log_flush_seconds": 3600, "prediction_log_retention_days": 3650}
    return Monitor(make_settings(tmp_path, **(values | overrides)))


def test_the_report_reads_aggregates_not_the_raw_log(tmp_path):
    monitor = slow_monitor(tmp_path)
    manifest = make_manifest()
    events = [make_event(manifest, 300, seed=seed, timestamp=DAY.timestamp() + 3600 * seed) for seed in range(5)]
    statements: list[str] = []
    with TestClient(build_app(monitor.settings, monitor, manifest)) as client:
        for item in events:
            monitor.record(item)
        monitor.write_log()
        before = client.get("/monitoring/report", params={"date": "2026-03-14"}, headers=AUTH).json()
        with monitor.log.connection() as connection:  # the raw rows go; the day's figures stay
            connection.execute(delete(predictions_table))
        event.listen(monitor.log.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        after = client.get("/monitoring/report", params={"date": "2026-03-14"}, headers=AUTH).json()
    assert before["predictions"] == after["predictions"] == 1500
    assert {k: v for k, v in before.items() if k != "generated_at"} == {
        k: v for k, v in after.items() if k != "generated_at"
    }
    reads = [s for s in statements if s.lstrip().startswith("SELECT")]
    raw_reads = [s for s in reads if "FROM prediction_log " in s and "prediction_outcome" not in s]
    assert any("prediction_log_hourly" in s for s in reads)
    assert raw_reads == []  # only the labelled predictions of the day are joined from the outcomes


def test_replayed_rows_already_logged_are_not_counted_twice(tmp_path):
    monitor = slow_monitor(tmp_path)
    manifest = make_manifest()
    item = make_event(manifest, 20, seed=1, timestamp=DAY.timestamp())
    with TestClient(build_app(monitor.settings, monitor, manifest)) as client:
        monitor.record(item)
        monitor.write_log()
        with monitor.log.connection() as connection:
            rows = [tuple(row) for row in connection.execute(predictions_table.select())]
        spool: Spool = monitor.log.spool
        spool.write(rows[:5] + rows[:5]).release()  # spooled by a writer killed after its commit
        assert monitor.log.replay() == 0
        report = client.get("/monitoring/report", params={"date": "2026-03-14"}, headers=AUTH).json()
    assert report["predictions"] == 20
    assert sum(version["predictions"] for version in report["model_versions"]) == 20


def test_the_report_asks_for_the_key_when_one_is_set(tmp_path):
    monitor = slow_monitor(tmp_path)
    with TestClient(build_app(monitor.settings, monitor, make_manifest())) as client:
        assert client.get("/monitoring/report").status_code == 401
        assert client.get("/monitoring/report", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/monitoring/report", headers=AUTH).status_code == 200


def test_the_report_is_open_on_a_server_without_a_key(tmp_path):
    monitor = slow_monitor(tmp_path, api_key=None)
    with TestClient(build_app(monitor.settings, monitor, make_manifest())) as client:
        assert client.get("/monitoring/report").status_code == 200


def test_aggregates_rebuilt_from_the_log_give_the_same_report(tmp_path):
    from app.monitoring.log_store import hourly_table, latency_table
    from app.monitoring.rebuild_aggregates import rebuild

    monitor = slow_monitor(tmp_path)
    manifest = make_manifest()
    with TestClient(build_app(monitor.settings, monitor, manifest)) as client:
        for seed in range(3):
            monitor.record(make_event(manifest, 50, seed=seed, timestamp=DAY.timestamp() + 5000 * seed))
        monitor.write_log()
        before = client.get("/monitoring/report", params={"date": "2026-03-14"}, headers=AUTH).json()
        with monitor.log.connection() as connection:  # a log written before the aggregates existed
            connection.execute(delete(hourly_table))
            connection.execute(delete(latency_table))
        assert rebuild(monitor.log.engine, chunk_rows=40) == 150
        after = client.get("/monitoring/report", params={"date": "2026-03-14"}, headers=AUTH).json()
    assert before["predictions"] == 150
    latency_before, latency_after = before.pop("latency_seconds"), after.pop("latency_seconds")
    assert {k: v for k, v in before.items() if k != "generated_at"} == {
        k: v for k, v in after.items() if k != "generated_at"
    }
    assert latency_after["batch"]["predictions"] == latency_before["batch"]["predictions"] == 150
    assert latency_after["batch"]["p50"] == pytest.approx(latency_before["batch"]["p50"])  # summed in another order
