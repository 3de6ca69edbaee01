"""Data and score drift against the bundle's frozen reference bins, shared by all workers.

Nothing runs on the request path. In the background, at each of the monitor's drains (see
``Monitor.drain``), each worker bins the scored batches handed over since the last one with the
reference edges (numpy, feature by feature; single-record predictions are first gathered into
columns) and adds the counts to its own *slot table*, a small memory-mapped ``int64`` array file
with one row per time slot (``drift_slot_seconds``) used as a ring buffer: column 0 holds the slot
number the row currently counts, the other columns the bin counts of every feature, then the
score, then the decision (no churn / churn). A row holding an older slot is zeroed before reuse,
so memory and disk stay fixed whatever the traffic.

Every ``drift_update_seconds`` it sums the rows of *all* workers' tables whose slot lies inside the
window (``drift_window_seconds``) and computes PSI and the Jensen-Shannon distance per feature and
for the score. Every worker sees the same shared counts, so every worker exports the same figures.
A new model version starts new tables (the file name carries a key of the version and its
reference), which resets the window to the new reference.

Why the threshold moves with the window: with no drift at all, ``n * PSI`` over ``k`` bins is
approximately chi-square with ``k - 1`` degrees of freedom (inflated by the reference's own
sampling noise, hence ``1/n + 1/N_ref``), so PSI itself is about ``(k-1)/n``. A fixed 0.2
threshold would fire on small windows for no reason; the threshold in force is the larger of
``drift_psi_threshold`` and the chi-square 99.9% null quantile scaled to the window.
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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from app.monitoring.events import GatheredSingles, gather_columns
from app.monitoring.metrics import process_exists
from bundle.drift_reference import DriftReference, FeatureReference

logger = logging.getLogger(__name__)

PSI_EPSILON = 1e-4  # floor for empty bins on either side, so PSI stays finite
NULL_QUANTILE = 0.999  # how unlikely a no-drift window must be to cross the window-size threshold
MAX_PENDING_EVENTS = 20_000  # batches awaiting binning before the request path bins them itself
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
    width: int  # columns including the slot column
    key: str  # names this version's tables; a different model or reference gets new tables

    @classmethod
    def from_reference(cls, model_version: str, reference: DriftReference) -> DriftLayout:
        offset = 1  # column 0 is the slot number
        features = []
        for feature in reference.features:
            features.append(FeatureBinner(feature, offset))
            offset += feature.n_bins
        score = FeatureBinner(reference.score, offset)
        offset += reference.score.n_bins
        signature = json.dumps([model_version, reference.to_dict()], sort_keys=True, default=str)
        key = hashlib.sha256(signature.encode()).hexdigest()[:16]
        return cls(model_version, features, score, offset, offset + 2, key)


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


# ---- statistics -----------------------------------------------------------------------------------
def population_stability_index(live_counts: np.ndarray, reference: np.ndarray) -> float:
    """PSI = sum((p - q) * ln(p / q)) with both shares floored at PSI_EPSILON (empty bins stay finite)."""
    n = live_counts.sum()
    if n <= 0:
        return math.nan
    p = np.maximum(live_counts / n, PSI_EPSILON)
    q = np.maximum(np.asarray(reference, dtype=np.float64), PSI_EPSILON)
    return float(np.sum((p - q) * np.log(p / q)))


def jensen_shannon_distance(live_counts: np.ndarray, reference: np.ndarray) -> float:
    """Jensen-Shannon distance with base-2 logarithms: 0 for identical, 1 for disjoint distributions."""
    n = live_counts.sum()
    if n <= 0:
        return math.nan
    from scipy.spatial.distance import jensenshannon  # imported here: scipy adds ~1 s to process start

    distance = jensenshannon(live_counts / n, np.asarray(reference, dtype=np.float64), base=2)
    return float(min(max(distance, 0.0), 1.0))


def psi_threshold(base: float, n: int, reference: FeatureReference) -> float:
    """The PSI a no-drift window of ``n`` records exceeds only with probability 1 - NULL_QUANTILE, or ``base``.

    ``n * PSI`` ~ chi-square(k - 1) under no drift, scaled by ``1 + n / N_ref`` for the reference's
    own sampling noise; ``k`` counts the bins the reference actually populates.
    """
    if n <= 0:
        return base
    populated = sum(1 for share in reference.proportions if share > 0)
    degrees = max(populated - 1, 1)
    noise = 1.0 / n + (1.0 / reference.count if reference.count > 0 else 0.0)
    from scipy.stats import chi2  # imported here: scipy adds ~1 s to process start

    return float(max(base, chi2.ppf(NULL_QUANTILE, degrees) * noise))


@dataclass
class FeatureDrift:
    feature: str
    kind: str
    count: int
    psi: float
    js: float
    threshold: float
    drifting: bool


@dataclass
class DriftSnapshot:
    """The figures of one background update (also what the daily report shows)."""

    computed_at: float
    model_version: str
    window_seconds: int
    window_predictions: int
    predicted_churn_rate: float
    features: list[FeatureDrift]
    score: FeatureDrift

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return _nan_to_none(data)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    return value


def feature_drift(binner: FeatureBinner, counts: np.ndarray, base: float, min_count: int) -> FeatureDrift:
    live = counts[binner.offset - 1 : binner.offset - 1 + binner.n_bins].astype(np.float64)
    reference = binner.reference
    n = int(live.sum())
    psi = population_stability_index(live, reference.proportions)
    threshold = psi_threshold(base, n, reference)
    return FeatureDrift(
        feature=binner.name,
        kind=reference.kind,
        count=n,
        psi=psi,
        js=jensen_shannon_distance(live, reference.proportions),
        threshold=threshold,
        drifting=bool(n >= min_count and psi > threshold),
    )


def compute_snapshot(
    layout: DriftLayout, counts: np.ndarray, now: float, window_seconds: int, base: float, min_count: int
) -> DriftSnapshot:
    decisions = counts[layout.decision_offset - 1 : layout.decision_offset + 1]
    window = int(decisions.sum())
    return DriftSnapshot(
        computed_at=now,
        model_version=layout.model_version,
        window_seconds=window_seconds,
        window_predictions=window,
        predicted_churn_rate=float(decisions[1] / window) if window else math.nan,
        features=[feature_drift(binner, counts, base, min_count) for binner in layout.features],
        score=feature_drift(layout.score, counts, base, min_count),
    )


# ---- the per-worker drift tracker -----------------------------------------------------------------
# A single-record event waiting to be binned: its columns, its row (or None), score, decision.
_Single = tuple[dict[str, Sequence[Any]], tuple[Any, ...] | None, float, bool]


def _columns_of_singles(records: list[_Single]) -> dict[str, Sequence[Any]] | None:
    """The records' values by feature: their rows transposed when every record has one, else gathered."""
    rows = [record[1] for record in records]
    names = list(records[0][0]) if records else []
    if None not in rows and list(records[-1][0]) == names and set(map(len, rows)) == {len(names)}:
        return dict(zip(names, zip(*rows, strict=False), strict=True))  # lengths checked just above
    return gather_columns([record[0] for record in records])


