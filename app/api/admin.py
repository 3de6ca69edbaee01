"""POST /admin/reload: bring every worker to the newest ``current`` bundle, or keep serving the old one.

The worker that takes the request loads, verifies, warms and swaps in the bundle and announces it;
the other workers follow (``app.serving.reload``). The answer waits until every live worker reports the
new version, so it tells what the whole service serves.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Request, status
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from app.api import MonitorDep
from app.api.errors import MessageOut, json_response
from app.api.schemas import ChallengerOut, ReloadOut
from app.api.security import ApiKeyRequired
from app.serving.challenger import Routing, describe_challenger
from app.serving.reload import Reloaded, WorkerReport, await_workers, reload_service
from bundle.manifest import BundleError

router = APIRouter(tags=["admin"])


class WorkerOut(BaseModel):
    pid: int
    generation: int
    model_version: str | None
    error: str | None = None


class ServiceReloadOut(ReloadOut):
    workers: list[WorkerOut]
    challenger: ChallengerOut | None = None
    detail: str | None = None


# Admin calls carry no body worth more; bounded before the key is checked.
ADMIN_MAX_BODY_BYTES = 64 * 1024


@router.post(
    "/admin/reload",
    max_body_size=ADMIN_MAX_BODY_BYTES,
    summary="Load, verify and warm the current bundle, then swap it in atomically in every worker",
    responses={
        200: {"model": ServiceReloadOut, "description": "Every worker serves the new version"},
        202: {"model": ServiceReloadOut, "description": "Swapped; some workers had not switched when the wait ended"},
        401: {"model": MessageOut},
        403: {"model": MessageOut},
        409: {"model": MessageOut, "description": "The new bundle is unusable; the previous model keeps serving"},
        500: {"model": ServiceReloadOut, "description": "Some workers could not load the new bundle; detail says why"},
    },
)
async def reload_model(request: Request, _: ApiKeyRequired, monitor: MonitorDep) -> Response:
    return await reload_everywhere(request, monitor, None)


class ChallengerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["off", "shadow", "canary"] = Field(
        description="off: champion alone; shadow: the challenger also scores calls, never answers; canary: it answers"
    )
    share: float = Field(1.0, ge=0.0, le=1.0, description="shadow: share of calls; canary: share of customers")


@router.post(
    "/admin/challenger",
    max_body_size=ADMIN_MAX_BODY_BYTES,
    summary="Set how the challenger takes part (shadow, canary share or off), in every worker",
    description=(
        "Reloads what ``current`` and ``challenger`` name with the new routing, like /admin/reload. A challenger "
        "that fails verification or warm-up is refused (``challenger.error`` says why) and the champion serves alone."
    ),
    responses={
        200: {"model": ServiceReloadOut},
        202: {"model": ServiceReloadOut},
        401: {"model": MessageOut},
        403: {"model": MessageOut},
        409: {"model": MessageOut, "description": "The champion's bundle is unusable; nothing changed"},
        500: {"model": ServiceReloadOut},
    },
)
async def set_challenger(request: Request, routing: ChallengerIn, _: ApiKeyRequired, monitor: MonitorDep) -> Response:
    return await reload_everywhere(request, monitor, Routing(routing.mode, routing.share))


async def reload_everywhere(request: Request, monitor: Any, routing: Routing | None) -> Response:
    app = request.app
    try:
        reloaded = await reload_service(app, routing)
    except BundleError as exc:
        monitor.reload_attempted(False)
        serving = app.state.predictor
        still = f"still serving {serving.version}" if serving else "no model is serving"
        return json_response({"detail": f"reload failed, {still}: {exc}"}, status.HTTP_409_CONFLICT)
    # Counted once per reload of the service, not once per worker that follows it.
    monitor.reload_attempted(True)
    state = app.state
    challenger = describe_challenger(state.challenger, state.routing, state.challenger_error)
    return reload_answer(reloaded, await await_workers(app, reloaded), challenger)


def reload_answer(
    reloaded: Reloaded, reports: list[WorkerReport], challenger: dict[str, Any] | None = None
) -> Response:
    """200 when every worker serves the new version; 500 when one failed to; 202 when one is still loading."""
    body = {
        "challenger": challenger,
        "status": "reloaded",
        "model_version": reloaded.predictor.version,
        "previous_version": reloaded.previous_version,
        "load_seconds": round(reloaded.predictor.load_seconds, 4),
        "workers": [asdict(report) for report in reports],
    }
    handled = [report for report in reports if report.generation >= reloaded.generation]
    failed = [report for report in handled if report.error]
    pending = [report for report in reports if report.generation < reloaded.generation]
    if failed:
        reasons = "; ".join(f"worker {r.pid} still serves {r.model_version}: {r.error}" for r in failed)
        body.update(status="incomplete", detail=f"reload incomplete: {reasons}")
        return json_response(body, status.HTTP_500_INTERNAL_SERVER_ERROR)
    if pending:
        waiting = ", ".join(str(report.pid) for report in pending)
        body.update(status="propagating", detail=f"workers {waiting} had not switched yet; they follow shortly")
        return json_response(body, status.HTTP_202_ACCEPTED)
    return json_response(body)
