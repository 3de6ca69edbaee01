"""What one worker spends per request, in one process, without network or load generator.

    python -m bench.worker --model-dir DIR    # a directory with a `current` bundle (e.g. from bench.serving)

Three measurements on IBM Telco records (``--data``), each repeated and reported as medians:

1. **Stages of one batch** in the predictor, 10,000 records: parsing (``orjson``), cleaning (the
   bundle's ``RecordCleaner``), encoding (``FeatureSchema.encode``), scoring, and the results.
   ``bench.validation`` compares the cleaning with library-generated validators.
2. **``/predict/batch`` through the application** (ASGI calls, no sockets), 10,000 records, calls
   back to back, with monitoring off and on: wall time per call and the worker process's CPU per
   call, its threads included (so the monitoring a call leaves to its thread is counted too).
3. **``/predict`` through the application**, the same two ways: wall time and worker CPU per request.

The machine is shared: compare the figures of one run with each other, not with another run's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "telco" / "WA_Fn-UseC_-Telco-Customer-Churn.csv"
MODES = ("monitoring off", "monitoring on")


# ---- 1. the predictor's stages ------------------------------------------------------------------
def predictor_stages(model_dir: Path, body: bytes, repeats: int) -> dict[str, float]:
    """Median CPU of each stage of a /predict/batch call's work, without the HTTP layer."""
    import orjson

    from app.serving.predictor import build_predictor
    from app.settings import Settings

    predictor = build_predictor(Settings(_env_file=None, model_dir=model_dir))
    times: dict[str, list[float]] = {}
    for _ in range(repeats):
        started = time.process_time()
        records = orjson.loads(body)
        parsed = time.process_time()
        outcome = predictor.predict_records(records, explain=False)
        if outcome.errors:
            raise SystemExit(f"these records are not all valid: {outcome.errors[0]}")
        predicted = time.process_time()
        orjson.dumps(outcome.result_dicts(lambda error: {}))
        finished = time.process_time()
        stages = {"parsing": parsed - started, **outcome.stage_seconds, "results": finished - predicted}
        stages["total"] = finished - started
        for stage, seconds in stages.items():
            times.setdefault(stage, []).append(seconds)
    return {stage: statistics.median(values) * 1e3 for stage, values in times.items()}


# ---- 2, 3. the application, one mode per child process ------------------------------------------------
def app_figures(model_dir: Path, mode: str, batch_body: bytes, single_body: bytes, calls: int, requests: int) -> Any:
    """Run :func:`_measure_app` in a fresh interpreter (settings are read at start) and return its figures."""
    with tempfile.TemporaryDirectory(prefix="churn-bench-worker-") as workdir:
        env = {key: value for key, value in os.environ.items() if not key.startswith("CHURN_")}
        env.update(
            {
                "CHURN_MODEL_DIR": str(model_dir),
                "CHURN_MONITORING_ENABLED": "false" if mode == "monitoring off" else "true",
                "CHURN_DATABASE_URL": f"sqlite:///{workdir}/predictions.sqlite3",
                "CHURN_LOG_LEVEL": "warning",
                "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(dir=workdir),
                "PYTHONPATH": str(REPO),
            }
        )
        (Path(workdir) / "batch.json").write_bytes(batch_body)
        (Path(workdir) / "single.json").write_bytes(single_body)
        command = [sys.executable, "-m", "bench.worker", "--child", workdir, str(calls), str(requests)]
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise SystemExit(f"{mode}: the measuring process failed\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def _measure_app(workdir: Path, calls: int, requests: int) -> dict[str, float]:
    from app.main import create_app

    app = create_app()
    batch_body = (workdir / "batch.json").read_bytes()
    single_body = (workdir / "single.json").read_bytes()
    return asyncio.run(_drive(app, batch_body, single_body, calls, requests))


async def _drive(app: Any, batch_body: bytes, single_body: bytes, calls: int, requests: int) -> dict[str, float]:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put))
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the application did not start: {started}")
    figures: dict[str, float] = {}
    batch = await time_calls(app, "/predict/batch", batch_body, calls, warmups=2)
    figures.update({f"batch_{key}": value for key, value in batch.items()})
    single = await time_calls(app, "/predict", single_body, requests, warmups=500)
    figures.update({f"single_{key}": value for key, value in single.items()})
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    await lifespan
    return figures


