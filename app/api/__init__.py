"""HTTP routes, one module per resource, and the dependencies they share (as Annotated aliases).

Dependencies are ``async`` on purpose: FastAPI runs plain ``def`` dependencies in a thread pool,
which would cost more than the whole prediction on the single-record hot path.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.routing import BaseRoute

from app.api.errors import ModelUnavailable
from app.serving.predictor import Predictor
from app.settings import Settings


async def app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def app_monitor(request: Request) -> Any:
    return request.app.state.monitor


def serving_predictor(request: Request) -> Predictor:
    """The predictor serving now; the request keeps this reference even if a reload swaps it."""
    predictor = request.app.state.predictor
    if predictor is None:
        raise ModelUnavailable(request.app.state.model_error or "the model is still loading")
    return predictor


async def loaded_predictor(request: Request) -> Predictor:
    return serving_predictor(request)


SettingsDep = Annotated[Settings, Depends(app_settings)]
MonitorDep = Annotated[Any, Depends(app_monitor)]
PredictorDep = Annotated[Predictor, Depends(loaded_predictor)]


def api_routes() -> list[BaseRoute]:
    """Every API route, the busiest first (routes are matched in order).

    The app takes them as its own routes rather than through ``include_router``: FastAPI walks every
    included router again on each request, which costs a single-record prediction a quarter of
    the framework's own time.
    """
    from app.api import admin, health, metadata, predict

    return [route for module in (predict, health, metadata, admin) for route in module.router.routes]
