"""POST /admin/reload: load the newest ``current`` bundle and swap it in, or keep serving the old one."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.errors import json_response
from app.predictor import build_predictor
from app.request_schema import MessageOut, ReloadOut
from app.routes import MonitorDep, SettingsDep
from app.security import ApiKeyRequired
from models.bundle import BundleError

router = APIRouter(tags=["admin"])


@router.post(
    "/admin/reload",
    summary="Load, verify and warm the current bundle, then swap it in atomically",
    responses={
        200: {"model": ReloadOut},
        401: {"model": MessageOut},
        403: {"model": MessageOut},
        409: {"model": MessageOut, "description": "The new bundle is unusable; the previous model keeps serving"},
    },
)
async def reload_model(request: Request, _: ApiKeyRequired, settings: SettingsDep, monitor: MonitorDep) -> Response:
    state = request.app.state
    # One reload at a time; requests keep being served by the old predictor meanwhile.
    async with state.reload_lock:
        previous = state.predictor
        try:
            # Built and warmed fully off to the side (and off the event loop) before anyone sees it.
            candidate = await run_in_threadpool(build_predictor, settings)
        except BundleError as exc:
            monitor.reload_attempted(False)
            serving = f"still serving {previous.version}" if previous else "no model is serving"
            return json_response({"detail": f"reload failed, {serving}: {exc}"}, status.HTTP_409_CONFLICT)
        # One reference assignment: atomic, and in-flight requests hold their own reference to the old one.
        state.predictor = candidate
        state.model_error = None
        request.app.openapi_schema = None  # the request schema follows the new bundle
        monitor.reload_attempted(True)
        monitor.model_loaded(candidate.manifest)
    return json_response(
        {
            "status": "reloaded",
            "model_version": candidate.version,
            "previous_version": previous.version if previous else None,
            "load_seconds": round(candidate.load_seconds, 4),
        }
    )
