"""Actual outcomes (feedback) joined to logged predictions.

Outcomes arrive weeks after the prediction. Each names either the ``prediction_id`` it is about,
or a ``customer_id``, which attaches to that customer's most recent logged prediction. An outcome
is stored once per prediction: sending the same outcome again is a *duplicate* and changes
nothing; sending a different outcome for the same prediction *updates* it (the latest word wins,
and the realized metrics follow).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator
from sqlalchemy import and_, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from app.monitoring.log_store import outcomes_table, predictions_table
from app.monitoring.performance import RealizedPerformance

MAX_OUTCOMES_PER_CALL = 50_000
IN_CLAUSE_CHUNK = 500  # stays well under SQLite's bound-parameter limit
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"  # identifiers never hold control characters (PostgreSQL rejects NUL)


# ---- request and response bodies ----------------------------------------------------------------
class OutcomeIn(BaseModel):
    """One actual outcome: exactly one of ``prediction_id`` or ``customer_id``, and whether the customer churned."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    prediction_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=PRINTABLE)
    customer_id: str | None = Field(default=None, min_length=1, max_length=256, pattern=PRINTABLE)
    churned: bool

    @field_validator("customer_id", mode="before")
    @classmethod
    def _integer_id_as_text(cls, value: Any) -> Any:
        # /predict takes an integer customer id (a table's numeric id column) and logs it as text.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @model_validator(mode="after")
    def _exactly_one_reference(self) -> OutcomeIn:
        if (self.prediction_id is None) == (self.customer_id is None):
            raise ValueError("give exactly one of prediction_id or customer_id")
        return self


class FeedbackBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcomes: list[OutcomeIn] = Field(min_length=1, max_length=MAX_OUTCOMES_PER_CALL)


def _feedback_shape(value: Any) -> str:
    # A body with "outcomes" is a bulk upload; anything else is validated as one outcome, so
    # errors point at the fields of the shape the client meant.
    if isinstance(value, dict) and "outcomes" in value:
        return "batch"
    if isinstance(value, FeedbackBatch):
        return "batch"
    return "single"


FeedbackBody = Annotated[
    Annotated[FeedbackBatch, Tag("batch")] | Annotated[OutcomeIn, Tag("single")],
    Discriminator(_feedback_shape),
]


def outcomes_of(body: FeedbackBatch | OutcomeIn) -> list[OutcomeIn]:
    return body.outcomes if isinstance(body, FeedbackBatch) else [body]


class OutcomeResult(BaseModel):
    prediction_id: str | None
    customer_id: str | None
    churned: bool


class FeedbackResult(BaseModel):
    received: int
    matched: list[OutcomeResult] = Field(description="outcomes recorded for the first time")
    updated: list[OutcomeResult] = Field(description="outcomes that changed an earlier outcome of the same prediction")
    duplicates: list[OutcomeResult] = Field(description="outcomes already recorded with the same value (ignored)")
    unknown: list[OutcomeResult] = Field(description="outcomes naming no logged prediction")
    performance: RealizedPerformance | None = None


# ---- joining outcomes to predictions -------------------------------------------------------------
def _chunks(values: Sequence[str]) -> Iterable[list[str]]:
    unique = list(dict.fromkeys(values))
    for start in range(0, len(unique), IN_CLAUSE_CHUNK):
        yield unique[start : start + IN_CLAUSE_CHUNK]


def _known_predictions(connection: Connection, prediction_ids: list[str]) -> dict[str, str | None]:
    """prediction id -> its customer id, for the ids that are logged."""
    table = predictions_table.c
    found: dict[str, str | None] = {}
    for chunk in _chunks(prediction_ids):
        rows = connection.execute(select(table.prediction_id, table.customer_id).where(table.prediction_id.in_(chunk)))
        found.update({row.prediction_id: row.customer_id for row in rows})
    return found


