"""Several worker processes: one scrape sums their counters, drift sees every worker's bins, dead workers leave.

Each worker is a fresh interpreter with PROMETHEUS_MULTIPROC_DIR set before anything is imported,
exactly as the service starts its workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.app.monitoring.monitoring_helpers import make_manifest, metric_value

REPO = Path(__file__).resolve().parents[3]
WORKER = r"""
import asyncio, json, os, sys, time
from pathlib import Path
sys.path.insert(0, os.getcwd())
from app.monitoring import Monitor
from app.monitoring.metrics import multiprocess_directory
from tests.app.monitoring.monitoring_helpers import make_event, make_manifest, make_settings

args = json.loads(sys.argv[1])
shared = Path(args["shared"])
assert multiprocess_directory() == os.environ["PROMETHEUS_MULTIPROC_DIR"]

def wait_for(pattern, count):
    deadline = time.time() + 60
    while len(list(shared.glob(pattern))) < count:
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {pattern}")
        time.sleep(0.01)

monitor = Monitor(make_settings(shared, drift_update_seconds=3600, performance_update_seconds=3600))
asyncio.run(monitor.start())
manifest = make_manifest()
monitor.model_loaded(manifest)
for i in range(args["singles"]):
    monitor.record(make_event(manifest, 1, seed=args["seed"] + i, timestamp=args["now"]))
monitor.record(make_event(manifest, args["batch"], seed=args["seed"] + 10_000, timestamp=args["now"]))
monitor.update_drift(now=args["now"])  # what each worker's drift thread does every drift_update_seconds
(shared / f"counted-{os.getpid()}").touch()
wait_for("counted-*", args["workers"])  # drift figures must see every worker's bins
snapshot = monitor.update_drift(now=args["now"])
print(json.dumps({"pid": os.getpid(), "window": snapshot.window_predictions}), flush=True)
(shared / f"published-{os.getpid()}").touch()
wait_for("stop", 1)
asyncio.run(monitor.stop())
"""


def scrape(directory: Path) -> str:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return generate_latest(registry).decode()


def series(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def test_two_workers_aggregate_in_one_scrape(tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    now = time.time()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    plan = [{"singles": 30, "batch": 400, "seed": 1}, {"singles": 20, "batch": 250, "seed": 50_000}]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps({**p, "shared": str(tmp_path), "now": now, "workers": 2})],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in plan
    ]
    try:
        deadline = time.time() + 60
        while len(list(tmp_path.glob("published-*"))) < 2:
            assert all(w.poll() is None for w in workers), [w.communicate() for w in workers]
            assert time.time() < deadline, "workers did not publish"
            time.sleep(0.02)
        while_alive = scrape(metrics_dir)
    finally:
        (tmp_path / "stop").touch()
        outputs = [w.communicate(timeout=60) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    after_exit = scrape(metrics_dir)

    total = sum(p["singles"] + p["batch"] for p in plan)
    version = make_manifest().version
    for text in (while_alive, after_exit):  # counters survive their workers: no zig-zag between scrapes
        predictions = sum(
            v for labels, v in series(text, "churn_predictions_total") if labels["model_version"] == version
        )
        assert predictions == total
        assert metric_value(text, "churn_prediction_score_count") == total
        assert metric_value(text, "churn_prediction_log_written_total") == total or text is while_alive
        assert metric_value(text, "churn_drift_window_predictions") == total  # bins of both workers, one figure
    # Each worker computed its figures from both tables.
    windows = [json.loads(out.strip().splitlines()[-1])["window"] for out, _ in outputs]
    assert windows == [total, total]
    # Live gauges: one memory series per live worker, none once they have exited.
    pids = {labels["pid"] for labels, _ in series(while_alive, "churn_worker_resident_memory_bytes")}
    assert pids == {str(w.pid) for w in workers}
    assert series(after_exit, "churn_worker_resident_memory_bytes") == []
    assert metric_value(while_alive, "churn_model_ready") == 1
    assert [v for _, v in series(while_alive, "churn_model_info")] == [1.0]
    assert metric_value(after_exit, "churn_prediction_log_written_total") == total


def test_live_gauges_of_a_killed_worker_are_swept(tmp_path):
    import signal
    import subprocess
    import sys
    from types import SimpleNamespace

    from app.monitoring.metrics import Metrics

    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (killed.pid, alive.pid, os.getpid()):
            (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"")
        (tmp_path / f"counter_{killed.pid}.db").write_bytes(b"")

        swept = Metrics.sweep_dead_workers(SimpleNamespace(multiprocess_dir=str(tmp_path)))  # type: ignore[arg-type]
    finally:
        alive.kill()
        alive.wait()

    assert swept == [killed.pid]
    remaining = {path.name for path in tmp_path.iterdir()}
    assert remaining == {f"gauge_livesum_{alive.pid}.db", f"gauge_livesum_{os.getpid()}.db", f"counter_{killed.pid}.db"}
