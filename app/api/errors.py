"""Request errors and their handlers: every client mistake becomes a 4xx with field-level detail.

Error bodies follow FastAPI's shape, ``{"detail": [{"type", "loc", "msg", "input"}, ...]}``, so
clients handle the service's own validation and FastAPI's the same way.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request, status
from fastapi.responses import Response
from pydantic import BaseModel


class MessageOut(BaseModel):
    """An error body whose detail is one message (documented in OpenAPI for such answers)."""

    detail: str


class RequestProblem(Exception):
    """A request the service refuses; ``detail`` is a message or a list of field problems."""

    def __init__(self, status_code: int, detail: str | list[dict[str, Any]]) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


class ModelUnavailable(Exception):
    """No verified model is loaded; the reason says why (missing bundle, checksum mismatch, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def field_problem(loc: list[str | int], msg: str, type_: str, input_: Any = None) -> dict[str, Any]:
    return {"type": type_, "loc": loc, "msg": msg, "input": input_}


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """orjson straight to bytes: skips FastAPI's jsonable_encoder, the largest cost of a small response."""
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json", headers=headers)


async def _request_problem(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestProblem)
    return json_response({"detail": exc.detail}, exc.status_code)


async def _model_unavailable(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ModelUnavailable)
    # Retry-After: a load or reload may be under way; clients and balancers back off briefly.
    return json_response(
        {"detail": f"no model is loaded: {exc.reason}"}, status.HTTP_503_SERVICE_UNAVAILABLE, {"Retry-After": "5"}
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestProblem, _request_problem)
    app.add_exception_handler(ModelUnavailable, _model_unavailable)
