"""Monitoring bake-offs: HTTP metrics middlewares and prediction-log writers, on the real service.

Each run starts ``python -m app`` (one worker) on a bundle,
loads ``POST /predict`` with wrk, then times a few 10,000-record ``POST /predict/batch`` calls::

    flock /tmp/churn-bench.lock python -m bench.monitoring --model-dir DIR --data TELCO_CSV \
        --floor ../shared/peers/fastapi_floor

``--http`` picks the HTTP metrics candidates: the service's own (prometheus-fastapi-instrumentator
behind its request clock), starlette-exporter or a hand-written middleware swapped in by a factory
defined here, or none (the request clock alone). Every run is compared with monitoring off and with the FastAPI floor,
measured in the same run; ``--rounds`` repeats the whole set, interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.loadgen import (
    LOOPBACK,
    ServiceProcess,
    free_port,
    http_request,
    run_wrk,
    telco_records,
    wrk_lua_script,
)

HTTP_VARIANT_ENV = "CHURN_BENCH_HTTP_METRICS"
HTTP_VARIANTS = ("service", "handwritten", "starlette_exporter", "none")
REPO = Path(__file__).resolve().parents[1]
INSTRUMENTATOR_MIDDLEWARE = "PrometheusInstrumentatorMiddleware"


# ---- the service with another HTTP metrics middleware ----------------------------------------------
class HandWrittenHttpMetrics:
    """The hand-written candidate: one pure ASGI middleware on prometheus_client's public API that
    counts, times and tracks requests and sets the start time the prediction log records."""

    def __init__(self, app: Any, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        from app.monitoring.metrics import LATENCY_BUCKETS

        self.app = app
        self.requests = Counter("churn_http_requests_total", "r", ("route", "method", "status"), registry=registry)
        self.duration = Histogram(
            "churn_http_request_duration_seconds", "d", ("route", "method"), buckets=LATENCY_BUCKETS, registry=registry
        )
        self.in_flight = Gauge("churn_http_requests_in_flight", "f", registry=registry, multiprocess_mode="livesum")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from app.monitoring.http import STANDARD_METHODS, request_started_at

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_noting_status(message: Any) -> None:
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
            route = getattr(scope.get("route"), "path_format", "none")  # FastAPI puts the matched route there
            method = scope["method"] if scope["method"] in STANDARD_METHODS else "other"
            self.requests.labels(route, method, str(status)).inc()
            self.duration.labels(route, method).observe(time.perf_counter() - started)


def http_variant_app() -> Any:
    """The service's app with its HTTP metrics middleware replaced by the variant named in the environment."""
    from prometheus_client import CollectorRegistry
    from starlette.middleware import Middleware

    from app.main import create_app
    from app.monitoring.http import RequestClock
    from app.monitoring.metrics import LATENCY_BUCKETS

    variant = os.environ[HTTP_VARIANT_ENV]
    app = create_app()
    if variant == "service":
        return app
    # Starlette builds its middleware stack at the first request, from this public list (outermost
    # first: the request clock stays in front).
    kept = [m for m in app.user_middleware if m.cls.__name__ != INSTRUMENTATOR_MIDDLEWARE]
    if variant == "handwritten":
        kept = [m for m in kept if m.cls is not RequestClock]
        kept.insert(0, Middleware(HandWrittenHttpMetrics, registry=CollectorRegistry()))
    elif variant == "starlette_exporter":
        from starlette_exporter import PrometheusMiddleware

        options = {"prefix": "churn_http", "app_name": "churn", "buckets": LATENCY_BUCKETS, "group_paths": True}
        kept.insert(1, Middleware(PrometheusMiddleware, **options))
    app.user_middleware = kept
    return app


def serve_command(port: int, model_dir: Path, http_variant: str) -> list[str]:
    if http_variant == "service":
        return [sys.executable, "-m", "app", "--model-dir", str(model_dir), "--workers", "1", "--port", str(port)]
    launcher = (
        "import sys, app.__main__ as m; m.APP_FACTORY = 'bench.monitoring:http_variant_app'; m.main(sys.argv[1:])"
    )
    return [sys.executable, "-c", launcher, "--model-dir", str(model_dir), "--workers", "1", "--port", str(port)]


