"""Monitoring endpoints: GET /metrics, POST /feedback (API key), GET /monitoring/report and
GET /monitoring/compare (API key when one is set)."""

from __future__ import annotations

import logging
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import SQLAlchemyError

from app.api.errors import MessageOut
from app.api.security import API_KEY_HEADER, ApiKeyRequired, require_api_key
from app.monitoring.compare import ProfitTerms
from app.monitoring.feedback import FeedbackBody, FeedbackResult, outcomes_of

if TYPE_CHECKING:
    from app.monitoring.monitor import Monitor

logger = logging.getLogger(__name__)

DISABLED_DETAIL = (
    "monitoring is disabled on this server (CHURN_MONITORING_ENABLED=false): "
    "no metrics, prediction log, feedback or report"
)
DATABASE_UNAVAILABLE = "the prediction log database is unavailable; try again later"
_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="When CHURN_API_KEY is set")


def api_key_if_configured(request: Request, supplied: Annotated[str | None, Depends(_api_key_header)]) -> None:
    """The API key check of ``require_api_key``, for reads that stay open on a server without a key."""
    if request.app.state.settings.api_key is not None:
        require_api_key(request, supplied)


ReportDate = Annotated[date | None, Query(alias="date", description="UTC day as YYYY-MM-DD; today (UTC) when omitted")]


def build_router(monitor: Monitor) -> APIRouter:
    router = APIRouter(tags=["monitoring"])

    @router.get("/metrics", response_class=Response, summary="Prometheus metrics (text exposition format)")
    def metrics() -> Response:
        # Sync on purpose: merging worker files reads from disk, so it runs in the thread pool.
        return Response(monitor.exposition(), media_type=CONTENT_TYPE_LATEST)

    @router.post(
        "/feedback",
        response_model=FeedbackResult,
        # FastAPI reads and parses a body before checking the key, so the body is bounded first.
        max_body_size=monitor.settings.max_feedback_body_bytes,
        summary="Record actual outcomes of earlier predictions",
        responses={
            401: {"model": MessageOut, "description": "Missing or wrong X-API-Key"},
            403: {"model": MessageOut, "description": "No API key is configured on the server (CHURN_API_KEY)"},
            503: {"model": MessageOut, "description": "The prediction log database is unavailable"},
        },
    )
    async def feedback(body: Annotated[FeedbackBody, Body()], _: ApiKeyRequired) -> FeedbackResult:
        try:
            return await run_in_threadpool(monitor.apply_feedback, outcomes_of(body))
        except SQLAlchemyError as exc:
            logger.error("feedback could not be stored: %s", exc)
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=DATABASE_UNAVAILABLE) from exc

    @router.get(
        "/monitoring/report",
        summary="Daily monitoring report (volume, latency, drift, realized performance)",
        responses={
            401: {"model": MessageOut, "description": "Missing or wrong X-API-Key (when CHURN_API_KEY is set)"},
            503: {"model": MessageOut, "description": "The prediction log database is unavailable"},
        },
        dependencies=[Depends(api_key_if_configured)],
    )
    def report(day: ReportDate = None) -> dict[str, Any]:
        try:
            return monitor.daily_report(day)
        except SQLAlchemyError as exc:
            logger.error("monitoring report failed: %s", exc)
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=DATABASE_UNAVAILABLE) from exc

    @router.get(
        "/monitoring/compare",
        summary="Champion against challenger on the same customers (shadow), and each model's answered traffic",
        description=(
            "Agreement of decisions, score shift and latency for every customer a challenger scored in shadow; "
            "once outcomes arrive through /feedback, each model's ROC-AUC, PR-AUC, precision, recall and (with "
            "saved_value and offer_cost) expected profit, the paired bootstrap interval of each difference and a "
            "verdict: better, worse, no clear difference, or not enough labels yet (with how many more are needed)."
        ),
        responses={
            401: {"model": MessageOut, "description": "Missing or wrong X-API-Key (when CHURN_API_KEY is set)"},
            422: {"model": MessageOut, "description": "Invalid parameters (saved_value and offer_cost go together)"},
            503: {"model": MessageOut, "description": "The prediction log database is unavailable"},
        },
        dependencies=[Depends(api_key_if_configured)],
    )
    def compare(
        days: Annotated[int, Query(ge=1, le=365, description="The window: predictions of the last days")] = 7,
        saved_value: Annotated[float | None, Query(gt=0, description="What keeping a churner is worth")] = None,
        offer_cost: Annotated[float | None, Query(ge=0, description="What one retention contact costs")] = None,
        acceptance_rate: Annotated[float, Query(gt=0, le=1, description="Share of contacted churners kept")] = 1.0,
    ) -> dict[str, Any]:
        if (saved_value is None) != (offer_cost is None):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, "give both saved_value and offer_cost, or neither"
            )
        profit = None if saved_value is None else ProfitTerms(saved_value, offer_cost or 0.0, acceptance_rate)
        try:
            return monitor.compare(days, profit)
        except SQLAlchemyError as exc:
            logger.error("champion/challenger comparison failed: %s", exc)
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=DATABASE_UNAVAILABLE) from exc

    return router


def build_disabled_router() -> APIRouter:
    """The same paths, each answering 404 with the reason, so clients learn why instead of guessing."""
    router = APIRouter(tags=["monitoring"])

    def disabled() -> None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=DISABLED_DETAIL)

    off: dict[int | str, dict[str, Any]] = {404: {"model": MessageOut, "description": "Monitoring is off"}}
    for path, method in (
        ("/metrics", "GET"),
        ("/feedback", "POST"),
        ("/monitoring/report", "GET"),
        ("/monitoring/compare", "GET"),
    ):
        router.add_api_route(path, disabled, methods=[method], summary="Disabled: monitoring is off", responses=off)
    return router
