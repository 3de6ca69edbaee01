"""GET /health (liveness: the process answers) and GET /ready (a verified, warm model is loaded)."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from fastapi.responses import Response

from app.api.errors import json_response
from app.api.schemas import HealthOut, ReadyOut
from app.serving.challenger import describe_challenger

router = APIRouter(tags=["health"])

_HEALTHY = b'{"status":"ok"}'


@router.get("/health", summary="Liveness: cheap, never touches the model", responses={200: {"model": HealthOut}})
async def health() -> Response:
    return Response(_HEALTHY, media_type="application/json")


@router.get(
    "/ready",
    summary="Readiness: 200 only when a verified bundle is loaded and warm",
    responses={200: {"model": ReadyOut}, 503: {"model": ReadyOut, "description": "Not ready; the reason says why"}},
)
async def ready(request: Request) -> Response:
    if request.app.state.drain.draining:
        return json_response({"status": "not ready", "reason": "shutting down"}, status.HTTP_503_SERVICE_UNAVAILABLE)
    predictor = request.app.state.predictor
    if predictor is None:
        reason = request.app.state.model_error or "the model is still loading"
        return json_response({"status": "not ready", "reason": reason}, status.HTTP_503_SERVICE_UNAVAILABLE)
    state = request.app.state
    challenger = describe_challenger(state.challenger, state.routing, state.challenger_error)
    return json_response({"status": "ready", "model_version": predictor.version, "challenger": challenger})
