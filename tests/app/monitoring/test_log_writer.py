"""The log writer: outages spooled and replayed with nothing lost, bad rows isolated, losses counted and told."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sqlalchemy import select

from app.monitoring import Monitor
from app.monitoring.log_store import CUSTOMER_ID_WIDTH, predictions_table
from tests.app.monitoring.monitoring_helpers import make_event, make_settings, metric_value, running, wait_until


def log_ids(monitor: Monitor) -> set[str]:
    with monitor.log.connection() as connection:
        return set(connection.execute(select(predictions_table.c.prediction_id)).scalars())


def figures(monitor: Monitor) -> dict[str, float]:
    text = monitor.metrics.exposition().decode()
    names = ("written", "spooled", "replayed", "truncated", "spool_rows")
    values = {name: metric_value(text, f"churn_prediction_log_{name}_total") for name in names[:-1]}
    values["spool_rows"] = metric_value(text, "churn_prediction_log_spool_rows")
    for reason in ("queue_full", "write_error", "invalid", "spool_full", "spool_unreadable"):
        values[reason] = metric_value(text, "churn_prediction_log_dropped_total", reason=reason)
    return values


def outage_settings(tmp_path, **overrides):
    """The database lives in a directory that does not exist yet: unavailable until it is created."""
    values = {"database_url": f"sqlite:///{tmp_path / 'down' / 'log.sqlite3'}", "prediction_log_flush_seconds": 3600}
    return make_settings(tmp_path, **(values | overrides))


@pytest.mark.parametrize("mode", ["always", "on_failure"])
def test_an_outage_is_spooled_then_replayed_with_nothing_lost(tmp_path, manifest, caplog, mode):
    monitor = Monitor(outage_settings(tmp_path, prediction_log_spool_mode=mode))
    events = [make_event(manifest, 40, seed=seed) for seed in range(6)]
    with running(monitor), caplog.at_level(logging.WARNING, logger="app.monitoring.log_writer"):
        monitor.model_loaded(manifest)
        for event in events[:3]:  # three failed writes while the database is down
            monitor.record(event)
            assert monitor.write_log() == 0
        assert figures(monitor)["spooled"] == 120 and figures(monitor)["spool_rows"] == 120
        (tmp_path / "down").mkdir()  # the database is back
        for event in events[3:]:
            monitor.record(event)
            assert monitor.write_log() == 40
        assert monitor.log.replay() == 120
        assert log_ids(monitor) == {pid for event in events for pid in event.prediction_ids}
    result = figures(monitor)
    assert (result["written"], result["replayed"], result["spool_rows"]) == (240, 120, 0)
    assert sum(result[reason] for reason in ("queue_full", "write_error", "invalid", "spool_full")) == 0
    messages = [record.getMessage() for record in caplog.records]
    assert sum("database unavailable" in message for message in messages) == 1  # not once per failed write
    assert sum("database is back" in message for message in messages) == 1
    assert not list((tmp_path / "spool").rglob("*.rows"))


def test_a_restarted_service_replays_the_spool_of_the_previous_one(tmp_path, manifest):
    settings = outage_settings(tmp_path)
    first = Monitor(settings)
    events = [make_event(manifest, 25, seed=seed) for seed in range(4)]
    with running(first):
        first.model_loaded(manifest)
        for event in events:
            first.record(event)
    assert figures(first)["spooled"] == 100  # written at stop, while the database was still down
    (tmp_path / "down").mkdir()
    second = Monitor(make_settings(tmp_path, database_url=settings.database_url, prediction_log_flush_seconds=0.05))
    with running(second):
        assert wait_until(lambda: figures(second)["replayed"] == 100)
        assert log_ids(second) == {pid for event in events for pid in event.prediction_ids}
    assert figures(second)["spool_rows"] == 0


def test_a_row_the_database_refuses_costs_only_itself(tmp_path, manifest):
    monitor = Monitor(make_settings(tmp_path, prediction_log_flush_seconds=3600))
    event = make_event(manifest, 50, seed=1)
    event.scores[17] = np.nan  # stored as NULL by SQLite: the NOT NULL score column refuses that row alone
    with running(monitor):
        monitor.model_loaded(manifest)
        monitor.record(event)
        assert monitor.write_log() == 49
        assert log_ids(monitor) == set(event.prediction_ids) - {event.prediction_ids[17]}
    result = figures(monitor)
    assert (result["invalid"], result["written"], result["spooled"]) == (1, 49, 0)


def test_ids_longer_than_their_column_are_cut_to_fit(tmp_path, manifest):
    monitor = Monitor(make_settings(tmp_path, prediction_log_flush_seconds=3600))
    long_id = "C" * (CUSTOMER_ID_WIDTH + 44)
    event = make_event(manifest, 3, seed=2, customer_ids=["C-1", long_id, None])
    with running(monitor):
        monitor.model_loaded(manifest)
        monitor.record(event)
        assert monitor.write_log() == 3
        with monitor.log.connection() as connection:
            customers = connection.execute(select(predictions_table.c.customer_id)).scalars().all()
    assert sorted(customers, key=str) == sorted(["C-1", long_id[:CUSTOMER_ID_WIDTH], None], key=str)
    assert figures(monitor)["truncated"] == 1


def test_a_full_spool_counts_and_tells_what_it_lost(tmp_path, manifest, caplog):
    monitor = Monitor(outage_settings(tmp_path, prediction_log_spool_max_bytes=1))
    with running(monitor), caplog.at_level(logging.ERROR, logger="app.monitoring.log_writer"):
        monitor.model_loaded(manifest)
        monitor.record(make_event(manifest, 30, seed=3))
        assert monitor.write_log() == 0
    assert figures(monitor)["spool_full"] == 30
    assert any("lost" in record.getMessage() and "30" in record.getMessage() for record in caplog.records)


def test_write_ahead_leaves_nothing_behind_once_the_rows_are_logged(tmp_path, manifest):
    monitor = Monitor(make_settings(tmp_path, prediction_log_flush_seconds=3600, prediction_log_spool_mode="always"))
    with running(monitor):
        monitor.model_loaded(manifest)
        monitor.record(make_event(manifest, 10, seed=4))
        assert monitor.write_log() == 10
        spooled = [path for path in (tmp_path / "spool").rglob("*") if path.is_file() and path.suffix != ".ledger"]
        assert not spooled  # only this worker's ledger of answered and accounted counts is there
    assert figures(monitor)["spooled"] == 0


def test_without_traffic_the_replay_itself_finds_the_database_back(tmp_path, manifest, monkeypatch):
    from app.monitoring import log_writer

    monitor = Monitor(outage_settings(tmp_path))
    event = make_event(manifest, 12, seed=5)
    with running(monitor):
        monitor.model_loaded(manifest)
        monitor.record(event)
        assert monitor.write_log() == 0
        (tmp_path / "down").mkdir()
        assert monitor.log.replay() == 0  # the database failed moments ago: not tried again yet
        monkeypatch.setattr(log_writer, "OUTAGE_PROBE_SECONDS", 0.0)
        assert monitor.log.replay() == 12
        assert log_ids(monitor) == set(event.prediction_ids)
