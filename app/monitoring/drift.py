"""Data and score drift against the bundle's frozen reference bins, shared by all workers.

Nothing runs on the request path. In the background, each worker bins the scored events handed
over since the last time with the reference edges (numpy, feature by feature over the events'
columns) and adds the counts to its own *slot table*, a small memory-mapped ``int64`` array file
with one row per time slot (``drift_slot_seconds``) used as a ring buffer: column 0 holds the slot
number the row currently counts, the other columns the bin counts of every feature, then the
score, then the decision (no churn / churn), then the fine score bins (counts and score sums) the
performance estimate needs (``bundle.performance_estimate``). A row holding an older slot is
zeroed before reuse, so memory and disk stay fixed whatever the traffic.

At each update it sums the rows of *all* workers' tables whose slot lies inside the window
(``drift_window_seconds``) and computes PSI and the Jensen-Shannon distance per feature and for the
score (``app.monitoring.drift_stats``), and the estimated performance of the window. Every
worker sees the same shared counts, so every worker exports the same figures. A new model version
starts new tables (the file name carries a key of the version and its reference), which resets the
window to the new reference.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import threading
import uuid
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from app.monitoring.drift_sharing import SharedWindow
from app.monitoring.drift_stats import DriftSnapshot, compute_snapshot
from app.monitoring.events import PredictionEvent
from app.monitoring.metrics import process_exists
from bundle.drift_reference import DriftReference, FeatureReference
from bundle.performance_estimate import ScoreBins, ScoreWindow, estimate_performance

logger = logging.getLogger(__name__)

SLOT_COLUMN = 0
EMPTY_SLOT = -1


# ---- binning ------------------------------------------------------------------------------------
class FeatureBinner:
    """Bins values exactly as :meth:`FeatureReference.bin_index` does, fast for one value or many."""

    def __init__(self, reference: FeatureReference, offset: int) -> None:
        self.reference = reference
        self.name = reference.name
        self.offset = offset  # first column of this feature's bins in the slot table (after the slot column)
        self.n_bins = reference.n_bins
        self.categorical = reference.kind == "categorical"
        self._edges = [float(edge) for edge in reference.edges]
        self._edges_array = np.asarray(self._edges, dtype=np.float64)
        self._missing = self.n_bins - 1
        self._unseen = len(reference.categories)
        self._lookup: dict[Any, int] = {value: i for i, value in enumerate(reference.categories)}
        if self.categorical:
            self._lookup.setdefault(None, self._missing)
            # Cleaned booleans arrive as True/False while references store their text.
            for flag in (True, False):
                if str(flag) in self._lookup and flag not in self._lookup:
                    self._lookup[flag] = self._lookup[str(flag)]

    def bin_one(self, value: Any) -> int:
        if self.categorical:
            return self._lookup.get(value, self._unseen) if value is not None else self._missing
        if value is None or value != value:  # None or NaN
            return self._missing
        return bisect_right(self._edges, value)

    def bin_many(self, values: list[Any]) -> np.ndarray:
        if self.categorical:
            return np.fromiter(map(self._lookup.get, values, repeat(self._unseen)), dtype=np.intp, count=len(values))
        try:
            numbers = np.asarray(values, dtype=np.float64)  # None becomes NaN
        except (TypeError, ValueError):
            return np.fromiter((self.bin_one(v) for v in values), dtype=np.intp, count=len(values))
        return self.bin_numbers(numbers)

    def bin_numbers(self, numbers: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self._edges_array, numbers, side="right")
        index[np.isnan(numbers)] = self._missing
        return index


@dataclass(frozen=True)
class DriftLayout:
    """Where each feature's bins, the score's bins and the decision counts sit in a slot-table row."""

    model_version: str
    features: list[FeatureBinner]
    score: FeatureBinner
    decision_offset: int  # two columns: predicted no churn, predicted churn
    estimate: ScoreBins  # fine score bins with the threshold as an edge
    estimate_offset: int
    width: int  # columns including the slot column
    key: str  # names this version's tables; a different model or reference gets new tables

    @classmethod
    def from_reference(cls, model_version: str, reference: DriftReference, threshold: float) -> DriftLayout:
        offset = 1  # column 0 is the slot number
        features = []
        for feature in reference.features:
            features.append(FeatureBinner(feature, offset))
            offset += feature.n_bins
        score = FeatureBinner(reference.score, offset)
        offset += reference.score.n_bins
        estimate = ScoreBins.for_threshold(threshold)
        estimate_offset = offset + 2
        width = estimate_offset + estimate.width
        signature = json.dumps([model_version, reference.to_dict(), threshold, width], sort_keys=True, default=str)
        key = hashlib.sha256(signature.encode()).hexdigest()[:16]
        return cls(model_version, features, score, offset, estimate, estimate_offset, width, key)

    def score_window(self, counts: np.ndarray) -> ScoreWindow:
        """The window's fine score bins, from counts as :func:`window_counts` sums them."""
        start = self.estimate_offset - 1
        return self.estimate.window(counts[start : start + self.estimate.width])

    def bin_counts(self, events: Sequence[PredictionEvent]) -> np.ndarray:
        """The bin counts (length ``width - 1``) of every record of ``events``, column by column.

        A feature an event lacks is not counted for that event; its score and decision still are.
        """
        parts = []
        columns = [event.columns for event in events]
        for binner in self.features:
            try:  # every event has every feature of its model's schema: gathered at C speed
                values = list(chain.from_iterable(map(itemgetter(binner.name), columns)))
            except KeyError:
                values = list(chain.from_iterable(column.get(binner.name, ()) for column in columns))
            parts.append(binner.bin_many(values) + (binner.offset - 1))
        scores = np.concatenate([np.asarray(event.scores, dtype=np.float64).ravel() for event in events])
        decisions = np.concatenate([np.asarray(event.decisions, dtype=np.intp).ravel() for event in events])
        parts.append(self.score.bin_numbers(scores) + (self.score.offset - 1))
        parts.append(decisions + (self.decision_offset - 1))
        counts = np.bincount(np.concatenate(parts), minlength=self.width - 1)
        start = self.estimate_offset - 1
        counts[start : start + self.estimate.width] += self.estimate.columns(scores)
        return counts


