"""Soak drill of the prediction log: steady load, a worker killed with -9, the database restarted.

    python -m bench.soak --minutes 10            # run on demand, never in CI
    python -m bench.soak --minutes 2 --rate 100 --spool-mode on_failure
    python -m bench.soak --minutes 10 --durability journal   # nothing answered is lost to the kill

Starts a throwaway PostgreSQL (initdb + pg_ctl in a temp dir) and ``python -m app --workers 2``
logging to it, sends single-record ``POST /predict`` calls at half the sustainable rate (measured
first with a short closed-loop burst, unless ``--rate`` is given), ``kill -9``s one worker at 30% of
the run and stops PostgreSQL for ``--outage-seconds`` at 50%. After the load it waits for the spool
to drain, stops the service, and reports: answered (200 responses, by prediction id), logged (those
ids found in the log table), spooled (rows the service kept on disk meanwhile), lost (answered but
not logged) and what the service counted as dropped.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from app.monitoring.log_store import engine_url
from bench.loadgen import LOOPBACK, ServiceProcess, free_port, http_request, worker_pids
from bench.throwaway_postgres import ThrowawayPostgres

REPO = Path(__file__).resolve().parents[1]
PROBE_SECONDS = 10.0
PROBE_CLIENTS = 8


class Load:
    """Client threads sending ``POST /predict`` at a fixed total rate (or flat out), keeping the answered ids."""

    def __init__(self, port: int, records: list[bytes], rate: float | None, clients: int) -> None:
        self.port, self.records, self.rate, self.clients = port, records, rate, clients
        self.answered: list[str] = []
        self.failures: dict[str, int] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.clients)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _client(self, index: int) -> None:
        interval = self.clients / self.rate if self.rate else 0.0
        next_at = time.monotonic() + interval * index / self.clients
        connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=30)
        sent = index
        while not self._stop.is_set():
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            body = self.records[sent % len(self.records)]
            sent += self.clients
            try:
                connection.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self._fail(type(exc).__name__)
                connection.close()
                connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=30)
                continue
            if response.status == 200:
                self.answered.append(json.loads(payload)["prediction_id"])
            else:
                self._fail(f"HTTP {response.status}")
        connection.close()

    def _fail(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1


def synthetic_records(count: int) -> list[bytes]:
    from training.synthetic import generate_customers

    frame = generate_customers(count, seed=7).drop(columns=["Churn"])
    return [
        json.dumps({**{k: v for k, v in row.items() if k != "customerID"}, "customer_id": row["customerID"]}).encode()
        for row in frame.to_dict(orient="records")
    ]


def ensure_model(model_dir: Path | None, work: Path) -> Path:
    if model_dir is not None:
        return model_dir.resolve()
    model_dir = work / "models"
    command = [sys.executable, "-m", "training", "--models", "logistic_regression", "--trials", "1"]
    subprocess.run([*command, "--no-report", "--quiet", "--model-dir", str(model_dir)], check=True, cwd=REPO)
    return model_dir


def metric_sums(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    _, _, body = http_request(port, "GET", "/metrics")
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name.startswith("churn_prediction_log_"):
                key = sample.name + "".join(f"{{{v}}}" for k, v in sample.labels.items() if k == "reason")
                sums[key] = sums.get(key, 0.0) + sample.value
    return sums


def logged_ids(database_url: str) -> set[str]:
    engine = create_engine(engine_url(database_url))
    try:
        with engine.connect() as connection:
            return set(connection.execute(text("SELECT prediction_id FROM prediction_log")).scalars())
    finally:
        engine.dispose()


def spool_rows(spool_dir: Path) -> int:
    from app.monitoring.spool import segment_rows

    return sum(segment_rows(path) for path in spool_dir.rglob("*.rows"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="churn-soak-"))
    postgres = ThrowawayPostgres()
    spool_dir = work / "spool"
    try:
        postgres.start()
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CHURN_")},
            "PYTHONPATH": str(REPO),
            "CHURN_MODEL_DIR": str(ensure_model(args.model_dir, work)),
            "CHURN_PORT": str(port),
            "CHURN_WORKERS": str(args.workers),
            "CHURN_DATABASE_URL": postgres.url,
            "CHURN_PREDICTION_LOG_SPOOL_DIR": str(spool_dir),
            "CHURN_PREDICTION_LOG_SPOOL_MODE": args.spool_mode,
            "CHURN_PREDICTION_LOG_DURABILITY": args.durability,
            "CHURN_PREDICTION_LOG_FLUSH_SECONDS": str(args.flush_seconds),
            "CHURN_LOG_LEVEL": "warning",
        }
        service = ServiceProcess("soak", [sys.executable, "-m", "app"], port, work / "service.log", env=env, cwd=work)
        service.start()
        service.wait_ready("/ready", timeout_s=120)
        records = synthetic_records(5000)
        rate = args.rate
        if rate is None:
            probe = Load(port, records, None, PROBE_CLIENTS)
            probe.start()
            time.sleep(PROBE_SECONDS)
            probe.stop()
            rate = len(probe.answered) / PROBE_SECONDS / 2
            print(f"sustainable ~{2 * rate:.0f} calls/s; soaking at {rate:.0f}/s", flush=True)
        load = Load(port, records, rate, args.clients)
        duration = args.minutes * 60
        started = time.monotonic()
        load.start()
        events = drill(service, postgres, duration, args.outage_seconds, started)
        load.stop()
        drained_after = wait_for_drain(postgres.url, set(load.answered), spool_dir, args.drain_seconds)
        metrics = metric_sums(port)
        service.stop(grace_s=60)
        answered = set(load.answered)
        logged = logged_ids(postgres.url) & answered
        return {
            "minutes": args.minutes,
            "rate_per_s": round(rate, 1),
            "spool_mode": args.spool_mode,
            "durability": args.durability,
            "flush_seconds": args.flush_seconds,
            "events": events,
            "answered": len(answered),
            "logged": len(logged),
            "lost": len(answered - logged),
            "spooled": int(metrics.get("churn_prediction_log_spooled_total", 0)),
            "replayed": int(metrics.get("churn_prediction_log_replayed_total", 0)),
            "dropped_by_reason": {k: int(v) for k, v in metrics.items() if "dropped" in k and v},
            "left_in_spool_after_stop": spool_rows(spool_dir),
            "drained_after_s": drained_after,
            "client_failures": load.failures,
            "service_log": str(work / "service.log") if args.keep else None,
        }
    finally:
        postgres.remove()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def drill(service: ServiceProcess, postgres: ThrowawayPostgres, duration: float, outage: float, started: float):
    """Kill one worker at 30% of the run, stop PostgreSQL for ``outage`` seconds at 50%."""
    events = []

    def at(fraction: float) -> None:
        time.sleep(max(0.0, started + duration * fraction - time.monotonic()))

    def note(what: str) -> None:
        events.append(f"{time.monotonic() - started:6.1f} s  {what}")
        print(events[-1], flush=True)

    at(0.3)
    victim = worker_pids(service.pid)[0]
    os.kill(victim, signal.SIGKILL)
    note(f"kill -9 worker {victim}")
    at(0.5)
    postgres.stop()
    note("PostgreSQL stopped")
    time.sleep(outage)
    postgres.start()
    note("PostgreSQL started")
    at(1.0)
    note(f"load stopped; workers now {worker_pids(service.pid)}")
    return events


def wait_for_drain(database_url: str, answered: set[str], spool_dir: Path, timeout: float) -> float | None:
    """Seconds until the spool is empty and the log stops growing (None if not within ``timeout``)."""
    started = time.monotonic()
    previous = -1
    while time.monotonic() - started < timeout:
        logged = len(logged_ids(database_url) & answered)
        if spool_rows(spool_dir) == 0 and logged == previous:
            return round(time.monotonic() - started, 1)
        previous = logged
        time.sleep(2)
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, help="calls per second (default: half the sustainable rate)")
    parser.add_argument("--clients", type=int, default=8, help="client threads sharing the rate")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--outage-seconds", type=float, default=30.0)
    parser.add_argument("--spool-mode", choices=["always", "on_failure"], default="always")
    parser.add_argument("--flush-seconds", type=float, default=1.0, help="CHURN_PREDICTION_LOG_FLUSH_SECONDS")
    durability = "CHURN_PREDICTION_LOG_DURABILITY"
    parser.add_argument("--durability", choices=["flush", "journal"], default="flush", help=durability)
    parser.add_argument("--drain-seconds", type=float, default=120.0, help="how long to wait for the spool to drain")
    parser.add_argument("--model-dir", type=Path, help="a models directory with a current bundle (default: train one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (service log) for inspection")
    result = run(parser.parse_args(argv))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
