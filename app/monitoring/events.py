"""What the prediction path hands to monitoring: one event per /predict or /predict/batch call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any, NamedTuple

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
    """The single records of one drain and one model version, gathered into one batch.

    ``/predict`` traffic arrives one record per event. Counted, binned and logged record by record,
    each costs a Python round of every step; gathered (one transposition of the records), the steps
    run once over all of them, as for a ``/predict/batch`` call. Unlike a batch, each record keeps
    its own time and request latency.
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


# ---- single records, as the monitor keeps them until its drain ----------------------------------------
class SingleRecord(NamedTuple):
    """A /predict record reduced to plain values when it is recorded.

    The monitor keeps its records until the next drain (a hundred or so requests later). Kept
    whole, each event's dictionaries, arrays and lists stay allocated meanwhile, and every request
    allocates new memory instead of reusing what the one before just freed: in one process that
    cost more than the drain itself. Reduced to this tuple, the event is freed with its request.
    """

    timestamp: float
    model_version: str
    names: tuple[str, ...]  # the features of ``row``, in schema order (one shared tuple per model version)
    prediction_id: str
    customer_id: str | None
    row: tuple[Any, ...]
    score: float
    decision: bool
    risk_band: str
    stage_seconds: dict[str, float]
    latency: float | None  # the request's latency; None when unknown (recorded outside a request)
    warned: PredictionEvent | None  # the event itself when it has warnings to count, else None


def single_record(event: PredictionEvent, latency: float | None, names: tuple[str, ...]) -> SingleRecord:
    """``event`` (one record with its row of values, features ``names``) as a :class:`SingleRecord`.

    Raises (IndexError, ValueError, AttributeError) when the event is not shaped like one: the
    caller keeps such an event whole.
    """
    if event.row is None or len(event.prediction_ids) != 1 or len(event.row) != len(names):
        raise ValueError("not a single record with its row")
    warned = event if event.imputed or event.unseen or event.out_of_range else None
    # tuple.__new__ straight away: the named tuple's own constructor is a Python function, several
    # times slower, on every request.
    return tuple.__new__(
        SingleRecord,
        (
            event.timestamp,
            event.model_version,
            names,
            event.prediction_ids[0],
            event.customer_ids[0],
            event.row,
            event.scores.item(0),
            bool(event.decisions.item(0)),
            event.risk_bands[0],
            event.stage_seconds,
            latency,
            warned,
        ),
    )


_MODEL_VERSION = itemgetter(1)
_NAMES = itemgetter(2)


def gather_records(records: list[SingleRecord]) -> list[GatheredSingles]:
    """Single records gathered into one batch per model version (in the order versions first appear)."""
    versions = set(map(_MODEL_VERSION, records))
    if len(versions) == 1:  # the usual drain: /predict traffic of one model
        by_version = {versions.pop(): records}
    else:
        by_version = {}
        for record in records:
            by_version.setdefault(record.model_version, []).append(record)
    return [_gather(version, group) for version, group in by_version.items()]


def _gather(version: str, records: list[SingleRecord]) -> GatheredSingles:
    names = records[0].names
    if len(set(map(_NAMES, records))) != 1:  # a version's events all list their features in schema order
        raise ValueError(f"records of model {version} name their features differently")
    (timestamps, _, _, prediction_ids, customer_ids, rows, scores, decisions, bands, stages, latencies, _) = map(
        list, zip(*records, strict=True)
    )
    if None in latencies:  # unknown request latency: the stages' sum stands in, as for a batch
        latencies = [
            latency if latency is not None else float(sum(seconds.values()))
            for latency, seconds in zip(latencies, stages, strict=True)
        ]
    return GatheredSingles(
        model_version=version,
        names=names,
        timestamps=timestamps,
        latencies=latencies,
        prediction_ids=prediction_ids,
        customer_ids=customer_ids,
        rows=rows,
        scores=np.array(scores, dtype=np.float64),
        decisions=np.array(decisions, dtype=bool),
        risk_bands=bands,
    )