# ---- per-worker slot table ----------------------------------------------------------------------
class SlotTable:
    """This worker's memory-mapped ring of per-slot bin counts (fixed size, shared through a file)."""

    def __init__(self, directory: Path, layout: DriftLayout, slot_seconds: int, window_seconds: int) -> None:
        self.layout = layout
        self.slot_seconds = slot_seconds
        self.window_slots = max(1, math.ceil(window_seconds / slot_seconds))
        self.n_slots = self.window_slots + 1  # one spare row: the slot being filled never evicts a slot in the window
        self.path = directory / f"{layout.key}.{os.getpid()}.npy"
        self._lock = threading.Lock()
        self._counts = self._create()

    def _create(self) -> np.memmap:
        # Built under a temporary name and renamed, so readers never see a half-written file.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        counts = np.lib.format.open_memmap(staging, mode="w+", dtype=np.int64, shape=(self.n_slots, self.layout.width))
        counts[:, SLOT_COLUMN] = EMPTY_SLOT
        counts.flush()
        os.replace(staging, self.path)
        return counts

    def add_counts(self, slot: int, counts: np.ndarray) -> bool:
        """Add bin counts (length ``width - 1``) to ``slot``; False when the slot is too old to keep.

        A row holding an older slot is zeroed and reused; a row already holding a newer slot means
        ``slot`` has left the ring (and the window) and must not overwrite it.
        """
        row = slot % self.n_slots
        with self._lock:
            table = self._counts
            held = int(table[row, SLOT_COLUMN])
            if held > slot:
                return False
            if held != slot:
                table[row, 1:] = 0
                table[row, SLOT_COLUMN] = slot
            table[row, 1:] += counts
        return True

    def rows(self, slots: Sequence[int]) -> list[tuple[int, np.ndarray]]:
        """This worker's counts of each of ``slots`` it still holds."""
        with self._lock:
            table = self._counts
            return [
                (slot, np.array(table[slot % self.n_slots, 1:]))
                for slot in slots
                if int(table[slot % self.n_slots, SLOT_COLUMN]) == slot
            ]

    def close(self, remove: bool = False) -> None:
        with self._lock:
            self._counts.flush()
            del self._counts
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


# ---- window aggregation across workers ----------------------------------------------------------
def _table_owner(path: Path) -> int | None:
    try:
        return int(path.name.split(".")[1])
    except (IndexError, ValueError):
        return None


