"""HTTP metrics: one pure ASGI middleware on prometheus_client's public API.

For every HTTP request it counts (``churn_http_requests_total{route,method,status}``), times
(``churn_http_request_duration_seconds{route,method}``) and tracks it in flight, and it sets
:data:`request_started_at`, which the prediction log records as each prediction's latency. The
route label is the template FastAPI matched (``/customers/{customer_id}``, never ``/customers/42``)
and ``none`` when no route matched; methods outside HTTP's standard ones count as ``other``. Both
keep the label cardinality bounded whatever clients send. ``bench.monitoring`` compares this
middleware with prometheus-fastapi-instrumentator and starlette-exporter (see bench/README.md).
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.monitoring.metrics import LATENCY_BUCKETS

NO_ROUTE = "none"
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})

# Wall-clock start of the current request; the prediction log uses it for each prediction's latency.
request_started_at: ContextVar[float | None] = ContextVar("churn_request_started_at", default=None)


class HttpMetrics:
    """Counts, times and tracks every HTTP request; other ASGI traffic (lifespan) passes through."""

    def __init__(self, app: ASGIApp, requests: Counter, duration: Histogram, in_flight: Gauge) -> None:
        self.app = app
        self.requests = requests
        self.duration = duration
        self.in_flight = in_flight
        # Labelled series looked up once: the label values are bounded (route templates, methods, statuses).
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets when the app raises before answering

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        token = request_started_at.set(time.time())
        started = time.perf_counter()
        self.in_flight.inc()
        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            self.in_flight.dec()
            request_started_at.reset(token)
            self._observe(scope, status, time.perf_counter() - started)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        # FastAPI puts the matched route in the scope it passes down (the same dict).
        route = getattr(scope.get("route"), "path_format", NO_ROUTE)
        method = scope["method"] if scope["method"] in STANDARD_METHODS else "other"
        counted = self._counted.get((route, method, status))
        if counted is None:
            counted = self._counted[(route, method, status)] = self.requests.labels(route, method, str(status))
        timed = self._timed.get((route, method))
        if timed is None:
            timed = self._timed[(route, method)] = self.duration.labels(route, method)
        counted.inc()
        timed.observe(seconds)


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
    in_flight = Gauge(
        "churn_http_requests_in_flight",
        "HTTP requests being served, all workers together",
        registry=registry,
        multiprocess_mode="livesum",
    )
    app.add_middleware(HttpMetrics, requests=requests, duration=duration, in_flight=in_flight)
