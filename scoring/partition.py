"""One partition scored on a worker: raw rows -> the service's predictor -> output and error tables.

Rows go through ``Predictor.predict_records`` exactly as ``/predict/batch`` records do. Columns the
bundle does not know are left out of the records (a table may carry more than the model reads) and
named in the report. A row the cleaner refuses becomes an error row with its reasons; if scoring
itself fails, the partition is scored row by row so only the rows that fail become error rows.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from app.monitoring.drift import DriftLayout
from app.serving.predictor import Predictor
from app.serving.response import PredictionOutcome
from bundle.records import FieldError, RecordError
from scoring.shipping import ScoringPolicy, ShippedBundle, worker_predictors
from training.data import as_raw_objects

logger = logging.getLogger(__name__)

SCORED_FIELDS = [
    pa.field("customer_id", pa.string()),
    pa.field("partition", pa.int64()),
    pa.field("row", pa.int64()),
    pa.field("churn_probability", pa.float64()),
    pa.field("predicted_churn", pa.bool_()),
    pa.field("risk_category", pa.string()),
    pa.field("model_version", pa.string()),
    pa.field("scored_at", pa.timestamp("us", tz="UTC")),
]
REASONS_FIELD = pa.field("top_reasons", pa.string())  # JSON: [{"feature", "value", "contribution"}, ...]
ERROR_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string()),
        pa.field("partition", pa.int64()),
        pa.field("row", pa.int64()),
        pa.field("reason", pa.string()),
    ]
)


def scored_schema(reasons: bool) -> pa.Schema:
    return pa.schema([*SCORED_FIELDS, *([REASONS_FIELD] if reasons else [])])


@dataclass
class PartitionReport:
    """What one partition contributed: counts for the summary, kept beside its output for reruns."""

    number: int
    rows: int
    scored: int
    errors: int
    risk_bands: dict[str, int]
    probability_sum: float
    bin_counts: list[int]  # the service's drift layout: every feature's bins, the score's, the decisions
    ignored_columns: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> PartitionReport:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class PartitionTask:
    """Everything a worker needs besides the rows; sent with every partition, so it holds no bundle."""

    policy: ScoringPolicy
    reasons: bool
    sink: Any  # a scoring.sinks destination


def score_partition(frame: pd.DataFrame, number: int, bundle: ShippedBundle, task: PartitionTask) -> PartitionReport:
    """Score one partition, write its output and errors, and return its report."""
    predictor = worker_predictors.get(bundle, task.policy)
    records, ignored = customer_records(frame, predictor.cleaner.allowed)
    pieces = predict(predictor, records, task.reasons)
    scored_at = datetime.now(UTC)
    scored = scored_table(pieces, number, scored_at, task.reasons)
    errors = error_table(pieces, number)
    layout = DriftLayout.from_reference(predictor.version, predictor.manifest.drift_reference, predictor.threshold)
    events = [outcome.event for _, outcome in pieces if outcome.event is not None]
    counts = layout.bin_counts(events) if events else np.zeros(layout.width - 1, dtype=np.int64)
    bands = pd.Series(scored.column("risk_category").to_pylist(), dtype=object).value_counts()
    report = PartitionReport(
        number=number,
        rows=len(records),
        scored=scored.num_rows,
        errors=errors.num_rows,
        risk_bands={str(band): int(count) for band, count in bands.items()},
        probability_sum=float(np.sum(scored.column("churn_probability").to_numpy())),
        bin_counts=counts.tolist(),
        ignored_columns=ignored,
    )
    task.sink.write(number, scored, errors, report)
    return report


def customer_records(frame: pd.DataFrame, allowed: frozenset[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows as the records a client would send (raw values, the bundle's columns only), and the
    names of the columns left out."""
    stripped = [str(name).strip() for name in frame.columns]
    keep = [name in allowed for name in stripped]
    ignored = sorted(name for name, kept in zip(stripped, keep, strict=True) if not kept)
    raw = as_raw_objects(frame.loc[:, keep])
    names = list(raw.columns)
    if not names:
        return [{} for _ in range(len(raw))], ignored
    # Zipped from column lists: DataFrame.to_dict("records") does per-cell work that costs more.
    return list(map(dict, map(zip, repeat(names), zip(*(raw[name].tolist() for name in names), strict=True)))), ignored


def predict(predictor: Predictor, records: list[dict[str, Any]], reasons: bool) -> list[tuple[int, PredictionOutcome]]:
    """The outcome of the whole partition, or of each row alone if scoring the partition fails."""
    if not records:
        return []
    try:
        return [(0, predictor.predict_records(records, explain=reasons))]
    except Exception:
        logger.exception("scoring a partition failed; scoring its %d rows one by one", len(records))
    pieces = []
    for row, record in enumerate(records):
        try:
            pieces.append((row, predictor.predict_records([record], explain=reasons)))
        except Exception as exc:
            problem = FieldError((), f"could not be scored: {type(exc).__name__}: {exc}", "scoring_error")
            pieces.append(
                (row, PredictionOutcome(None, [RecordError(0, _record_id(record, predictor), [problem])], None))
            )
    return pieces


def _record_id(record: dict[str, Any], predictor: Predictor) -> str | None:
    for key in predictor.cleaner.id_keys:
        if record.get(key) is not None:
            return str(record[key])
    return None


def scored_table(
    pieces: list[tuple[int, PredictionOutcome]], number: int, scored_at: datetime, reasons: bool
) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in scored_schema(reasons).names}
    for offset, outcome in pieces:
        scored = outcome.scored
        if scored is None:
            continue
        size = len(scored.indices)
        columns["customer_id"] += scored.customer_ids
        columns["partition"] += [number] * size
        columns["row"] += [offset + index for index in scored.indices]
        columns["churn_probability"] += scored.probabilities
        columns["predicted_churn"] += scored.decisions
        columns["risk_category"] += scored.risk_bands
        columns["model_version"] += [scored.model_version] * size
        columns["scored_at"] += [scored_at] * size
        if reasons:
            columns["top_reasons"] += [json.dumps(row, default=str) for row in scored.reasons or [[]] * size]
    return pa.Table.from_pydict(columns, schema=scored_schema(reasons))


def error_table(pieces: list[tuple[int, PredictionOutcome]], number: int) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in ERROR_SCHEMA.names}
    for offset, outcome in pieces:
        for error in outcome.errors:
            columns["customer_id"].append(error.customer_id)
            columns["partition"].append(number)
            columns["row"].append(offset + error.index)
            columns["reason"].append(error_reason(error))
    return pa.Table.from_pydict(columns, schema=ERROR_SCHEMA)


def error_reason(error: RecordError) -> str:
    """A record's problems in one line: ``field: message; ...``."""
    parts = []
    for problem in error.listed_errors():
        where = ".".join(str(part) for part in problem.loc)
        parts.append(f"{where}: {problem.msg}" if where else problem.msg)
    return "; ".join(parts)
