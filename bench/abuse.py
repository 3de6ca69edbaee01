"""Hostile clients without an API key against a real ``python -m app``: what each costs the worker.

Run on demand (minutes, not in CI)::

    python -m bench.abuse --model-dir DIR [--texts 1800] [--feedback-mb 210]

One worker serves the bundle with an API key set and the prediction log in SQLite. Each scenario
sends what an attacker or a careless client would, checks every answer is the expected 4xx (never a
5xx), and reports the worker's resident memory before, at its peak (sampled every 20 ms) and after,
the growth of the log's files, and the bytes of the largest answer. Target: no scenario raises the
worker's RSS by more than 100 MiB, and no refused request grows the log.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.loadgen import ServiceProcess, free_port, http_request, read_status_kib

REPO = Path(__file__).resolve().parents[1]
JSON = {"Content-Type": "application/json"}
RSS_BUDGET_MIB = 100


class PeakRss:
    """Samples a process's resident memory in the background while a scenario runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, read_status_kib(self.pid) or 0)
            time.sleep(0.02)


def example_record(port: int) -> tuple[dict[str, Any], str]:
    """A valid record (every feature at its example value) and the name of a categorical feature."""
    status, _, body = http_request(port, "GET", "/metadata")
    if status != 200:
        raise SystemExit(f"/metadata answered {status}")
    features = json.loads(body)["inputs"]
    record = {feature["name"]: feature["example"] for feature in features}
    categorical = next((f["name"] for f in features if f["kind"] == "categorical"), features[0]["name"])
    return record, categorical


def scenarios(record: dict[str, Any], categorical: str, args: argparse.Namespace) -> list[tuple[str, Callable]]:
    """(name, send) pairs; ``send(port)`` returns the statuses and the largest answer's size."""

    def many_huge_texts(port: int) -> tuple[Counter, int]:
        def one(i: int) -> tuple[int, int]:
            text = (f"{i:08d}" * (1 << 17))[: 1 << 20]  # a different 1 MB text each time
            status, _, answer = http_request(
                port, "POST", "/predict", json.dumps({**record, categorical: text}).encode(), JSON
            )
            return status, len(answer)

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(args.texts)))
        return Counter(status for status, _ in results), max(size for _, size in results)

    def feedback_floods(port: int) -> tuple[Counter, int]:
        body = b'{"outcomes": [' + b'{"prediction_id": "x", "churned": true},' * (args.feedback_mb * 24_000) + b"{}]}"

        def one(_: int) -> tuple[int, int]:
            try:
                status, _, answer = http_request(port, "POST", "/feedback", body, JSON, timeout_s=120)
            except OSError:  # the server may close the connection once it has answered 413
                return 413, 0
            return status, len(answer)

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one, range(4)))
        return Counter(status for status, _ in results), max(size for _, size in results)

    def batch_of_errors(port: int) -> tuple[Counter, int]:
        bad = {**record, categorical: "y" * 5000, **{f"unknown_{i}": "z" * 100 for i in range(20)}}
        body = json.dumps([bad] * 1500).encode()  # about 15 MB, every record invalid
        status, _, answer = http_request(port, "POST", "/predict/batch", body, JSON, timeout_s=120)
        return Counter([status]), len(answer)

    def concurrent_batches(port: int) -> tuple[Counter, int]:
        body = json.dumps([{**record, "customer_id": f"c{i}"} for i in range(10_000)]).encode()

        def one(_: int) -> tuple[int, int]:
            status, _, answer = http_request(port, "POST", "/predict/batch", body, JSON, timeout_s=300)
            return status, len(answer)

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        return Counter(status for status, _ in results), max(size for _, size in results)

    def malformed(port: int) -> tuple[Counter, int]:
        text = json.dumps(record)
        bodies = [
            ("/predict/batch", f"[{text}]".encode().replace(b"}", b', "x": "\xff"}'), JSON),  # invalid UTF-8
            ("/predict", (text[:-1] + f', "{categorical}": "again"}}').encode(), JSON),  # a repeated key
            ("/predict", text.encode(), {"Content-Type": "text/plain"}),
            ("/predict", text.encode(), {}),
            ("/predict", gzip.compress(text.encode()), {**JSON, "Content-Encoding": "gzip"}),
            ("/predict", json.dumps({**record, "customer_id": "c" * 300}).encode(), JSON),
        ]
        results = [http_request(port, "POST", path, body, headers) for path, body, headers in bodies]
        return Counter(status for status, _, _ in results), max(len(answer) for _, _, answer in results)

    return [
        (f"{args.texts} requests, each a different 1 MB text in `{categorical}`", many_huge_texts),
        (f"4 concurrent {args.feedback_mb} MB bodies to /feedback without a key", feedback_floods),
        ("a 15 MB batch of 1,500 invalid records", batch_of_errors),
        ("8 concurrent valid batches of 10,000 records", concurrent_batches),
        ("invalid UTF-8, a repeated key, text/plain, no Content-Type, gzip, a 300-character id", malformed),
    ]


def log_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("predictions.sqlite3*"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a model directory with a current bundle")
    parser.add_argument("--texts", type=int, default=1800, help="requests with a different 1 MB text (default 1800)")
    parser.add_argument("--feedback-mb", type=int, default=210, help="size of each /feedback body (default 210)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="churn-abuse-"))
    port = free_port()
    env = {
        **os.environ,
        "CHURN_API_KEY": "a-real-secret-key",
        "CHURN_DATABASE_URL": f"sqlite:///{work / 'predictions.sqlite3'}",
        "CHURN_SHUTDOWN_DRAIN_SECONDS": "0",
    }
    command = [sys.executable, "-m", "app", "--model-dir", str(args.model_dir), "--port", str(port), "--workers", "1"]
    print("| scenario | answers | RSS before / peak / after (MiB) | peak growth | log growth | largest answer |")
    print("|---|---|---|---|---|---|")
    failures = 0
    with ServiceProcess("service", command, port, work / "service.log", env=env, cwd=REPO) as service:
        service.wait_ready("/ready")
        record, categorical = example_record(port)
        for name, send in scenarios(record, categorical, args):
            time.sleep(1.5)  # the log's writer flushes what came before
            before_rss, before_log = read_status_kib(service.pid) or 0, log_bytes(work)
            with PeakRss(service.pid) as peak:
                statuses, largest = send(port)
            time.sleep(1.5)
            after_rss, grown = read_status_kib(service.pid) or 0, log_bytes(work) - before_log
            growth = (peak.peak_kib - before_rss) / 1024
            # Scored records are logged (bounded by retention); refused ones must leave no trace.
            refused_only = all(400 <= status < 500 for status in statuses)
            failed = growth > RSS_BUDGET_MIB or any(status >= 500 for status in statuses)
            failed = failed or (refused_only and grown > 1 << 20)
            failures += failed
            answers = ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items()))
            print(
                f"| {name} | {answers} | {before_rss / 1024:.0f} / {peak.peak_kib / 1024:.0f} / {after_rss / 1024:.0f} "
                f"| {growth:+.0f} MiB{' FAIL' if failed else ''} | {grown / 1024:+.0f} KiB | {largest:,} bytes |"
            )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