class DriftTracker:
    """One model version's drift state in this worker: remembering on the request path, the rest in the background."""

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
    ) -> None:
        self.directory = directory
        self.layout = DriftLayout.from_reference(model_version, reference)
        self.slot_seconds = slot_seconds
        self.window_seconds = window_seconds
        self.base_threshold = psi_threshold
        self.min_count = min_count
        self.table = SlotTable(directory, self.layout, slot_seconds, window_seconds)
        self._n_columns = self.layout.width - 1
        # Batches waiting to be binned. deque.append is atomic, so the request path takes no lock.
        self._pending: deque[tuple[float, dict[str, Sequence[Any]], np.ndarray, np.ndarray, tuple[Any, ...] | None]] = (
            deque()
        )
        self._apply_lock = threading.Lock()

    def count(
        self,
        timestamp: float,
        columns: dict[str, Sequence[Any]],
        scores: np.ndarray,
        decisions: np.ndarray,
        row: tuple[Any, ...] | None = None,
    ) -> None:
        """Remember a scored batch (a deque append; the monitor's drain calls it); :meth:`apply_pending` bins it.

        ``row``: a single record's values in the order of ``columns``, when the caller has them.
        """
        self._pending.append((timestamp, columns, scores, decisions, row))
        if len(self._pending) > MAX_PENDING_EVENTS:
            self.apply_pending()  # the background thread is not keeping up: keep memory bounded here

    def count_gathered(self, group: GatheredSingles) -> None:
        """Remember gathered single records as batches, one per time slot they fall in (usually one)."""
        slots = np.floor_divide(np.asarray(group.timestamps, dtype=np.float64), self.slot_seconds)
        columns = group.columns()
        if (slots == slots[0]).all():
            self.count(group.timestamps[0], columns, group.scores, group.decisions)
            return
        for slot in np.unique(slots).tolist():  # the drain straddles a slot boundary
            chosen = np.flatnonzero(slots == slot)
            picked = chosen.tolist()
            self.count(
                group.timestamps[picked[0]],
                {name: [values[i] for i in picked] for name, values in columns.items()},
                group.scores[chosen],
                group.decisions[chosen],
            )

    def apply_pending(self, on_error: Callable[[Exception], None] | None = None, *, blocking: bool = True) -> int:
        """Bin every remembered batch into this worker's slot table; returns the records counted.

        ``blocking=False``: return 0 at once when another thread is binning (it may take a while).
        """
        if not self._apply_lock.acquire(blocking=blocking):
            return 0
        try:
            return self._apply_locked(on_error)
        finally:
            self._apply_lock.release()

    def _apply_locked(self, on_error: Callable[[Exception], None] | None) -> int:
        per_slot: dict[int, np.ndarray] = {}
        singles: dict[int, list[_Single]] = {}
        counted = 0
        while self._pending:
            timestamp, columns, scores, decisions, row = self._pending.popleft()
            slot = int(timestamp // self.slot_seconds)
            try:
                if len(scores) == 1:
                    singles.setdefault(slot, []).append((columns, row, float(scores[0]), bool(decisions[0])))
                elif len(scores) > 1:
                    counts = self._counts_of_many(columns, scores, decisions)
                    per_slot[slot] = per_slot[slot] + counts if slot in per_slot else counts
                counted += len(scores)
            except Exception as exc:  # one malformed batch must not stop the others
                if on_error is not None:
                    on_error(exc)
        for slot, records in singles.items():
            try:
                counts = self._counts_of_singles(records)
            except Exception as exc:
                counted -= len(records)
                if on_error is not None:
                    on_error(exc)
                continue
            per_slot[slot] = per_slot[slot] + counts if slot in per_slot else counts
        for slot, counts in per_slot.items():
            self.table.add_counts(slot, counts)
        return counted

    def _counts_of_singles(self, records: list[_Single]) -> np.ndarray:
        """Bin counts of many single-record predictions, binned feature by feature like a batch.

        Single records are the /predict traffic: transposing them into columns and binning each
        column with numpy costs a fraction of binning every value of every record one by one.
        """
        columns = _columns_of_singles(records)
        if columns is None:  # records of differing shapes (not expected): bin each on its own
            return sum(
                (self._counts_of_many(record[0], np.array([record[2]]), np.array([record[3]])) for record in records),
                start=np.zeros(self._n_columns, dtype=np.int64),
            )
        scores = np.fromiter((record[2] for record in records), dtype=np.float64, count=len(records))
        decisions = np.fromiter((record[3] for record in records), dtype=bool, count=len(records))
        return self._counts_of_many(columns, scores, decisions)

    def _counts_of_many(self, columns: dict[str, list[Any]], scores: np.ndarray, decisions: np.ndarray) -> np.ndarray:
        layout = self.layout
        parts = [
            binner.bin_many(values) + (binner.offset - 1)
            for binner in layout.features
            if (values := columns.get(binner.name)) is not None
        ]
        parts.append(layout.score.bin_numbers(np.asarray(scores, dtype=np.float64)) + (layout.score.offset - 1))
        parts.append(np.asarray(decisions, dtype=np.intp) + (layout.decision_offset - 1))
        return np.bincount(np.concatenate(parts), minlength=self._n_columns)

    def snapshot(self, now: float) -> DriftSnapshot:
        """This worker's pending batches binned, then every worker's window summed and compared."""
        self.apply_pending()
        counts = window_counts(self.directory, self.layout, now, self.slot_seconds, self.window_seconds)
        return compute_snapshot(self.layout, counts, now, self.window_seconds, self.base_threshold, self.min_count)

    def remove_stale(self, now: float) -> int:
        return remove_stale_tables(self.directory, now, self.slot_seconds, self.window_seconds, self.table.path)

    def close(self, remove: bool = False) -> None:
        """Stop counting (reload or shutdown). Pending batches are binned first."""
        self.apply_pending()
        self.table.close(remove=remove)
