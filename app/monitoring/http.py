"""HTTP metrics: prometheus-fastapi-instrumentator's middleware, plus a request clock of our own.

The instrumentator resolves each request's route template, status and duration, and hands them to
our instrumentation, which counts (``churn_http_requests_total{route,method,status}``) and times
(``churn_http_request_duration_seconds{route,method}``) them. Label values stay bounded whatever
clients send: ``/customers/42`` counts as ``/customers/{customer_id}``, requests no route matches
as ``route="none"``, and methods outside HTTP's standard ones as ``method="other"``.

:class:`RequestClock` is a pure ASGI middleware that keeps the in-flight gauge and the request's
start time, which the prediction log records as each prediction's latency. ``bench.monitoring``
compares this pair with starlette-exporter and a hand-written middleware (see bench/README.md).
"""

from __future__ import annotations

import time
from contextvars import ContextVar

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator.metrics import Info
from starlette.types import ASGIApp, Receive, Scope, Send

from app.monitoring.metrics import LATENCY_BUCKETS

STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})

# Wall-clock start of the current request; the prediction log uses it for each prediction's latency.
request_started_at: ContextVar[float | None] = ContextVar("churn_request_started_at", default=None)


class RequestClock:
    """Counts the requests in flight and sets :data:`request_started_at`; other ASGI traffic passes through."""

    def __init__(self, app: ASGIApp, in_flight: Gauge) -> None:
        self.app = app
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = request_started_at.set(time.time())
        self.in_flight.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight.dec()
            request_started_at.reset(token)


def install_http_metrics(app: FastAPI, registry: CollectorRegistry) -> None:
    """Count, time and track every HTTP request of ``app`` in ``registry`` (merged across workers)."""
    requests = Counter(
        "churn_http_requests_total",
        "HTTP requests by route template, method and status",
        ("route", "method", "status"),
        registry=registry,
    )
    duration = Histogram(
        "churn_http_request_duration_seconds",
        "HTTP request duration",
        ("route", "method"),
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )

    def count_and_time(info: Info) -> None:
        method = info.method if info.method in STANDARD_METHODS else "other"
        requests.labels(info.modified_handler, method, info.modified_status).inc()
        duration.labels(info.modified_handler, method).observe(info.modified_duration)

    instrumentator = Instrumentator(should_group_status_codes=False, registry=registry)
    instrumentator.add(count_and_time)
    instrumentator.instrument(app)
    in_flight = Gauge(
        "churn_http_requests_in_flight",
        "HTTP requests being served, all workers together",
        registry=registry,
        multiprocess_mode="livesum",
    )
    # Added last, so it runs first: the clock covers the whole request, metrics included.
    app.add_middleware(RequestClock, in_flight=in_flight)