# ---- one run -------------------------------------------------------------------------------------
def batch_milliseconds(port: int, body: bytes, calls: int) -> list[float]:
    """Client-side time of each call on loopback (transfer included, so an upper bound of the server's)."""
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        status, _, _ = http_request(port, "POST", "/predict/batch", body, {"Content-Type": "application/json"})
        times.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise RuntimeError(f"/predict/batch answered {status}")
    return times


def run_service(
    log_dir: Path,
    label: str,
    env: dict[str, str],
    model_dir: Path,
    http_variant: str,
    bodies: dict[str, Path],
    seconds: int,
) -> dict[str, Any]:
    port = free_port()
    command = serve_command(port, model_dir, http_variant)
    with ServiceProcess(label, command, port, log_dir / "service.log", env={**os.environ, **env}, cwd=REPO) as service:
        service.wait_ready("/ready")
        script = bodies["script"]
        run_wrk(f"http://{LOOPBACK}:{port}/predict", script, duration_s=2, connections=16, threads=1)  # warm-up
        result, _ = run_wrk(f"http://{LOOPBACK}:{port}/predict", script, duration_s=seconds, connections=16, threads=1)
        batch = batch_milliseconds(port, bodies["batch"].read_bytes(), calls=6)
    return {
        "label": label,
        "rps": result.requests_per_s,
        "p99_ms": result.latency_ms["p99"],
        "batch_ms_median": statistics.median(batch),
        "batch_ms_max": max(batch),
    }


def run_floor(log_dir: Path, floor_dir: Path, script: Path, seconds: int) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port), "--no-access-log", "--log-level"]
    with ServiceProcess("floor", [*command, "warning"], port, log_dir / "floor.log", cwd=floor_dir) as service:
        service.wait_ready("/health")
        run_wrk(f"http://{LOOPBACK}:{port}/predict", script, duration_s=2, connections=16, threads=1)
        result, _ = run_wrk(f"http://{LOOPBACK}:{port}/predict", script, duration_s=seconds, connections=16, threads=1)
    return {"label": "fastapi floor", "rps": result.requests_per_s, "p99_ms": result.latency_ms["p99"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the Telco CSV (request bodies)")
    parser.add_argument("--floor", type=Path, required=True, help="directory of the FastAPI floor app")
    parser.add_argument("--http", default=",".join(HTTP_VARIANTS))
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="churn-bench-monitoring-"))
    records = telco_records(args.data, 10_000)
    (work / "one.json").write_bytes(json.dumps(records[0]).encode())
    (work / "batch.json").write_bytes(json.dumps(records).encode())
    script = work / "predict.lua"
    script.write_text(wrk_lua_script(work / "one.json"))
    bodies = {"script": script, "batch": work / "batch.json"}

    def database(name: str) -> dict[str, str]:
        return {"CHURN_DATABASE_URL": f"sqlite:///{work / name}.sqlite3", "CHURN_PREDICTION_LOG_SPOOL_DIR": str(work)}

    rows = []
    for _ in range(args.rounds):
        rows.append(run_floor(work, args.floor, script, args.seconds))
        off = {"CHURN_MONITORING_ENABLED": "false", **database("off")}
        rows.append(run_service(work, "monitoring off", off, args.model_dir, "service", bodies, args.seconds))
        for variant in args.http.split(","):
            env = {HTTP_VARIANT_ENV: variant, **database(variant)}
            rows.append(run_service(work, f"on: http={variant}", env, args.model_dir, variant, bodies, args.seconds))
    print_table(rows)
    shutil.rmtree(work, ignore_errors=True)


def print_table(rows: list[dict[str, Any]]) -> None:
    """Medians over the rounds, set against the floor's and monitoring off's medians."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    floor = statistics.median(row["rps"] for row in by_label["fastapi floor"])
    off = statistics.median(row["rps"] for row in by_label["monitoring off"])
    print("| run | /predict req/s | p99 ms | vs off | vs floor | 10k batch ms (median / max) |")
    print("|---|---|---|---|---|---|")
    for label, runs in by_label.items():
        rps = statistics.median(row["rps"] for row in runs)
        p99 = statistics.median(row["p99_ms"] for row in runs)
        batch = "-"
        if "batch_ms_max" in runs[0]:
            median = statistics.median(row["batch_ms_median"] for row in runs)
            batch = f"{median:.0f} / {max(row['batch_ms_max'] for row in runs):.0f}"
        print(f"| {label} | {rps:.0f} | {p99:.1f} | {rps / off:.2f} | {rps / floor:.2f} | {batch} |")


if __name__ == "__main__":
    main()
