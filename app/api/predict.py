"""POST /predict (one customer) and POST /predict/batch (many, results in order).

The body is read and parsed here (orjson, with a size limit) rather than by a pydantic model: the
predictor validates every field with the bundle's own cleaning rules, and the OpenAPI request
schema is generated from the same bundle (see ``app.api.schemas``). Both routes take the same
predictor path; a single record is a batch of one.

Requests: ``Content-Type: application/json`` (or ``application/*+json``), uncompressed (else 415);
a body over ``CHURN_MAX_BODY_BYTES`` is refused (413) before it is all read; an object that repeats
a key is refused (422) rather than silently keeping the last value.

Batch policy: partial success. Each record is scored or gets its own field-level errors, in input
order, with HTTP 200; the whole request is rejected only when it cannot be a batch at all
(malformed JSON, not a list, an empty list: 422; more records than the limit or a body over the
size limit: 413).
"""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, status
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from app.api import MonitorDep, PredictorDep, SettingsDep, serving_predictor
from app.api.errors import MessageOut, RequestProblem, field_problem, json_response
from app.api.schemas import BatchOut, PredictionOut, ValidationErrorOut
from app.serving.challenger import Challenger, Models, ScoredPart, merged_results, score_parts
from app.serving.predictor import RecordError
from bundle.records import excerpt

