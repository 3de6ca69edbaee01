"""What the prediction log's spool costs the monitor thread per flush: write-ahead ("always") against
spooling only on failure ("on_failure"), on SQLite or a PostgreSQL URL.

    flock /tmp/churn-bench.lock python -m bench.spool --rows 2000 --flushes 30
    flock /tmp/churn-bench.lock python -m bench.spool --postgres   # a throwaway server (initdb)

Prints, per mode, the median and p95 milliseconds of one flush (rows to the log, aggregates
included), the monitor thread's CPU time in it (what competes with requests for the interpreter),
and the spool's share (serialising, writing and fsync'ing the batch).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from app.monitoring.events import PredictionEvent, RecordedEvent
from app.monitoring.log_writer import LogWriter
from app.monitoring.spool import Spool

FEATURES = 19  # the Telco table's


def synthetic_events(rows: int, seed: int) -> list[RecordedEvent]:
    """``rows`` single-record events with Telco-sized inputs."""
    rng = np.random.default_rng(seed)
    events = []
    now = time.time()
    for i in range(rows):
        columns = {f"feature_{j}": (float(rng.random()) if j % 2 else f"category-{j}",) for j in range(FEATURES)}
        score = rng.random(1)
        event = PredictionEvent(
            timestamp=now,
            model_version="20261123T000000Z-aaaaaa",
            prediction_ids=[f"{seed:08x}{i:024x}"],
            customer_ids=[f"{i:04d}-CUST"],
            columns=columns,
            scores=score,
            decisions=score >= 0.5,
            risk_bands=["low"],
        )
        events.append(RecordedEvent(event, 0.0008))
    return events


def run(database_url: str, mode: str, rows: int, flushes: int, work: Path) -> dict[str, float]:
    spool = Spool(work / f"spool-{mode}", 1 << 30)
    writer = LogWriter(database_url, batch_size=rows, spool=spool, write_ahead=mode == "always")
    writer.start()
    flush_ms, cpu_ms, spool_ms = [], [], []
    for flush in range(flushes):
        events = synthetic_events(rows, seed=flush + (1000 if mode == "always" else 0))
        started, cpu_started = time.perf_counter(), time.thread_time()
        report = writer.write(events)
        flush_ms.append((time.perf_counter() - started) * 1000)
        cpu_ms.append((time.thread_time() - cpu_started) * 1000)
        assert report.written == rows, report
        table_rows = [row for recorded in events[:rows] for row in _rows(recorded)]
        started = time.perf_counter()
        segment = spool.write(table_rows)
        assert segment is not None
        segment.remove()
        spool_ms.append((time.perf_counter() - started) * 1000)
    writer.close()
    return {
        "flush_p50": float(np.median(flush_ms)),
        "cpu_p50": float(np.median(cpu_ms)),
        "flush_p95": float(np.percentile(flush_ms, 95)),
        "spool_p50": float(np.median(spool_ms)),
    }


def _rows(recorded: RecordedEvent) -> list[tuple]:
    from app.monitoring.log_store import event_rows

    return event_rows(recorded.event, recorded.latency)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000, help="rows per flush (the batch size)")
    parser.add_argument("--flushes", type=int, default=30)
    parser.add_argument("--postgres", action="store_true", help="log to a throwaway PostgreSQL instead of SQLite")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="churn-bench-spool-"))
    server = None
    try:
        if args.postgres:
            from bench.throwaway_postgres import ThrowawayPostgres

            server = ThrowawayPostgres()
            server.start()
            url = server.url
        else:
            url = f"sqlite:///{work / 'log.sqlite3'}"
        print(f"{args.rows} rows per flush, {url.split(':')[0]}")
        print("| mode | flush p50 ms | flush p95 ms | flush CPU p50 ms | spool write of one batch, p50 ms |")
        print("|---|---|---|---|---|")
        for mode in ("on_failure", "always"):
            figures = run(url, mode, args.rows, args.flushes, work)
            cells = [figures[key] for key in ("flush_p50", "flush_p95", "cpu_p50", "spool_p50")]
            print(f"| {mode} | " + " | ".join(f"{value:.1f}" for value in cells) + " |")
    finally:
        if server is not None:
            server.remove()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
