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
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from bundle.features import FeatureSchema
from bundle.redaction import redact_text
from training.data import TrainingDataError

CHUNK_ROWS = 50_000
PREDICTED_AT = "predicted_at"
CUSTOMER_KEY = "customer_id"  # the log's own customer column, whatever the table called it
# Labels for "stayed" when only the churn label is known: the target vector only compares with the
# churn label, so any other text reads as "stayed"; a matching pair keeps the table readable.
NEGATIVE_OF = {"yes": "No", "true": "False", "1": "0", "y": "N", "churned": "Stayed"}


@dataclass
class LogTable:
    """The log's labelled, de-duplicated rows (features, target, ``predicted_at``, ``customer_id``)."""

    frame: pd.DataFrame
    labelled: int  # labelled predictions known at the cut-off, before de-duplication
    duplicates: int  # older labelled predictions of a customer dropped for their latest one
    late_outcomes: int  # outcomes of earlier predictions received or corrected after the cut-off, left out
    versions: list[str]  # model versions that made the kept predictions


def negative_label(positive: Any) -> str:
    text = str(positive)
    return NEGATIVE_OF.get(text.strip().lower(), f"not {text}")


def read_log_table(database_url: str, schema: FeatureSchema, cutoff: float, chunk_rows: int = CHUNK_ROWS) -> LogTable:
    """The labelled log rows known at ``cutoff`` (UNIX seconds); TrainingDataError when unreadable.

    The database keeps each customer's latest labelled prediction (a window function, in SQLite and
    PostgreSQL alike), so only the kept rows travel, and each chunk is expanded into columns as it arrives.
    """
    from app.monitoring.log_store import make_engine

    chunks: list[pd.DataFrame] = []
    versions: set[str] = set()
    try:
        engine = make_engine(database_url)
        with engine.connect() as connection:
            labelled, late = counts(connection, cutoff)
            query = latest_labelled(cutoff)
            result = connection.execution_options(stream_results=True, yield_per=chunk_rows).execute(query)
            for rows in result.partitions(chunk_rows):
                chunk = pd.DataFrame(rows, columns=list(result.keys()))
                versions.update(chunk["model_version"])
                chunks.append(expand(chunk, schema))
        engine.dispose()
    except SQLAlchemyError as exc:
        raise TrainingDataError(f"cannot read the prediction log: {redact_text(condensed(exc))}") from None
    frame = pd.concat(chunks, ignore_index=True) if chunks else expand(pd.DataFrame(), schema)
    return LogTable(
        frame=frame, labelled=labelled, duplicates=labelled - len(frame), late_outcomes=late, versions=sorted(versions)
    )


def known_at(cutoff: float) -> Any:
    """Predictions made before the cut-off whose outcome was received and last corrected before it."""
    from app.monitoring.log_store import outcomes_table, predictions_table

    return (predictions_table.c.predicted_at < cutoff) & (outcomes_table.c.updated_at < cutoff)


def joined() -> Any:
    from app.monitoring.log_store import outcomes_table, predictions_table

    return predictions_table.join(outcomes_table, outcomes_table.c.prediction_id == predictions_table.c.prediction_id)


def counts(connection: Any, cutoff: float) -> tuple[int, int]:
    """(labelled predictions known at the cut-off, outcomes of earlier predictions that came later)."""
    from app.monitoring.log_store import outcomes_table, predictions_table

    late = (predictions_table.c.predicted_at < cutoff) & (outcomes_table.c.updated_at >= cutoff)
    labelled = connection.execute(select(func.count()).select_from(joined()).where(known_at(cutoff))).scalar_one()
    after = connection.execute(select(func.count()).select_from(joined()).where(late)).scalar_one()
    return int(labelled), int(after)


def latest_labelled(cutoff: float) -> Any:
    """Each customer's latest labelled prediction known at the cut-off (ties: the larger prediction id),
    and every labelled prediction without a customer id, oldest first."""
    from app.monitoring.log_store import outcomes_table, predictions_table

    log = predictions_table
    rank = func.row_number().over(
        partition_by=log.c.customer_id, order_by=(log.c.predicted_at.desc(), log.c.prediction_id.desc())
    )
    ranked = (
        select(log.c.prediction_id, log.c.predicted_at, log.c.customer_id, log.c.model_version, log.c.inputs)
        .add_columns(outcomes_table.c.churned, rank.label("recency"))
        .select_from(joined())
        .where(known_at(cutoff))
        .subquery()
    )
    return (
        select(*(column for column in ranked.c if column.name != "recency"))
        .where((ranked.c.recency == 1) | ranked.c.customer_id.is_(None))
        .order_by(ranked.c.predicted_at, ranked.c.prediction_id)
    )


def condensed(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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