router = APIRouter(tags=["prediction"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": MessageOut, "description": "Body or batch over the configured limit"},
    415: {
        "model": MessageOut,
        "description": "The body is not declared as uncompressed JSON (Content-Type, Content-Encoding)",
    },
    422: {"model": ValidationErrorOut, "description": "Malformed JSON or invalid fields (field-level detail)"},
    503: {"model": MessageOut, "description": "No verified model is loaded (the reason is given)"},
}


async def read_body(request: Request, limit: int) -> bytes:
    """The raw JSON body, refusing more than ``limit`` bytes before it is all in memory.

    Reads the ASGI messages directly: a single-record body is one message, and an async generator
    per request (``Request.stream``) costs more than the rest of reading it.
    """
    headers = request.headers
    check_json_content(headers.get("content-type"), headers.get("content-encoding"))
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def check_json_content(content_type: str | None, content_encoding: str | None) -> None:
    """415 unless the body is declared as uncompressed JSON (``application/json`` or ``application/*+json``)."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        declared = f"Content-Type {media_type!r}" if media_type else "no Content-Type"
        raise RequestProblem(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"{declared}: send application/json")
    if content_encoding is not None and content_encoding.strip().lower() not in ("", "identity"):
        message = f"Content-Encoding {excerpt(content_encoding)!r} is not supported: send the JSON uncompressed"
        raise RequestProblem(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, message)


def parse_json(body: bytes) -> Any:
    """The parsed body; 422 for an empty or malformed one, or one that repeats a key in an object."""
    if not body.strip():
        raise RequestProblem(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [field_problem(["body"], "Field required: the body is empty", "missing")],
        )
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        problem = field_problem(["body", exc.pos], f"JSON decode error: {excerpt(exc.msg)}", "json_invalid")
        raise RequestProblem(status.HTTP_422_UNPROCESSABLE_CONTENT, [problem]) from None
    if has_duplicate_keys(body, parsed):
        problem = field_problem(["body"], "An object repeats a key: each field may appear once", "json_invalid")
        raise RequestProblem(status.HTTP_422_UNPROCESSABLE_CONTENT, [problem])
    return parsed


def has_duplicate_keys(body: bytes, parsed: Any) -> bool:
    """Whether some JSON object in ``body`` repeats a key (the parser keeps only the last).

    Without a backslash in the text no string holds a quote, so every string (key or value) is
    exactly two quote characters, in the body as in the parsed value written out again: the counts
    differ only when a repeated key was folded away. Text with escapes is checked by the standard
    library's parser, which hands over every key.
    """
    if b"\\" in body:
        return _repeats_a_key(body)
    return body.count(b'"') != orjson.dumps(parsed).count(b'"')


def _repeats_a_key(body: bytes) -> bool:
    repeated = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal repeated
        keys = [key for key, _ in items]
        repeated = repeated or len(set(keys)) != len(keys)
        return dict(items)

    json.loads(body, object_pairs_hook=pairs)
    return repeated


def _too_large(message: str) -> RequestProblem:
    return RequestProblem(status.HTTP_413_CONTENT_TOO_LARGE, message)


@router.post(
    "/predict",
    summary="Churn prediction for one customer",
    responses={200: {"model": PredictionOut}, **_ERRORS},
    openapi_extra={"x-request-body": "single"},
)
async def predict(request: Request) -> Response:
    # The state is read here rather than through dependencies: resolving them costs as much as the
    # prediction itself. On the event loop: one prediction costs less than a thread hand-over.
    predictor, state = serving_predictor(request), request.app.state
    monitor, settings, challenger = state.monitor, state.settings, state.challenger
    record = parse_json(await read_body(request, settings.max_body_bytes))
    canary = challenger is not None and challenger.answers(record)
    outcome = (challenger.predictor if canary else predictor).predict_records([record])
    if outcome.errors or outcome.scored is None:
        errors = [error.to_dict(("body",)) for error in outcome.errors[0].listed_errors()]
        raise RequestProblem(status.HTTP_422_UNPROCESSABLE_CONTENT, errors)
    if canary:
        outcome.event.role = "challenger"
    monitor.record(outcome.event)
    if challenger is not None and not canary and challenger.shadows_this_call():
        state.shadow.submit(challenger, [record], outcome.scored)
    return json_response(outcome.scored.dicts()[0])


@router.post(
    "/predict/batch",
    summary="Churn predictions for many customers, in input order",
    responses={200: {"model": BatchOut}, **_ERRORS},
    openapi_extra={"x-request-body": "batch"},
)
async def predict_batch(
    request: Request,
    predictor: PredictorDep,
    monitor: MonitorDep,
    settings: SettingsDep,
    reasons: Annotated[
        bool, Query(description="Include top_reasons per record (costs more for non-linear models)")
    ] = False,
) -> Response:
    # One batch at a time per worker (by default): the others wait before their body is in memory.
    state = request.app.state
    challenger: Challenger | None = state.challenger
    async with state.batch_slots:
        body = await read_body(request, settings.max_body_bytes)
        # Off the event loop: a large batch must not hold up /health and /predict.
        content, parts = await run_in_threadpool(
            _score_batch, Models(predictor, challenger), body, settings.max_batch_size, reasons
        )
    for part in parts:
        if part.outcome.event is not None:
            monitor.record(part.outcome.event)
    if challenger is not None and challenger.shadows_this_call():
        champion = parts[0]
        if champion.answered_by is predictor and champion.outcome.scored is not None:
            state.shadow.submit(challenger, champion.records, champion.outcome.scored)
    return Response(content, media_type="application/json")


_gc_lock = threading.Lock()
_gc_pausers = 0


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector while a batch builds its objects.

    A large batch allocates hundreds of thousands of acyclic containers (parsed JSON, columns,
    results); each counts toward the collector's thresholds, so it would otherwise run repeatedly
    and rescan them all. Reference counting still frees everything; the collector resumes when the
    last concurrent batch finishes.
    """
    global _gc_pausers
    with _gc_lock:
        _gc_pausers += 1
        gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0:
                gc.enable()


def _score_batch(models: Models, body: bytes, max_batch_size: int, reasons: bool) -> tuple[bytes, list[ScoredPart]]:
    with cyclic_gc_paused():
        records = _batch_records(body, max_batch_size)
        parts = score_parts(models, records, reasons)
        results = merged_results(parts, len(records), _error_dict)
        failed = sum(len(part.outcome.errors) for part in parts)
        content = orjson.dumps(
            {
                "model_version": models.champion.version,
                "count": len(records),
                "succeeded": len(records) - failed,
                "failed": failed,
                "results": results,
            }
        )
    return content, parts


def _batch_records(body: bytes, max_batch_size: int) -> list[Any]:
    records = parse_json(body)
    if not isinstance(records, list):
        problem = field_problem(["body"], "Input should be a JSON list of customer objects", "list_type")
        raise RequestProblem(status.HTTP_422_UNPROCESSABLE_CONTENT, [problem])
    if not records:
        problem = field_problem(["body"], "List should have at least 1 item", "too_short")
        raise RequestProblem(status.HTTP_422_UNPROCESSABLE_CONTENT, [problem])
    if len(records) > max_batch_size:
        raise _too_large(f"batch of {len(records)} records exceeds the maximum of {max_batch_size} per request")
    return records


def _error_dict(result: RecordError) -> dict[str, Any]:
    return result.to_dict(("body",))