def window_counts(
    directory: Path, layout: DriftLayout, now: float, slot_seconds: int, window_seconds: int
) -> np.ndarray:
    """Bin counts of every worker's table for this layout, over the slots inside the window."""
    window_slots = max(1, math.ceil(window_seconds / slot_seconds))
    current = int(now // slot_seconds)
    total = np.zeros(layout.width - 1, dtype=np.int64)
    for path in sorted(directory.glob(f"{layout.key}.*.npy")):
        try:
            table = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:  # vanished or being replaced: the next update reads it
            logger.debug("skipping drift table %s: %s", path, exc)
            continue
        if table.ndim != 2 or table.shape[1] != layout.width:
            continue
        slots = np.asarray(table[:, SLOT_COLUMN])
        inside = (slots > current - window_slots) & (slots <= current)
        if inside.any():
            total += np.asarray(table[inside, 1:]).sum(axis=0)
    return total


def remove_stale_tables(directory: Path, now: float, slot_seconds: int, window_seconds: int, keep: Path | None) -> int:
    """Delete tables of exited workers that hold nothing inside the window (keeps the directory bounded)."""
    window_slots = max(1, math.ceil(window_seconds / slot_seconds))
    oldest = int(now // slot_seconds) - window_slots
    removed = 0
    for path in directory.glob("*.npy"):
        owner = _table_owner(path)
        if path == keep or owner is None or process_exists(owner):
            continue
        try:
            table = np.load(path, mmap_mode="r")
            newest = int(np.max(table[:, SLOT_COLUMN])) if table.size else EMPTY_SLOT
        except (OSError, ValueError):
            newest = EMPTY_SLOT
        if newest <= oldest:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed


# ---- the per-worker drift tracker -----------------------------------------------------------------
class DriftTracker:
    """One model version's drift counts in this worker, and the window figures of all workers."""

    def __init__(
        self,
        directory: Path,
        model_version: str,
        reference: DriftReference,
        *,
        slot_seconds: int,
        window_seconds: int,
        psi_threshold: float,
        min_count: int,
        threshold: float,
        shared: SharedWindow | None = None,
    ) -> None:
        self.directory = directory
        self.shared = shared  # replicas on other hosts: the window in the log database
        self._unpublished: set[int] = set()
        self.layout = DriftLayout.from_reference(model_version, reference, threshold)
        self.slot_seconds = slot_seconds
        self.window_seconds = window_seconds
        self.base_threshold = psi_threshold
        self.min_count = min_count
        self.table = SlotTable(directory, self.layout, slot_seconds, window_seconds)

    def count(self, events: Sequence[PredictionEvent]) -> int:
        """Bin the records of ``events`` of this tracker's model version into their time slots; records counted."""
        by_slot: dict[int, list[PredictionEvent]] = {}
        for event in events:
            if event.model_version == self.layout.model_version and event.size:
                by_slot.setdefault(int(event.timestamp // self.slot_seconds), []).append(event)
        counted = 0
        for slot, group in by_slot.items():
            if self.table.add_counts(slot, self.layout.bin_counts(group)):
                counted += sum(event.size for event in group)
                self._unpublished.add(slot)
        return counted

    def snapshot(self, now: float) -> DriftSnapshot:
        """Every worker's window summed, compared with the reference, and its performance estimated."""
        counts = self._window(now)
        snapshot = compute_snapshot(self.layout, counts, now, self.window_seconds, self.base_threshold, self.min_count)
        snapshot.estimate = estimate_performance(self.layout.score_window(counts))
        return snapshot

    def _window(self, now: float) -> np.ndarray:
        """The window's counts: of every replica when they share it, else of this host's workers."""
        if self.shared is not None:
            current = int(now // self.slot_seconds)
            first = current - self.table.window_slots + 1
            try:
                unpublished, self._unpublished = self._unpublished, set()
                self.shared.publish(self.layout.key, self.table.rows(sorted(unpublished)))
                return self.shared.window(self.layout.key, first, current, self.layout.width - 1)
            except SQLAlchemyError as exc:  # published next time; meanwhile this host's figures
                self._unpublished |= unpublished
                logger.warning("drift window of the other replicas unavailable, this host's only: %s", exc)
        return window_counts(self.directory, self.layout, now, self.slot_seconds, self.window_seconds)

    def remove_stale(self, now: float) -> int:
        if self.shared is not None:
            oldest = int(now // self.slot_seconds) - self.table.window_slots
            with contextlib.suppress(SQLAlchemyError):
                self.shared.remove_before(oldest)
        return remove_stale_tables(self.directory, now, self.slot_seconds, self.window_seconds, self.table.path)

    def close(self, remove: bool = False) -> None:
        """Stop counting (reload or shutdown)."""
        self.table.close(remove=remove)
