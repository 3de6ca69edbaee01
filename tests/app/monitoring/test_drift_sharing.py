"""Replicas on several hosts share the drift window through the log database."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine

from app.monitoring.drift import DriftTracker
from app.monitoring.drift_sharing import SharedWindow
from app.monitoring.log_store import engine_url
from tests.app.monitoring.monitoring_helpers import make_event, make_manifest

NOW = 1_800_000_000.0
SLOT_SECONDS, WINDOW_SECONDS = 60, 600
DATABASES = ["sqlite"] + (["postgresql"] if os.environ.get("CHURN_TEST_POSTGRES_URL") else [])


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    else:
        engine = create_engine(engine_url(os.environ["CHURN_TEST_POSTGRES_URL"]))
        from app.monitoring.log_store import create_tables, drift_slots_table

        create_tables(engine)
        with engine.begin() as connection:
            connection.execute(drift_slots_table.delete())
    yield engine
    engine.dispose()


def replica(directory: Path, manifest, engine, source: str) -> DriftTracker:
    """One service process on its own host (its own slot-table directory), sharing the database."""
    return DriftTracker(
        directory, manifest.version, manifest.drift_reference, slot_seconds=SLOT_SECONDS,
        window_seconds=WINDOW_SECONDS, psi_threshold=0.2, min_count=200, threshold=manifest.threshold,
        shared=SharedWindow(lambda: engine, source),
    )  # fmt: skip


def test_every_replica_computes_drift_from_the_counts_of_all(tmp_path: Path, engine) -> None:
    manifest = make_manifest()
    first = replica(tmp_path / "host-a", manifest, engine, "a:1")
    second = replica(tmp_path / "host-b", manifest, engine, "b:1")
    alone = DriftTracker(
        tmp_path / "one-host", manifest.version, manifest.drift_reference, slot_seconds=SLOT_SECONDS,
        window_seconds=WINDOW_SECONDS, psi_threshold=0.2, min_count=200, threshold=manifest.threshold,
    )  # fmt: skip
    # Drifted traffic spread over the replicas: too few records on either to judge, enough together.
    events_a = [make_event(manifest, 150, seed=1, timestamp=NOW - 90, shift=0.8)]
    events_b = [make_event(manifest, 150, seed=2, timestamp=NOW - 5, shift=0.8)]
    first.count(events_a)
    second.count(events_b)
    alone.count([*events_a, *events_b])

    first.snapshot(NOW)  # each publishes what it counted when it updates
    a, b, expected = second.snapshot(NOW), first.snapshot(NOW), alone.snapshot(NOW)

    assert a.window_predictions == b.window_predictions == expected.window_predictions == 300
    assert [f.psi for f in a.features] == [f.psi for f in b.features] == [f.psi for f in expected.features]
    assert (
        {f.feature for f in a.features if f.drifting} == {f.feature for f in expected.features if f.drifting} != set()
    )
    assert a.estimate.to_dict() == expected.estimate.to_dict()
    for tracker in (first, second, alone):
        tracker.close()


def test_an_unreachable_database_falls_back_to_this_host_and_publishes_later(tmp_path: Path, engine) -> None:
    manifest = make_manifest()
    available = {"now": False}
    tracker = DriftTracker(
        tmp_path / "host", manifest.version, manifest.drift_reference, slot_seconds=SLOT_SECONDS,
        window_seconds=WINDOW_SECONDS, psi_threshold=0.2, min_count=200, threshold=manifest.threshold,
        shared=SharedWindow(lambda: engine if available["now"] else None, "a:1"),
    )  # fmt: skip
    other = replica(tmp_path / "other", manifest, engine, "b:1")
    tracker.count([make_event(manifest, 120, seed=3, timestamp=NOW)])
    assert tracker.snapshot(NOW).window_predictions == 120  # this host's counts meanwhile

    available["now"] = True
    assert tracker.snapshot(NOW).window_predictions == 120  # published now
    assert other.snapshot(NOW).window_predictions == 120
    tracker.close()
    other.close()


def test_slots_out_of_the_window_leave_the_database(tmp_path: Path, engine) -> None:
    manifest = make_manifest()
    tracker = replica(tmp_path / "host", manifest, engine, "a:1")
    tracker.count([make_event(manifest, 50, seed=4, timestamp=NOW - 3 * WINDOW_SECONDS)])
    tracker.count([make_event(manifest, 70, seed=5, timestamp=NOW)])
    assert tracker.snapshot(NOW).window_predictions == 70
    tracker.remove_stale(NOW)
    shared = SharedWindow(lambda: engine, "reader")
    width = tracker.layout.width - 1
    assert (
        shared.window(tracker.layout.key, 0, 10**9, width).sum()
        == np.asarray(
            shared.window(tracker.layout.key, int(NOW // SLOT_SECONDS) - 1, int(NOW // SLOT_SECONDS), width)
        ).sum()
    )
    tracker.close()
