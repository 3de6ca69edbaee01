"""Request-path cost of monitoring: ``Monitor.record`` for 1 and 10,000 records, the HTTP middleware, the lane's meter.

Run (single-process metrics, then multiprocess metrics as with several workers)::

    .venv/bin/python -m tests.app.monitoring.bench_monitoring_record
    PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) .venv/bin/python -m tests.app.monitoring.bench_monitoring_record

The bundle is shaped like IBM Telco's: 19 features (3 numeric, 16 categorical or boolean).
The log queue is large enough that nothing is dropped, and the writer is not started, so the
figures are the request-path cost alone.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from app.monitoring import Monitor
from app.monitoring.events import PredictionEvent
from app.monitoring.log_store import LogWriter, make_engine
from app.monitoring.metrics import multiprocess_directory
from bundle.drift_reference import DriftReference, categorical_reference, numeric_reference
from tests.app.monitoring.monitoring_helpers import BANDS, band_of, make_manifest, make_settings

NUMERIC = ["tenure", "MonthlyCharges", "TotalCharges"]
CATEGORICAL = {
    "gender": ["Female", "Male"],
    "SeniorCitizen": ["True", "False"],
    "Partner": ["True", "False"],
    "Dependents": ["True", "False"],
    "PhoneService": ["True", "False"],
    "MultipleLines": ["No", "Yes", "No phone service"],
    "InternetService": ["DSL", "Fiber optic", "No"],
    "OnlineSecurity": ["No", "Yes", "No internet service"],
    "OnlineBackup": ["No", "Yes", "No internet service"],
    "DeviceProtection": ["No", "Yes", "No internet service"],
    "TechSupport": ["No", "Yes", "No internet service"],
    "StreamingTV": ["No", "Yes", "No internet service"],
    "StreamingMovies": ["No", "Yes", "No internet service"],
    "Contract": ["Month-to-month", "One year", "Two year"],
    "PaperlessBilling": ["True", "False"],
    "PaymentMethod": ["Electronic check", "Mailed check", "Bank transfer", "Credit card"],
}


def telco_like_manifest():
    rng = np.random.default_rng(0)
    n = 7000
    features = [numeric_reference(name, rng.gamma(2.0, 20.0, n)) for name in NUMERIC]
    features += [categorical_reference(name, rng.choice(values, n).tolist()) for name, values in CATEGORICAL.items()]
    manifest = make_manifest()
    manifest.drift_reference = DriftReference(
        features=features, score=numeric_reference("score", rng.beta(2, 4, n), kind="score")
    )
    return manifest


def telco_event(manifest, n: int, rng: np.random.Generator) -> PredictionEvent:
    columns: dict[str, list[Any]] = {name: rng.gamma(2.0, 20.0, n).round(2).tolist() for name in NUMERIC}
    for name, values in CATEGORICAL.items():
        picked = rng.choice(values, n).tolist()
        columns[name] = [{"True": True, "False": False}.get(v, v) for v in picked]
    scores = rng.beta(2, 4, n)
    return PredictionEvent(
        timestamp=time.time(),
        model_version=manifest.version,
        prediction_ids=[uuid.uuid4().hex for _ in range(n)],
        customer_ids=[f"c{i}" for i in range(n)],
        columns=columns,
        scores=scores,
        decisions=scores >= manifest.threshold,
        risk_bands=[band_of(float(s)) for s in scores],
        stage_seconds={"validation": 1e-4, "features": 1e-4, "inference": 1e-4, "explanation": 1e-4},
        # What the predictor hands over for /predict: the record's values as one row.
        row=tuple(values[0] for values in columns.values()) if n == 1 else None,
    )


def time_calls(call, repeats: int) -> tuple[list[float], float]:
    """Per-call wall times, and this thread's CPU time per call (steadier on a busy machine)."""
    samples = []
    cpu_started = time.thread_time()
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples, (time.thread_time() - cpu_started) / repeats


def describe(label: str, timing: tuple[list[float], float], per: int = 1) -> None:
    samples, cpu = timing
    micro = sorted(s * 1e6 / per for s in samples)
    print(
        f"{label:<46} wall median {statistics.median(micro):9.2f} us  p10 {micro[len(micro) // 10]:9.2f}"
        f"  p90 {micro[9 * len(micro) // 10]:9.2f}  | cpu {cpu * 1e6 / per:9.2f} us  (n={len(samples)})"
    )


async def middleware_cost(
    monitor: Monitor, repeats: int
) -> tuple[tuple[list[float], float], tuple[list[float], float]]:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    bare = app.build_middleware_stack()
    wrapped = monitor.middleware_class(bare, monitor=monitor)

    async def call(target) -> None:
        scope = {"type": "http", "method": "GET", "path": "/ping", "raw_path": b"/ping", "query_string": b"",
                 "headers": [], "root_path": "", "app": app, "scheme": "http", "server": ("t", 80), "client": ("c", 1),
                 "http_version": "1.1"}  # fmt: skip

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            return None

        await target(scope, receive, send)

    for _ in range(200):  # warm-up
        await call(bare)
        await call(wrapped)
    # Alternating calls, so a busy moment on the machine hits both variants alike.
    samples: dict[str, list[float]] = {"bare": [], "wrapped": []}
    cpu = {"bare": 0.0, "wrapped": 0.0}
    for _ in range(repeats):
        for name, target in (("bare", bare), ("wrapped", wrapped)):
            cpu_started, started = time.thread_time(), time.perf_counter()
            await call(target)
            samples[name].append(time.perf_counter() - started)
            cpu[name] += time.thread_time() - cpu_started
    return (samples["bare"], cpu["bare"] / repeats), (samples["wrapped"], cpu["wrapped"] / repeats)


