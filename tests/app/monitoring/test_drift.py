"""Drift: binning parity with the reference, PSI/JS values, window-size-aware flags, window expiry, bounded state."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.monitoring import Monitor
from app.monitoring.drift import DriftTracker, FeatureBinner, remove_stale_tables, window_counts
from tests.app.monitoring.monitoring_helpers import make_event, make_manifest, make_settings, running, single_events

NOW = 1_800_000_000.0  # a fixed instant, so slot arithmetic is reproducible


def tracker_for(directory: Path, manifest, **overrides) -> DriftTracker:
    options = {"slot_seconds": 60, "window_seconds": 600, "psi_threshold": 0.2, "min_count": 200} | overrides
    options.setdefault("threshold", manifest.threshold)
    return DriftTracker(directory, manifest.version, manifest.drift_reference, **options)


# ---- binning ------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.just(math.nan), st.floats(-1e6, 1e6)), min_size=1, max_size=30))
def test_numeric_binning_matches_reference_bin_index(values):
    reference = make_manifest().drift_reference.features[0]
    binner = FeatureBinner(reference, offset=1)
    expected = reference.bin_index(values).tolist()
    assert binner.bin_many(values).tolist() == expected
    assert [binner.bin_one(v) for v in values] == expected


def test_categorical_binning_matches_reference_and_maps_booleans():
    manifest = make_manifest()
    contract, paperless = manifest.drift_reference.features[2], manifest.drift_reference.features[3]
    values = ["One year", None, "Two year", "something new", "Month-to-month"]
    binner = FeatureBinner(contract, offset=1)
    assert binner.bin_many(values).tolist() == contract.bin_index(values).tolist()
    assert [binner.bin_one(v) for v in values] == contract.bin_index(values).tolist()
    # The service hands over cleaned booleans; the reference stores their text.
    flags = FeatureBinner(paperless, offset=1)
    assert flags.bin_many([True, False, None]).tolist() == paperless.bin_index(["True", "False", None]).tolist()


def test_empty_window_has_no_figures_and_never_flags(tmp_path):
    tracker = tracker_for(tmp_path, make_manifest())
    snapshot = tracker.snapshot(NOW)
    assert snapshot.window_predictions == 0
    assert math.isnan(snapshot.score.psi) and not snapshot.score.drifting
    assert all(math.isnan(f.psi) and not f.drifting for f in snapshot.features)
    tracker.close()


# ---- flags: in-distribution versus shifted ---------------------------------------------------------------
@pytest.mark.parametrize("size", [200, 1000, 5000])
def test_in_distribution_windows_do_not_flag(tmp_path, size):
    manifest = make_manifest()
    tracker = tracker_for(tmp_path, manifest)
    for seed in range(3):  # three independent windows per size
        tracker.table.close(remove=True)
        tracker = tracker_for(tmp_path, manifest)
        event = make_event(manifest, size, seed=1000 * size + seed, timestamp=NOW)
        tracker.count([event])
        snapshot = tracker.snapshot(NOW)
        assert snapshot.window_predictions == size
        flagged = [f.feature for f in [*snapshot.features, snapshot.score] if f.drifting]
        assert flagged == [], f"window of {size} in-distribution records flagged {flagged}"
    tracker.close()


@pytest.mark.parametrize("size", [200, 1000, 5000])
def test_shifted_windows_flag(tmp_path, size):
    manifest = make_manifest()
    tracker = tracker_for(tmp_path, manifest)
    event = make_event(manifest, size, seed=size, timestamp=NOW, shift=0.6)
    tracker.count([event])
    snapshot = tracker.snapshot(NOW)
    flagged = {f.feature for f in snapshot.features if f.drifting}
    assert {"tenure", "monthly_charges"} <= flagged
    assert snapshot.score.drifting
    tracker.close()


def test_small_window_below_minimum_count_never_flags(tmp_path):
    manifest = make_manifest()
    tracker = tracker_for(tmp_path, manifest, min_count=200)
    event = make_event(manifest, 150, seed=5, timestamp=NOW, shift=2.0)  # grossly shifted, but too few records
    tracker.count([event])
    snapshot = tracker.snapshot(NOW)
    assert snapshot.score.psi > 1.0
    assert not snapshot.score.drifting and not any(f.drifting for f in snapshot.features)
    tracker.close()


# ---- counting paths, window, memory -----------------------------------------------------------------------
@pytest.mark.parametrize("straddles_slots", [False, True])
def test_single_record_events_count_like_one_batch_of_them(tmp_path, straddles_slots):
    manifest = make_manifest()
    singly = tracker_for(tmp_path / "a", manifest)
    batched = tracker_for(tmp_path / "b", manifest)
    start = NOW + 59.5 if straddles_slots else NOW  # slots are 60 s: half the records fall in the next one
    event = make_event(manifest, 200, seed=5, timestamp=start)
    singles = single_events(event, [start + i * 0.005 for i in range(200)])
    assert singly.count(singles) == 200
    assert batched.count([event]) == 200
    later = start + 60
    layout = singly.layout
    np.testing.assert_array_equal(
        window_counts(tmp_path / "a", layout, later, 60, 600), window_counts(tmp_path / "b", layout, later, 60, 600)
    )
    # Each record counts in its own slot: the window ending before the next slot holds only the first half.
    first_slot_only = singly.snapshot(NOW + 59.9).window_predictions
    assert first_slot_only == (100 if straddles_slots else 200)
    assert batched.snapshot(later).predicted_churn_rate == pytest.approx(float(np.mean(event.decisions)))
    singly.close()
    batched.close()


def test_events_of_another_model_version_are_not_counted(tmp_path):
    manifest = make_manifest()
    tracker = tracker_for(tmp_path, manifest)
    other = make_event(make_manifest(version="20261124T000000Z-bbbbbb", seed=1), 30, seed=2, timestamp=NOW)
    assert tracker.count([other, make_event(manifest, 20, seed=3, timestamp=NOW)]) == 20
    assert tracker.snapshot(NOW).window_predictions == 20
    tracker.close()


def test_old_slots_leave_the_window(tmp_path):
    manifest = make_manifest()
    tracker = tracker_for(tmp_path, manifest, slot_seconds=60, window_seconds=600)
    old = make_event(manifest, 100, seed=1, timestamp=NOW)
    recent = make_event(manifest, 40, seed=2, timestamp=NOW + 500)
    for event in (old, recent):
        tracker.count([event])
    assert tracker.snapshot(NOW + 500).window_predictions == 140
    assert tracker.snapshot(NOW + 660).window_predictions == 40  # the first slot is now outside the window
    assert tracker.snapshot(NOW + 1200).window_predictions == 0
    tracker.close()


def test_ring_reuses_rows_so_stale_counts_never_return(tmp_path):
    manifest = make_manifest()
    tracker = tracker_for(tmp_path, manifest, slot_seconds=60, window_seconds=600)
    first = make_event(manifest, 50, seed=1, timestamp=NOW)
    tracker.count([first])
    # Exactly one ring length later the same row is reused: the old slot's counts must be gone.
    later = NOW + tracker.table.n_slots * 60
    second = make_event(manifest, 7, seed=2, timestamp=later)
    tracker.count([second])
    assert tracker.snapshot(later).window_predictions == 7
    tracker.close()


def test_state_is_bounded_whatever_the_traffic(tmp_path):
    manifest = make_manifest()
    tracker = tracker_for(tmp_path, manifest, slot_seconds=1, window_seconds=30)
    size_before = tracker.table.path.stat().st_size
    shape_before = np.load(tracker.table.path, mmap_mode="r").shape
    for second in range(0, 3 * 3600, 7):  # three hours of traffic, one event every 7 seconds
        event = make_event(manifest, 5, seed=second, timestamp=NOW + second)
        tracker.count([event])
    assert np.load(tracker.table.path, mmap_mode="r").shape == shape_before == (31, tracker.layout.width)
    assert tracker.table.path.stat().st_size == size_before
    assert len(list(tmp_path.iterdir())) == 1
    assert tracker.snapshot(NOW + 3 * 3600).window_predictions <= 30 * 5
    tracker.close()


def test_tables_of_exited_workers_are_removed_once_outside_the_window(tmp_path):
    manifest = make_manifest()
    tracker = tracker_for(tmp_path, manifest)
    orphan = tmp_path / f"{tracker.layout.key}.999999999.npy"  # a pid that cannot exist
    orphan.write_bytes(tracker.table.path.read_bytes())
    assert remove_stale_tables(tmp_path, NOW, 60, 600, keep=tracker.table.path) == 1
    assert not orphan.exists() and tracker.table.path.exists()
    tracker.close()


# ---- through the monitor: gauges and reload --------------------------------------------------------------
def test_monitor_exports_drift_and_resets_on_reload(tmp_path):
    clock = [NOW]
    monitor = Monitor(make_settings(tmp_path), clock=lambda: clock[0])
    manifest = make_manifest()
    with running(monitor):
        monitor.model_loaded(manifest)
        monitor.record(make_event(manifest, 2000, seed=3, timestamp=NOW, shift=0.6))
        snapshot = monitor.update_drift()
        assert snapshot is not None and snapshot.window_predictions == 2000 and snapshot.score.drifting
        exposition = monitor.metrics.exposition().decode()
        assert 'churn_feature_drifting{feature="tenure"} 1.0' in exposition
        assert "churn_score_drifting 1.0" in exposition
        assert "churn_drift_window_predictions 2000.0" in exposition
        assert "churn_reference_predicted_churn_rate 0.3" in exposition

        monitor.model_loaded(make_manifest(version="20261124T000000Z-bbbbbb", seed=1))
        snapshot = monitor.update_drift()
        assert snapshot is not None and snapshot.window_predictions == 0
        assert len(list(monitor.drift.directory.glob("*.npy"))) == 1  # the previous version's table is gone
        # Events scored by the previous model (in flight during the reload) do not pollute the new window.
        monitor.record(make_event(manifest, 10, seed=4, timestamp=NOW))
        assert monitor.update_drift().window_predictions == 0
