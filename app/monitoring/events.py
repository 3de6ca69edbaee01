"""What the prediction path hands to monitoring: one event per /predict or /predict/batch call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np


@dataclass(slots=True)
class PredictionEvent:
    """A scored batch (one record for /predict). Built once; monitoring only reads it."""

    timestamp: float  # time.time() when scoring finished
    model_version: str
    prediction_ids: list[str]
    customer_ids: list[str | None]
    # Each feature's cleaned values in schema order (None = missing), one per record: drift bins
    # them and the prediction log writes each record's row from them, both in the background, so
    # the request path never builds a dictionary per record.
    columns: dict[str, Sequence[Any]]
    scores: np.ndarray  # calibrated churn probabilities
    decisions: np.ndarray  # bool: score >= threshold
    risk_bands: list[str]
    imputed: list[tuple[int, str]] = field(default_factory=list)  # (row, feature) filled with training values
    unseen: list[tuple[int, str]] = field(default_factory=list)  # (row, feature) categories not seen in training
    out_of_range: list[tuple[int, str]] = field(default_factory=list)  # (row, feature) numbers outside training's
    stage_seconds: dict[str, float] = field(default_factory=dict)  # validation, features, inference, explanation
    # A single record's values in the order of ``columns`` (None for batches): the background
    # gathers many /predict events into columns with one transposition of these rows, about
    # ten times cheaper than joining their one-value columns.
    row: tuple[Any, ...] | None = None


def transpose(records: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]] | None:
    """Dictionaries with the same keys in the same order turned into one tuple of values per key.

    Transposed in C. None when they differ (then handle them one by one); only the first and
    last key orders are compared, since every event of one model version lists its features in
    schema order and times the same stages.
    """
    if not records:
        return {}
    names = list(records[0])
    try:
        if list(records[-1]) != names or set(map(len, records)) != {len(names)}:
            return None
        # Lengths checked above: the cheaper unchecked transposition is exact.
        return dict(zip(names, zip(*map(dict.values, records), strict=False), strict=True))
    except TypeError:  # not dictionaries
        return None


def gather_columns(columns_of_events: list[dict[str, Sequence[Any]]]) -> dict[str, list[Any]] | None:
    """The columns of many single-record events joined into one column per feature (see ``transpose``)."""
    transposed = transpose(columns_of_events)
    if transposed is None:
        return None
    try:
        if any(set(map(len, values)) != {1} for values in transposed.values()):
            return None  # some event holds more or fewer than one record
        return {name: list(chain.from_iterable(values)) for name, values in transposed.items()}
    except TypeError:  # a value that is not a sequence
        return None


@dataclass(slots=True)
class GatheredSingles:
    """The single-record events of one drain and one model version, gathered into one batch.

    ``/predict`` traffic arrives one record per event. Counted, binned and logged event by event,
    each record costs a Python round of every step; gathered (a few passes of ``map`` and one
    transposition), the steps run once over all of them, as for a ``/predict/batch`` call. Unlike a
    batch, each record keeps its own time and request latency.
    """

    model_version: str
    names: tuple[str, ...]  # the features of every row, in schema order
    timestamps: list[float]
    latencies: list[float]  # each request's latency (the stages' sum where it is unknown)
    prediction_ids: list[str]
    customer_ids: list[str | None]
    rows: list[tuple[Any, ...]]  # one per record, values in ``names`` order
    scores: np.ndarray
    decisions: np.ndarray
    risk_bands: list[str]

    def columns(self) -> dict[str, tuple[Any, ...]]:
        """The rows by feature (one transposition, in C)."""
        return dict(zip(self.names, zip(*self.rows, strict=True), strict=True))


_ROW = attrgetter("row")
_MODEL_VERSION = attrgetter("model_version")
_TIMESTAMP = attrgetter("timestamp")
_PREDICTION_IDS = attrgetter("prediction_ids")
_CUSTOMER_IDS = attrgetter("customer_ids")
_SCORES = attrgetter("scores")
_DECISIONS = attrgetter("decisions")
_RISK_BANDS = attrgetter("risk_bands")
_FIRST = itemgetter(0)

Entry = tuple[PredictionEvent, "float | None"]  # an event and its request's latency (None: unknown)


def gather_singles(entries: list[Entry]) -> tuple[list[GatheredSingles], list[Entry]]:
    """The single-record events among ``entries`` gathered per model version, and every other entry.

    An event is gathered when it holds one record and its row of values; a version whose events
    do not all fit that shape (not expected) is left ungathered, to be handled event by event.
    """
    events = list(map(_FIRST, entries))
    versions = set(map(_MODEL_VERSION, events))
    if len(versions) == 1 and None not in map(_ROW, events) and set(map(len, map(_PREDICTION_IDS, events))) == {1}:
        by_version = {versions.pop(): entries}  # the usual drain: /predict traffic of one model, in passes over it
        rest: list[Entry] = []
    else:
        by_version, rest = _split(entries)
    groups: list[GatheredSingles] = []
    for version, singles in by_version.items():
        try:
            group = _gather(version, singles)
        except (IndexError, TypeError, ValueError):  # a malformed event: left to the event-by-event path
            group = None
        if group is None:
            rest.extend(singles)
        else:
            groups.append(group)
    return groups, rest


def _split(entries: list[Entry]) -> tuple[dict[str, list[Entry]], list[Entry]]:
    """Single-record events with their rows by model version, and the other entries."""
    by_version: dict[str, list[Entry]] = {}
    rest: list[Entry] = []
    for entry in entries:
        event = entry[0]
        if event.row is not None and len(event.prediction_ids) == 1:
            by_version.setdefault(event.model_version, []).append(entry)
        else:
            rest.append(entry)
    return by_version, rest


def _gather(version: str, entries: list[Entry]) -> GatheredSingles | None:
    events = list(map(_FIRST, entries))
    names = tuple(events[0].columns)
    rows: list[tuple[Any, ...]] = list(map(_ROW, events))
    # Every event of one version lists its features in schema order (see ``transpose``).
    if tuple(events[-1].columns) != names or set(map(len, rows)) != {len(names)}:
        return None
    size = len(events)
    scores = np.concatenate(list(map(_SCORES, events))).astype(np.float64, copy=False)
    decisions = np.concatenate(list(map(_DECISIONS, events))).astype(bool, copy=False)
    if len(scores) != size or len(decisions) != size:
        return None
    latencies = [
        latency if latency is not None else float(sum(event.stage_seconds.values())) for event, latency in entries
    ]
    return GatheredSingles(
        model_version=version,
        names=names,
        timestamps=list(map(_TIMESTAMP, events)),
        latencies=latencies,
        prediction_ids=list(map(_FIRST, map(_PREDICTION_IDS, events))),
        customer_ids=list(map(_FIRST, map(_CUSTOMER_IDS, events))),
        rows=rows,
        scores=scores,
        decisions=decisions,
        risk_bands=list(map(_FIRST, map(_RISK_BANDS, events))),
    )