async def lane_meter_cost(monitor: Monitor, repeats: int) -> tuple[float, float]:
    """Median CPU per call of a fast lane (a trivial endpoint) without and with the monitoring's meter."""
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from fastapi.routing import APIRoute

    from app.api.fast_lane import FastLane

    async def endpoint(request: Request) -> Response:
        return Response(b"{}", media_type="application/json")

    route = APIRoute("/predict", endpoint, methods=["POST"])
    app = FastAPI()
    lanes = {"bare": FastLane(app, route), "metered": FastLane(app, route, monitor.request_meter("/predict"))}
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [], "query_string": b"", "root_path": ""}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    cpu: dict[str, list[float]] = {"bare": [], "metered": []}
    for _ in range(repeats):  # blocks of 200 calls, alternating
        for name, lane in lanes.items():
            started = time.thread_time()
            for _ in range(200):
                await lane(dict(scope), receive, send)
            cpu[name].append((time.thread_time() - started) / 200)
    return statistics.median(cpu["bare"]), statistics.median(cpu["metered"])


def cpu_of(call) -> float:
    started = time.thread_time()
    call()
    return time.thread_time() - started


def metric_total(monitor: Monitor, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(monitor.metrics.exposition().decode())
    return sum(s.value for f in families for s in f.samples if s.name == name)


def background_costs(monitor: Monitor, manifest, rng: np.random.Generator) -> None:
    """What the background threads spend per record beyond the drain: drift binning and writing the log (SQLite).

    The drain above includes drift binning too; it is timed here on its own.
    """
    drift = monitor.drift
    assert drift is not None
    drift.apply_pending()
    singles = [telco_event(manifest, 1, rng) for _ in range(2000)]
    for event in singles:
        drift.count(event.timestamp, event.columns, event.scores, event.decisions, event.row)
    elapsed = cpu_of(drift.apply_pending)
    print(f"{'background drift binning, 1-record events':<46} cpu {elapsed / 2000 * 1e6:9.2f} us per record")
    batch = telco_event(manifest, 10_000, rng)
    drift.count(batch.timestamp, batch.columns, batch.scores, batch.decisions)
    elapsed = cpu_of(drift.apply_pending)
    print(f"{'background drift binning, 10,000-record event':<46} cpu {elapsed / 1e4 * 1e6:9.2f} us per record")
    log = monitor.log
    log._take()  # what the timed section recorded; measure a known amount
    log.engine = make_engine(monitor.settings.database_url)
    # The writer, in this thread (the service starts it with the log): the write itself is what is timed.
    log._writer = LogWriter(
        monitor.settings.database_url, batch_size=log.batch_size, queue_size=log.queue_size, engine=log.engine
    )
    log._writer.start()
    for event in singles:
        log.enqueue(event, 0.001)
    elapsed = cpu_of(log.flush)
    print(f"{'background log write (SQLite), 1-record events':<46} cpu {elapsed / 2000 * 1e6:9.2f} us per record")
    log.enqueue(batch, 0.05)
    elapsed = cpu_of(log.flush)
    print(f"{'background log write (SQLite), 10,000 records':<46} cpu {elapsed / 1e4 * 1e6:9.2f} us per record")
    written = metric_total(monitor, "churn_prediction_log_written_total")
    assert written == 12_000, written
    log.engine.dispose()


def main() -> None:
    mode = "multiprocess" if multiprocess_directory() else "single-process"
    print(f"metrics mode: {mode}")
    with tempfile.TemporaryDirectory() as directory:
        settings = make_settings(Path(directory), prediction_log_queue_size=10_000_000)
        monitor = Monitor(settings)
        manifest = telco_like_manifest()
        monitor.model_loaded(manifest)
        rng = np.random.default_rng(1)
        singles = [telco_event(manifest, 1, rng) for _ in range(3000)]
        batch = telco_event(manifest, 10_000, rng)
        iterator = iter(singles)
        for _ in range(200):
            monitor.record(next(iterator))  # warm-up: label children, lookups
        monitor.drain()
        describe("record(), 1-record event", time_calls(lambda: monitor.record(next(iterator)), 2500))
        elapsed = cpu_of(monitor.drain)
        print(f"{'background drain, 1-record events':<46} cpu {elapsed / 2500 * 1e6:9.2f} us per record")
        describe("record(), 10,000-record event (per call)", time_calls(lambda: monitor.record(batch), 20))
        elapsed = cpu_of(monitor.drain)
        print(f"{'background drain, 10,000-record events':<46} cpu {elapsed / 200_000 * 1e6:9.2f} us per record")
        assert monitor.log._pending_records > 0 and len(BANDS) == 3
        background_costs(monitor, manifest, rng)
        bare, wrapped = asyncio.run(middleware_cost(monitor, 3000))
        describe("ASGI request without the middleware", bare)
        describe("ASGI request with the middleware", wrapped)
        wall = statistics.median(wrapped[0]) - statistics.median(bare[0])
        floor = sorted(wrapped[0])[len(wrapped[0]) // 10] - sorted(bare[0])[len(bare[0]) // 10]
        print(f"middleware cost: wall median difference {wall * 1e6:.2f} us, p10 difference {floor * 1e6:.2f} us")
        lane, metered = asyncio.run(lane_meter_cost(monitor, 40))
        print(f"fast lane: {lane * 1e6:.2f} us CPU per request bare, {metered * 1e6:.2f} us with the meter")
        monitor.drift.close()


if __name__ == "__main__":
    main()
