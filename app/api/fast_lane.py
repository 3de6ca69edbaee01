"""The fast lane: ``POST /predict`` served straight from the ASGI scope, ahead of the framework's stack.

A single-record prediction takes about 100 microseconds of CPU. Going through FastAPI's middleware
stack (server errors, telemetry, body limits, exception handling, an exit stack) and its router
(which tries every route in turn) costs about as much again, for nothing this route uses: its
endpoint takes the ``Request``, reads and limits the body itself and returns a ``Response``.

So :class:`ServiceApp` sends exactly ``POST /predict`` to a :class:`FastLane`, which calls the same
endpoint the router would (the one documented in OpenAPI), with the same exception handlers, reports
each request to the monitoring's meter (the same metrics the monitoring middleware counts for every
other route), and answers an unexpected error with the same plain 500 as Starlette's
``ServerErrorMiddleware``. Everything else, ``/predict`` with another method or
under a root path included, goes through FastAPI as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("app")

Endpoint = Callable[[Request], Awaitable[Response]]


class Meter(Protocol):
    """What a lane reports each request to (the monitoring's ``RequestMeter``)."""

    def started(self) -> Any: ...

    def finished(self, started: Any, method: str, status: int) -> None: ...


class FastLane:
    """Runs one endpoint for its route: exception handlers as registered on the app, then a plain 500.

    ``meter``: told when each request starts and how it ended (monitoring), or None.
    """

    def __init__(self, app: FastAPI, route: APIRoute, meter: Meter | None = None) -> None:
        self.app = app
        self.route = route
        self.endpoint: Endpoint = route.endpoint
        self.meter = meter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route  # what the router would have set
        status = 0  # the response's, once it has started

        async def send_tracking_start(message: Message) -> None:
            nonlocal status
            if not status and message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        meter = self.meter
        metered = meter.started() if meter is not None else None
        try:
            request = Request(scope, receive, send_tracking_start)
            try:
                response = await self.endpoint(request)
            except ClientDisconnect:
                return  # nobody left to answer
            except Exception as exc:
                handler = self._handler_for(exc)
                if handler is None:
                    raise
                response = await handler(request, exc)
            await response(scope, receive, send_tracking_start)
        except Exception:
            logger.exception("unexpected error serving %s %s", scope["method"], scope["path"])
            if not status:
                await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send_tracking_start)
        finally:
            if meter is not None:
                # No response at all (the client left, or the 500 could not be sent): counted as 500.
                meter.finished(metered, scope["method"], status or 500)

    def _handler_for(self, exc: Exception) -> Callable[[Request, Exception], Awaitable[Response]] | None:
        handlers: dict[Any, Any] = self.app.exception_handlers
        for kind in type(exc).__mro__:
            if kind in handlers:
                return handlers[kind]
        return None


class ServiceApp(FastAPI):
    """FastAPI with a fast lane for the routes given to :meth:`open_fast_lane`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fast_lanes: dict[tuple[str, str], ASGIApp] = {}

    def open_fast_lane(self, route: APIRoute, meter: Meter | None = None) -> None:
        """Serve ``route`` (each of its methods) from its endpoint, each request reported to ``meter``."""
        lane = FastLane(self, route, meter)
        for method in route.methods:
            self._fast_lanes[(method, route.path)] = lane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.root_path and not scope.get("root_path"):
            lane = self._fast_lanes.get((scope["method"], scope["path"]))
            if lane is not None:
                scope["app"] = self
                await lane(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
