"""The training table the prediction log can give: each labelled prediction's inputs and its outcome.

Reads ``prediction_log`` joined with ``prediction_outcome`` (the tables of
:mod:`app.monitoring.log_store`) in chunks, keeping only what was known at the cut-off: predictions
made before it, with an outcome received and last corrected before it, so no later answer leaks into
the past. Each customer counts once, by their latest labelled prediction; predictions without a
customer id are kept as they are. The inputs JSON becomes one column per feature, the outcome the
target column with the bundle's own labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import pandas as pd
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from bundle.features import FeatureSchema
from bundle.redaction import redact_text
from training.data import TrainingDataError

CHUNK_ROWS = 50_000
PREDICTED_AT = "predicted_at"
PREDICTION_ID = "prediction_id"
CUSTOMER_KEY = "customer_id"  # the log's own customer column, whatever the table called it
# Labels for "stayed" when only the churn label is known: the target vector only compares with the
# churn label, so any other text reads as "stayed"; a matching pair keeps the table readable.
NEGATIVE_OF = {"yes": "No", "true": "False", "1": "0", "y": "N", "churned": "Stayed"}


@dataclass
class LogTable:
    """The log's labelled, de-duplicated rows (features, target, ``predicted_at``, ``customer_id``)."""

    frame: pd.DataFrame
    labelled: int  # labelled predictions before de-duplication
    duplicates: int  # older labelled predictions of a customer dropped for their latest one
    late_outcomes: int  # outcomes received or corrected after the cut-off, left out
    versions: list[str]  # model versions that made the kept predictions


def negative_label(positive: Any) -> str:
    text = str(positive)
    return NEGATIVE_OF.get(text.strip().lower(), f"not {text}")


def read_log_table(database_url: str, schema: FeatureSchema, cutoff: float, chunk_rows: int = CHUNK_ROWS) -> LogTable:
    """The labelled log rows known at ``cutoff`` (UNIX seconds); TrainingDataError when unreadable."""
    from app.monitoring.log_store import make_engine, outcomes_table, predictions_table

    log, outcome = predictions_table, outcomes_table
    before = (log.c.predicted_at < cutoff) & (outcome.c.received_at < cutoff)
    query = (
        select(log.c.prediction_id, log.c.predicted_at, log.c.customer_id, log.c.model_version, log.c.inputs)
        .add_columns(outcome.c.churned, outcome.c.updated_at)
        .join(outcome, outcome.c.prediction_id == log.c.prediction_id)
        .where(before)
    )
    kept = pd.DataFrame()
    labelled = late = 0
    try:
        engine = make_engine(database_url)
        with engine.connect() as connection:
            result = connection.execution_options(stream_results=True, yield_per=chunk_rows).execute(query)
            for rows in result.partitions(chunk_rows):
                chunk = pd.DataFrame(rows, columns=list(result.keys()))
                corrected_late = chunk["updated_at"] >= cutoff
                late += int(corrected_late.sum())
                chunk = chunk[~corrected_late]
                labelled += len(chunk)
                kept = latest_per_customer(pd.concat([kept, chunk], ignore_index=True))
        late += count_late_outcomes(engine, cutoff)
        engine.dispose()
    except SQLAlchemyError as exc:
        raise TrainingDataError(f"cannot read the prediction log: {redact_text(condensed(exc))}") from None
    versions = sorted(set(kept["model_version"])) if len(kept) else []
    return LogTable(
        frame=expand(kept, schema),
        labelled=labelled,
        duplicates=labelled - len(kept),
        late_outcomes=late,
        versions=versions,
    )


def count_late_outcomes(engine: Any, cutoff: float) -> int:
    """Outcomes of predictions made before the cut-off that arrived after it."""
    from sqlalchemy import func

    from app.monitoring.log_store import outcomes_table, predictions_table

    log, outcome = predictions_table, outcomes_table
    query = (
        select(func.count())
        .select_from(log.join(outcome, outcome.c.prediction_id == log.c.prediction_id))
        .where((log.c.predicted_at < cutoff) & (outcome.c.received_at >= cutoff))
    )
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def condensed(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def latest_per_customer(frame: pd.DataFrame) -> pd.DataFrame:
    """Each customer's latest prediction (ties broken by prediction id); rows without an id all kept."""
    if frame.empty:
        return frame
    frame = frame.sort_values([PREDICTED_AT, PREDICTION_ID], kind="stable", ignore_index=True)
    anonymous = frame[CUSTOMER_KEY].isna()
    known = frame[~anonymous].drop_duplicates(CUSTOMER_KEY, keep="last")
    return pd.concat([known, frame[anonymous]]).sort_values([PREDICTED_AT, PREDICTION_ID], ignore_index=True)


def expand(rows: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """One column per logged input, the target with the bundle's labels, the time and the customer id."""
    records = [decode_inputs(text, schema) for text in rows.get("inputs", [])]
    features = pd.DataFrame.from_records(records, index=range(len(records))) if records else pd.DataFrame()
    positive = str(schema.positive_label)
    out = features.astype(object).where(features.notna(), None) if len(features.columns) else features
    out[schema.target] = [positive if churned else negative_label(positive) for churned in rows.get("churned", [])]
    out[CUSTOMER_KEY] = list(rows.get(CUSTOMER_KEY, []))
    out[PREDICTED_AT] = list(rows.get(PREDICTED_AT, []))
    return out


def decode_inputs(text: str, schema: FeatureSchema) -> dict[str, Any]:
    """A logged record as a table row: booleans written back with the labels the table used."""
    try:
        record = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(record, dict):
        return {}
    for name, value in record.items():
        if isinstance(value, bool) and name in schema:
            spec = schema[name]
            label = spec.true_label if value else spec.false_label
            record[name] = label if label is not None else value
    return record
