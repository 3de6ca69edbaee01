"""What FastAPI's own machinery costs a request, in-process (no sockets): the choices behind ``app.main``.

    python -m bench.framework [--model-dir DIR] [--requests 2000] [--rounds 7]

Each variant is a minimal app answering ``POST /predict`` from the raw body, called through ASGI
directly; the figure is the process CPU per request, the least of ``--rounds`` rounds (the least is
the steadiest figure on a shared machine). Variants: the route on the app itself, in an included
router, two routers deep; FastAPI's app-wide body limit (``max_body_size``); its OpenTelemetry check
left on. With ``--model-dir``, the service itself and the service with its predictor replaced by a
constant answer (what everything but the model costs), beside the FastAPI floor
(``../shared/peers/fastapi_floor``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from bench.worker import time_calls

REPO = Path(__file__).resolve().parents[1]
FLOOR = REPO.parent / "shared" / "peers" / "fastapi_floor" / "app.py"
REQUEST = REPO.parent / "shared" / "peers" / "plain_reference" / "request.json"
NO_TELEMETRY = {"tracing": False, "metrics": False, "logs": False}


async def cpu_per_request(app: Any, body: bytes, requests: int, rounds: int) -> float:
    """Process CPU per ``POST /predict`` in microseconds, the least of ``rounds`` rounds of ``requests``."""
    figures = [
        await time_calls(app, "/predict", body, requests, warmups=200 if first else 0)
        for first in [True] + [False] * (rounds - 1)
    ]
    return min(figure["worker_cpu_ms"] for figure in figures) * 1e3


async def endpoint(request: Request) -> Response:
    await request.body()
    return Response(b"{}", media_type="application/json")


def on_the_app(**options: Any) -> FastAPI:
    app = FastAPI(**{"telemetry": NO_TELEMETRY, **options})
    app.add_api_route("/predict", endpoint, methods=["POST"])
    return app


def in_routers(depth: int) -> FastAPI:
    router = APIRouter()
    router.add_api_route("/predict", endpoint, methods=["POST"])
    for _ in range(depth - 1):
        outer = APIRouter()
        outer.include_router(router)
        router = outer
    app = FastAPI(telemetry=NO_TELEMETRY)
    app.include_router(router)
    return app


VARIANTS: dict[str, Callable[[], FastAPI]] = {
    "route on the app (the service's choice)": on_the_app,
    "route in an included router": lambda: in_routers(1),
    "route two routers deep": lambda: in_routers(2),
    "app-wide max_body_size": lambda: on_the_app(max_body_size=16 * 1024 * 1024),
    "OpenTelemetry check on (FastAPI's default)": lambda: on_the_app(telemetry=None),
}


async def service_rows(model_dir: Path, body: bytes, requests: int, rounds: int) -> list[tuple[str, float]]:
    os.environ["CHURN_MODEL_DIR"] = str(model_dir)
    os.environ["CHURN_DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp(prefix='churn-bench-framework-')}/log.sqlite3"
    spec = importlib.util.spec_from_file_location("fastapi_floor", FLOOR)
    floor = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(floor)  # type: ignore[union-attr]
    from app.main import create_app

    app = create_app()
    rows = [
        ("FastAPI floor (pydantic model, constant answer)", await cpu_per_request(floor.app, body, requests, rounds))
    ]
    async with app.router.lifespan_context(app):
        predictor = app.state.predictor
        rows.append(("the service, monitoring on", await cpu_per_request(app, body, requests, rounds)))
        record = __import__("orjson").loads(body)
        outcome = predictor.predict_records([record])
        real = predictor.predict_records
        predictor.predict_records = lambda records, explain=True: outcome  # everything but the model
        rows.append(("the service, predictor answering a constant", await cpu_per_request(app, body, requests, rounds)))
        predictor.predict_records = real
    return rows


async def run(args: argparse.Namespace) -> None:
    body = REQUEST.read_bytes()
    rows = [
        (name, await cpu_per_request(build(), body, args.requests, args.rounds)) for name, build in VARIANTS.items()
    ]
    if args.model_dir is not None:
        rows += await service_rows(args.model_dir, body, args.requests, args.rounds)
    print("| app | CPU per request (µs, least of the rounds) |")
    print("|---|---|")
    for name, micros in rows:
        print(f"| {name} | {micros:.1f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="also measure the service on this model directory")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