def _latest_predictions(connection: Connection, customer_ids: list[str]) -> dict[str, str]:
    """customer id -> id of that customer's most recent logged prediction."""
    table = predictions_table.c
    found: dict[str, str] = {}
    for chunk in _chunks(customer_ids):
        latest = (
            select(table.customer_id, func.max(table.predicted_at).label("latest"))
            .where(table.customer_id.in_(chunk))
            .group_by(table.customer_id)
            .subquery()
        )
        rows = connection.execute(
            select(table.customer_id, table.prediction_id)
            .join(latest, and_(table.customer_id == latest.c.customer_id, table.predicted_at == latest.c.latest))
            .order_by(table.customer_id, table.prediction_id)
        )
        for row in rows:  # several predictions in the same instant: the last id, deterministically
            found[row.customer_id] = row.prediction_id
    return found


def _recorded_outcomes(connection: Connection, prediction_ids: list[str]) -> dict[str, bool]:
    table = outcomes_table.c
    found: dict[str, bool] = {}
    for chunk in _chunks(prediction_ids):
        rows = connection.execute(select(table.prediction_id, table.churned).where(table.prediction_id.in_(chunk)))
        found.update({row.prediction_id: bool(row.churned) for row in rows})
    return found


def _apply_once(connection: Connection, outcomes: list[OutcomeIn], now: float) -> FeedbackResult:
    by_prediction = _known_predictions(connection, [o.prediction_id for o in outcomes if o.prediction_id])
    by_customer = _latest_predictions(connection, [o.customer_id for o in outcomes if o.customer_id])
    targets = [
        by_customer.get(o.customer_id)
        if o.customer_id
        else (o.prediction_id if o.prediction_id in by_prediction else None)
        for o in outcomes
    ]
    recorded = _recorded_outcomes(connection, [t for t in targets if t])
    state = dict(recorded)
    result = FeedbackResult(received=len(outcomes), matched=[], updated=[], duplicates=[], unknown=[])
    for outcome, target in zip(outcomes, targets, strict=True):
        customer = outcome.customer_id or by_prediction.get(outcome.prediction_id or "")
        entry = OutcomeResult(
            prediction_id=target or outcome.prediction_id, customer_id=customer, churned=outcome.churned
        )
        if target is None:
            result.unknown.append(entry)
        elif target not in state:
            result.matched.append(entry)
        elif state[target] == outcome.churned:
            result.duplicates.append(entry)
        else:
            result.updated.append(entry)
        if target is not None:
            state[target] = outcome.churned
    new = [
        {"prediction_id": t, "churned": v, "received_at": now, "updated_at": now}
        for t, v in state.items()
        if t not in recorded
    ]
    changed = [(t, v) for t, v in state.items() if t in recorded and recorded[t] != v]
    if new:
        connection.execute(outcomes_table.insert(), new)
    for prediction_id, churned in changed:
        connection.execute(
            update(outcomes_table)
            .where(outcomes_table.c.prediction_id == prediction_id)
            .values(churned=churned, updated_at=now)
        )
    return result


def apply_outcomes(begin: Any, outcomes: list[OutcomeIn], now: float) -> FeedbackResult:
    """Join and store outcomes in one transaction (``begin()`` opens it).

    A sibling worker storing an outcome for the same prediction at the same moment makes the insert
    collide; the whole call is then retried once and sees that outcome as recorded.
    """
    try:
        with begin() as connection:
            return _apply_once(connection, outcomes, now)
    except IntegrityError:
        with begin() as connection:
            return _apply_once(connection, outcomes, now)


FeedbackStatus = Literal["matched", "unknown", "duplicate"]


def status_counts(result: FeedbackResult) -> dict[FeedbackStatus, int]:
    """Counter increments: an updated outcome matched a prediction, so it counts as matched."""
    return {
        "matched": len(result.matched) + len(result.updated),
        "unknown": len(result.unknown),
        "duplicate": len(result.duplicates),
    }
