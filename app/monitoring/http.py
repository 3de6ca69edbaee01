"""Pure ASGI middleware: request count, duration and in-flight gauge, labelled by route template.

Pure ASGI (not ``BaseHTTPMiddleware``) because it adds no task or stream wrapping to every
request: the whole cost is two clock reads, two dictionary lookups, an in-flight count and two
deferred updates, all plain Python, applied to the metrics by the monitor's flush (see
:class:`~app.monitoring.metrics.DeferredCounter`).
The route template comes from ``scope["route"]``, which the router fills in when it matches, so
``/customers/42`` is counted as ``/customers/{customer_id}`` and label cardinality stays bounded.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from app.monitoring.metrics import Metrics
    from app.monitoring.monitor import Monitor

UNMATCHED_ROUTE = "unmatched"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Wall-clock start of the current request; the prediction log uses it for each prediction's latency.
request_started_at: ContextVar[float | None] = ContextVar("churn_request_started_at", default=None)


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    if route is None:
        return UNMATCHED_ROUTE
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) and template else UNMATCHED_ROUTE


class MonitoringMiddleware:
    """Counts and times every HTTP request; other ASGI traffic (lifespan, websockets) passes straight through."""

    def __init__(self, app: ASGIApp, monitor: Monitor) -> None:
        self.app = app
        self.metrics = monitor.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app fails before starting a response

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        method = method_label(scope.get("method", ""))
        started = time.perf_counter()
        token = request_started_at.set(time.time())
        metrics = self.metrics
        metrics.requests_in_flight += 1  # only this event loop's thread changes it
        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            elapsed = time.perf_counter() - started
            metrics.requests_in_flight -= 1
            request_started_at.reset(token)
            self._count(route_template(scope), method, status, elapsed)

    def _count(self, route: str, method: str, status: int, elapsed: float) -> None:
        self.metrics.http_request_series(route, method, status).inc()  # labels() makes the status text
        self.metrics.http_duration_series(route, method).observe(elapsed)


def method_label(method: str) -> str:
    """The request's method as a label: arbitrary client-chosen verbs must not create new series."""
    return method if method in KNOWN_METHODS else "other"


class RequestMeter:
    """The monitoring middleware's work around one request, as two plain calls, for a fast lane's route.

    A fast lane (``app.api.fast_lane``) already wraps ``send`` to see its response start. The
    middleware around it wrapped it again, with a closure and a coroutine frame per message of its
    own: in the worker, that cost ``/predict`` about as much as all the monitoring behind it. The
    lane calls :meth:`started` and :meth:`finished` instead; what they count is the same.
    """

    def __init__(self, metrics: Metrics, route: str) -> None:
        self.metrics = metrics
        self.route = route
        # (method, status) -> its request counter and duration histogram: one lookup per request.
        self._series: dict[tuple[str, int], tuple[Any, Any]] = {}

    def started(self) -> tuple[float, Token[float | None]]:
        self.metrics.requests_in_flight += 1  # only this event loop's thread changes it
        return time.perf_counter(), request_started_at.set(time.time())

    def finished(self, started: tuple[float, Token[float | None]], method: str, status: int) -> None:
        elapsed = time.perf_counter() - started[0]
        self.metrics.requests_in_flight -= 1
        request_started_at.reset(started[1])
        series = self._series.get((method, status))
        if series is None:
            series = self._series[method, status] = self._series_of(method, status)
        series[0].inc()
        series[1].observe(elapsed)

    def _series_of(self, method: str, status: int) -> tuple[Any, Any]:
        method = method_label(method)
        metrics = self.metrics
        return metrics.http_request_series(self.route, method, status), metrics.http_duration_series(self.route, method)


class PassThroughMiddleware:
    """What a disabled monitor installs: nothing but the call to the app."""

    def __init__(self, app: ASGIApp, monitor: Any = None) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
