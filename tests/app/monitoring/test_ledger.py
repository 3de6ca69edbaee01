"""The ledger: without the journal, what a worker killed with -9 had not written is counted and told."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from app.monitoring import Monitor
from tests.app.monitoring.monitoring_helpers import make_settings, metric_value, running
from tests.app.monitoring.test_journal import CHILD, ROOT, logged_ids


def test_without_the_journal_a_killed_workers_unwritten_rows_are_counted_and_told(tmp_path, caplog):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.replace('"journal"', '"flush"'), str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        answered = set(json.loads(child.stdout.readline()))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    successor = Monitor(make_settings(tmp_path, prediction_log_flush_seconds=0.05))
    with running(successor):
        text = successor.metrics.exposition().decode()
        assert metric_value(text, "churn_prediction_log_dropped_total", reason="worker_killed") == len(answered) == 15
        assert not logged_ids(successor) & answered
    assert any("without writing 15 answered predictions" in record.getMessage() for record in caplog.records)
    assert not list((tmp_path / "spool").rglob("*.ledger"))  # settled, and the successor's own removed at its stop
