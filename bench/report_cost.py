"""What one ``GET /monitoring/report`` costs as the day's log grows (it should not grow with it).

    flock /tmp/churn-bench.lock python -m bench.report_cost --rows 10000,300000

Fills a SQLite prediction log with synthetic predictions of today (through the log writer, so the
hourly aggregates are kept as in service), then times the report's database part
(``app.monitoring.report.daily_report``) and 8 concurrent calls of it.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, select

from app.monitoring.log_store import make_engine, outcomes_table, predictions_table
from app.monitoring.log_writer import LogWriter
from app.monitoring.report import daily_report
from app.monitoring.spool import Spool
from bench.spool import synthetic_events

BATCH = 5000


def fill(database_url: str, rows: int, work: Path, labelled: int) -> None:
    writer = LogWriter(database_url, batch_size=BATCH, spool=Spool(work / "spool", 0), write_ahead=False)
    writer.start()
    start_of_day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    rng = np.random.default_rng(0)
    for seed in range(0, rows, BATCH):
        events = synthetic_events(min(BATCH, rows - seed), seed=seed)
        for recorded in events:  # spread over the day so far, latencies of a real service
            recorded.event.timestamp = start_of_day + float(rng.uniform(0, 3600))
            recorded.latency = float(rng.lognormal(-7.0, 0.8))
        assert writer.write(events).written == len(events)
    assert writer.engine is not None
    with writer.engine.begin() as connection:  # outcomes for the first ``labelled`` predictions
        ids = connection.execute(select(predictions_table.c.prediction_id).limit(labelled)).scalars().all()
        if ids:
            connection.execute(
                outcomes_table.insert(),
                [{"prediction_id": i, "churned": True, "received_at": 0.0, "updated_at": 0.0} for i in ids],
            )
    writer.refresh_statistics()  # as the service does every few minutes and after feedback
    writer.close()


def time_report(engine: Engine, calls: int = 5) -> float:
    today = datetime.now(UTC).date()
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        with engine.connect() as connection:
            daily_report(connection, today, None, None, time.time())
        seconds.append(time.perf_counter() - started)
    return float(np.median(seconds)) * 1000


def time_concurrent(engine: Engine, callers: int = 8) -> float:
    with ThreadPoolExecutor(callers) as pool:
        return max(pool.map(lambda _: time_report(engine, calls=1), range(callers)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="10000,300000", help="comma-separated log sizes to try")
    parser.add_argument("--labelled", type=int, default=300, help="predictions given an outcome")
    args = parser.parse_args(argv)
    print(f"| rows logged today ({args.labelled} labelled) | one report, median ms | slowest of 8 concurrent, ms |")
    print("|---|---|---|")
    for rows in (int(value) for value in args.rows.split(",")):
        work = Path(tempfile.mkdtemp(prefix="churn-bench-report-"))
        try:
            url = f"sqlite:///{work / 'log.sqlite3'}"
            fill(url, rows, work, args.labelled)
            engine = make_engine(url)
            print(f"| {rows:,} | {time_report(engine):.1f} | {time_concurrent(engine):.1f} |", flush=True)
            engine.dispose()
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
