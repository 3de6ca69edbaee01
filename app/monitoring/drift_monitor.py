"""Drift of the served model: which tracker counts, and the drift and estimate gauges every update publishes."""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

from app.monitoring.drift import DriftLayout, DriftTracker
from app.monitoring.drift_sharing import SharedWindow
from app.monitoring.drift_stats import DriftSnapshot
from app.monitoring.estimate import EstimateGauges
from app.monitoring.events import RecordedEvent
from app.monitoring.metrics import Metrics
from app.settings import Settings
from bundle.manifest import Manifest


class DriftMonitor:
    """Counts predictions of the served model against its reference and exports the window's figures."""

    def __init__(self, settings: Settings, metrics: Metrics, shared: SharedWindow | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.shared = shared  # replicas on several hosts: the window in the log database
        self.tracker: DriftTracker | None = None
        self.latest: DriftSnapshot | None = None
        self.estimate_gauges = EstimateGauges(metrics)
        self._features: set[str] = set()
        self._lock = threading.Lock()  # the tracker is switched by a reload while the background counts
        # Shared with the other workers through the multiprocess directory; private otherwise.
        if metrics.multiprocess_dir:
            self.directory = Path(metrics.multiprocess_dir) / "drift"
            self.directory.mkdir(parents=True, exist_ok=True)
            self._private = False
        else:
            self.directory = Path(tempfile.mkdtemp(prefix="churn-drift-"))
            self._private = True
            weakref.finalize(self, shutil.rmtree, self.directory, True)  # also gone if close() is never called

    def model_loaded(self, manifest: Manifest) -> None:
        """Count against ``manifest``'s reference from now on (the same bundle again keeps its window)."""
        key = DriftLayout.from_reference(manifest.version, manifest.drift_reference, manifest.threshold).key
        with self._lock:
            current = self.tracker
            if current is not None and current.layout.key == key:
                return
            self.tracker = DriftTracker(
                self.directory,
                manifest.version,
                manifest.drift_reference,
                slot_seconds=self.settings.drift_slot_seconds,
                window_seconds=self.settings.drift_window_seconds,
                psi_threshold=self.settings.drift_psi_threshold,
                min_count=self.settings.drift_min_count,
                shared=self.shared,
                threshold=manifest.threshold,
            )
            if current is not None:
                current.close(remove=True)  # this worker never writes that version again
        new_features = {binner.name for binner in self.tracker.layout.features}
        for feature in self._features - new_features:
            for gauge in (
                self.metrics.drift_psi,
                self.metrics.drift_js,
                self.metrics.drift_threshold,
                self.metrics.drifting,
            ):
                self.metrics.retire_series(gauge, (feature,))
        self._features = new_features
        self.estimate_gauges.model_loaded(manifest)

    def count(self, recorded: Sequence[RecordedEvent]) -> None:
        with self._lock:
            if self.tracker is not None:
                self.tracker.count([item.event for item in recorded])

    def update(self, now: float) -> DriftSnapshot | None:
        """Recompute the window's figures from all workers' counts and export them."""
        with self._lock:
            tracker = self.tracker
            if tracker is None:
                return None
            snapshot = tracker.snapshot(now)
        self._publish(snapshot)
        self.latest = snapshot
        return snapshot

    def _publish(self, snapshot: DriftSnapshot) -> None:
        m = self.metrics
        for figures in snapshot.features:
            m.drift_psi.labels(figures.feature).set(figures.psi)
            m.drift_js.labels(figures.feature).set(figures.js)
            m.drift_threshold.labels(figures.feature).set(figures.threshold)
            m.drifting.labels(figures.feature).set(1 if figures.drifting else 0)
        m.score_psi.set(snapshot.score.psi)
        m.score_js.set(snapshot.score.js)
        m.score_drifting.set(1 if snapshot.score.drifting else 0)
        m.drift_window.set(snapshot.window_predictions)
        m.predicted_churn_rate.set(snapshot.predicted_churn_rate)
        if snapshot.estimate is not None:
            self.estimate_gauges.publish(snapshot.model_version, snapshot.estimate)

    def remove_stale(self, now: float) -> None:
        with self._lock:
            if self.tracker is not None:
                self.tracker.remove_stale(now)

    def close(self) -> None:
        with self._lock:
            if self.tracker is not None:
                self.tracker.close()  # the table stays for the other workers until it leaves the window
                self.tracker = None
        if self._private:
            shutil.rmtree(self.directory, ignore_errors=True)
