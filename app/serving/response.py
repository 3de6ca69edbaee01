"""The shape of a prediction call's answer: the scored records by column and the records refused."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.monitoring.events import PredictionEvent
from bundle.records import RecordError


@dataclass(slots=True)
class ScoredRecords:
    """The predictions of one call's valid records, by column, in input order."""

    indices: list[int]
    customer_ids: list[str | None]
    prediction_ids: list[str]
    probabilities: list[float]
    decisions: list[bool]
    risk_bands: list[str]
    actions: list[list[str]]
    warnings: list[list[str]]
    reasons: list[list[dict[str, Any]]] | None  # None when not requested
    model_version: str

    def dicts(self) -> list[dict[str, Any]]:
        """Each prediction as the API returns it (``PredictionOut``)."""
        version = self.model_version
        columns = (
            self.customer_ids,
            self.prediction_ids,
            self.probabilities,
            self.decisions,
            self.risk_bands,
            self.actions,
            self.warnings,
        )
        rows = [
            {
                "customer_id": customer,
                "prediction_id": prediction,
                "churn_probability": probability,
                "predicted_churn": decision,
                "risk_category": band,
                "recommended_actions": actions,
                "warnings": warnings,
                "model_version": version,
            }
            for customer, prediction, probability, decision, band, actions, warnings in zip(*columns, strict=True)
        ]
        if self.reasons is not None:
            for row, reasons in zip(rows, self.reasons, strict=True):
                row["top_reasons"] = reasons
        return rows


@dataclass(slots=True)
class PredictionOutcome:
    """The scored records, the records that could not be scored, and the event for monitoring."""

    scored: ScoredRecords | None
    errors: list[RecordError]
    event: PredictionEvent | None
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.errors) + (len(self.scored.indices) if self.scored is not None else 0)

    def result_dicts(self, error_dict: Callable[[RecordError], dict[str, Any]]) -> list[dict[str, Any]]:
        """One result per input record, in input order: a prediction or ``error_dict`` of its error."""
        predictions = self.scored.dicts() if self.scored is not None else []
        if not self.errors:
            return predictions
        results: list[Any] = [None] * self.count
        for error in self.errors:
            results[error.index] = error_dict(error)
        for index, prediction in zip(self.scored.indices if self.scored else [], predictions, strict=True):
            results[index] = prediction
        return results