async def time_calls(app: Any, path: str, body: bytes, calls: int, warmups: int) -> dict[str, float]:
    """``calls`` POSTs of ``body`` to ``path`` through the ASGI interface (after ``warmups``), each held to a 200."""
    chunks = [body[start : start + 65_536] for start in range(0, len(body), 65_536)] or [b""]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    walls: list[float] = []
    cpus: list[float] = []
    call_state = {"position": 0, "statuses": []}

    async def receive() -> dict[str, Any]:
        position = call_state["position"] = call_state["position"] + 1
        return {"type": "http.request", "body": chunks[position - 1], "more_body": position < len(chunks)}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            call_state["statuses"].append(message["status"])

    for call in range(warmups + calls):
        call_state.update(position=0, statuses=[])
        cpu_started, started = time.process_time(), time.perf_counter()
        await app(dict(scope), receive, send)
        # Back to the event loop, as a server returns to it between requests: work the request
        # scheduled there (the monitoring drain of /predict records) runs now and is timed with it.
        await asyncio.sleep(0)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        if call_state["statuses"] != [200]:
            raise RuntimeError(f"{path} answered {call_state['statuses']}")
        if call >= warmups:
            walls.append(wall)
            cpus.append(cpu)
    # Per call: the median wall time, and the worker's CPU over all calls (its background threads
    # included, so what a call leaves to do later is counted too).
    return {
        "wall_ms": statistics.median(walls) * 1e3,
        "p99_ms": statistics.quantiles(walls, n=100)[98] * 1e3 if len(walls) > 1 else walls[0] * 1e3,
        "worker_cpu_ms": sum(cpus) / len(cpus) * 1e3,
    }


# ---- the run ---------------------------------------------------------------------------------------
def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(_measure_app(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a directory with a current bundle")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="IBM Telco CSV")
    parser.add_argument("--records", type=int, default=10_000, help="records per batch")
    parser.add_argument("--calls", type=int, default=12, help="timed batch calls per mode")
    parser.add_argument("--requests", type=int, default=5_000, help="timed single-record requests per mode")
    args = parser.parse_args()
    if not args.data.exists():
        print(f"skipped: {args.data} is absent (pass --data)")
        return
    from bench.loadgen import telco_records

    records = telco_records(args.data, args.records)
    batch_body = json.dumps(records, separators=(",", ":")).encode()
    single_body = json.dumps(records[0], separators=(",", ":")).encode()
    model_dir = args.model_dir.resolve()

    print(f"1. the predictor's stages for {args.records:,} records, median of 15 calls (stages: wall, rest: CPU)")
    for label, value in predictor_stages(model_dir, batch_body, 15).items():
        print(f"   {label:<42} {value:8.1f} ms")
    print(f"2, 3. through the application: {args.calls} batch calls back to back, {args.requests:,} single requests")
    results = {mode: app_figures(model_dir, mode, batch_body, single_body, args.calls, args.requests) for mode in MODES}
    header = f"   {'':<22}{'batch wall':>12}{'batch CPU':>12}{'single wall':>13}{'single CPU':>12}"
    print(header)
    for mode, figures in results.items():
        print(
            f"   {mode:<22}{figures['batch_wall_ms']:>10.1f}ms{figures['batch_worker_cpu_ms']:>10.1f}ms"
            f"{figures['single_wall_ms'] * 1e3:>11.1f}us{figures['single_worker_cpu_ms'] * 1e3:>10.1f}us"
        )
    print("   (CPU: the worker process's, per call, its threads included)")


if __name__ == "__main__":
    main()
