"""The application factory and its lifespan.

Startup loads the ``current`` bundle once (checksums verified before anything is unpickled, then
a warm-up prediction). A missing or corrupt bundle never stops the process: it stays up, not
ready, and ``/ready`` and the log say exactly what is wrong until ``POST /admin/reload`` succeeds.
With several workers, each one also follows the reloads the others announce (see ``app.serving.reload``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool

from app.api import api_routes
from app.api import schemas as request_schema
from app.api.errors import install_error_handlers
from app.monitoring import create_monitor
from app.serving.challenger import Routing
from app.serving.predictor import build_predictor
from app.serving.reload import WorkerSync, follow_reloads, load_challenger_or_reason, swap_in_challenger
from app.serving.shadow import ShadowRunner
from app.settings import Settings, get_settings
from app.shutdown import Drain
from bundle.manifest import BundleError

logger = logging.getLogger("app")

DESCRIPTION = (
    "How likely is this customer to leave, why, and what should we do. The request schema below is "
    "generated from the loaded model bundle's feature schema; GET /metadata describes it too."
)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    monitor = create_monitor(settings)
    app = FastAPI(
        title="Churn prediction service",
        description=DESCRIPTION,
        version="1.0",
        lifespan=lifespan,
        routes=api_routes(),
        telemetry={
            "tracing": settings.opentelemetry,
            "metrics": settings.opentelemetry,
            "logs": settings.opentelemetry,
        },
    )
    app.state.settings = settings
    app.state.monitor = monitor
    app.state.predictor = None
    app.state.model_error = "the model is still loading"
    app.state.routing = Routing.from_settings(settings)
    app.state.challenger = None
    app.state.challenger_error = None
    app.state.shadow = ShadowRunner(monitor.shadow, settings.shadow_queue_size) if monitor.enabled else None
    # One reload at a time in this worker, whether asked for here or announced by another worker.
    app.state.reload_lock = asyncio.Lock()
    app.state.batch_slots = asyncio.Semaphore(settings.max_concurrent_batches)
    app.state.drain = Drain(settings.shutdown_drain_seconds)
    app.state.worker_sync = None
    app.state.reload_generation = 0
    install_error_handlers(app)
    monitor.install(app)  # its routes and HTTP metrics middlewares
    app.openapi = lambda: bundle_openapi(app)  # type: ignore[method-assign]
    return app


# Container allocations (net of frees) between young-generation collections (Python's default: 700).
# Requests free their own objects by reference counting; monitoring queues events for its thread, and
# at the default the collector would rescan those queued objects every few dozen requests.
GC_YOUNG_THRESHOLD = 50_000


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # Process-wide: a request waiting for the interpreter waits at most this long for a background thread.
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    monitor = app.state.monitor
    await monitor.start()
    shadow = app.state.shadow
    if shadow is not None:
        shadow.start()
    sync = join_workers(app, settings)
    await load_at_startup(app, settings)
    follower = start_following(app, sync)
    app.state.drain.install()
    # Everything loaded so far lives for the whole process: moving it out of the cyclic
    # collector's generations keeps each collection from rescanning the model and libraries.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    try:
        yield
    finally:
        await stop_following(follower, sync)
        if shadow is not None:
            await asyncio.to_thread(shadow.stop)
        await monitor.stop()


def join_workers(app: FastAPI, settings: Settings) -> WorkerSync | None:
    """Share reloads with the other workers of this run, when ``python -m app`` gave them a directory."""
    if settings.reload_dir is None:
        return None
    sync = WorkerSync(settings.reload_dir)
    app.state.worker_sync = sync
    # Read before loading: a reload announced while this worker loads ``current`` is still followed.
    announcement = sync.read_announcement()
    app.state.reload_generation = announcement.generation if announcement else 0
    if announcement is not None:  # how the challenger takes part now, which may differ from the settings
        app.state.routing = announcement.routing
    return sync


def start_following(app: FastAPI, sync: WorkerSync | None) -> asyncio.Task[None] | None:
    if sync is None:
        return None
    predictor = app.state.predictor
    sync.report(app.state.reload_generation, predictor.version if predictor else None, app.state.model_error)
    return asyncio.create_task(follow_reloads(app), name="follow-reloads")


async def stop_following(follower: asyncio.Task[None] | None, sync: WorkerSync | None) -> None:
    if follower is not None:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    if sync is not None:
        sync.withdraw()  # a worker that is gone no longer counts for reload confirmations


async def load_at_startup(app: FastAPI, settings: Settings) -> None:
    try:
        predictor = await run_in_threadpool(build_predictor, settings)
    except BundleError as exc:
        app.state.model_error = str(exc)
        app.state.monitor.model_unavailable(str(exc))
        logger.error("not ready: no usable model bundle in %s: %s", settings.model_dir, exc)
        return
    app.state.predictor = predictor
    app.state.model_error = None
    app.state.monitor.model_loaded(predictor.manifest)
    routing = app.state.routing
    challenger, error = await run_in_threadpool(load_challenger_or_reason, settings, routing)
    swap_in_challenger(app, challenger, error, routing)
    logger.info(
        "ready: model %s (%s) from %s loaded, verified and warm in %.2f s",
        predictor.version,
        predictor.manifest.model_family,
        predictor.bundle_dir,
        predictor.load_seconds,
    )


def bundle_openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document with request bodies generated from the loaded bundle's feature schema.

    Cached until a reload swaps the model (the reload clears ``app.openapi_schema``).
    """
    if app.openapi_schema:
        return app.openapi_schema
    predictor = app.state.predictor
    schema = predictor.schema if predictor is not None else None
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    bodies = {
        "single": request_schema.single_request_body(schema),
        "batch": request_schema.batch_request_body(schema, app.state.settings.max_batch_size),
    }
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            kind = operation.pop("x-request-body", None) if isinstance(operation, dict) else None
            if kind in bodies:
                operation["requestBody"] = bodies[kind]
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components[request_schema.RECORD_COMPONENT] = request_schema.record_component(schema)
    if predictor is not None:
        app.openapi_schema = document
    return document
