"""The journal: with durability "journal", a worker killed with -9 loses nothing it answered."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from app.monitoring import Monitor
from app.monitoring.journal import SUFFIX, Journal, read_rows, recover
from app.monitoring.log_store import predictions_table
from app.monitoring.spool import Spool
from tests.app.monitoring.monitoring_helpers import make_event, make_settings, running, wait_until

ROOT = Path(__file__).resolve().parents[3]

# A worker that answers (records) predictions, says so, and waits to be killed before any flush.
CHILD = """
import asyncio, json, sys, time
from pathlib import Path
from app.monitoring import Monitor
from tests.app.monitoring.monitoring_helpers import make_event, make_manifest, make_settings
monitor = Monitor(make_settings(Path(sys.argv[1]), prediction_log_flush_seconds=3600,
                                prediction_log_batch_size=100000, prediction_log_durability="journal"))
asyncio.run(monitor.start())
manifest = make_manifest()
monitor.model_loaded(manifest)
ids = []
for seed in range(5):
    event = make_event(manifest, 1 + seed, seed=seed)
    monitor.record(event)
    ids += event.prediction_ids
print(json.dumps(ids), flush=True)
time.sleep(600)
"""


def logged_ids(monitor: Monitor) -> set[str]:
    with monitor.log.connection() as connection:
        return set(connection.execute(select(predictions_table.c.prediction_id)).scalars())


def test_rows_answered_by_a_worker_killed_with_9_are_logged_by_the_next(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        answered = set(json.loads(child.stdout.readline()))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert len(answered) == 15
    settings = make_settings(tmp_path, prediction_log_flush_seconds=0.05, prediction_log_durability="journal")
    successor = Monitor(settings)
    with running(successor):
        assert wait_until(lambda: logged_ids(successor) == answered, timeout=10)
    assert not list((tmp_path / "spool").rglob(f"*{SUFFIX}"))  # recovered, and this worker's own file removed


def test_a_flush_removes_the_journal_of_what_it_wrote(tmp_path, manifest):
    monitor = Monitor(make_settings(tmp_path, prediction_log_flush_seconds=3600, prediction_log_durability="journal"))
    with running(monitor):
        monitor.model_loaded(manifest)
        event = make_event(manifest, 7, seed=1)
        monitor.record(event)
        (journal,) = list((tmp_path / "spool").rglob(f"*{SUFFIX}"))
        assert [row[0] for row in read_rows(journal)] == event.prediction_ids
        monitor.recorder.process()
        monitor.recorder.write_log()
        assert logged_ids(monitor) == set(event.prediction_ids)
        files = list((tmp_path / "spool").rglob(f"*{SUFFIX}"))
        assert len(files) == 1 and read_rows(files[0]) == []  # only the fresh, empty file is left


def test_recovery_skips_live_writers_and_a_torn_last_line(tmp_path):
    directory, spool = tmp_path / "journal", Spool(tmp_path / "spool", 1 << 20)
    spool.start()
    live = Journal(directory)
    live.start(spool)
    live.append([("live", 1.0)])
    dead = directory / f"00000000000000000001-999999{SUFFIX}"
    dead.write_bytes(b'["a", 1.0, null, true]\n["b", 2.0, "x", false]\n["c", 3.')
    rotated = live.rotate()  # rotated out but not yet written: its writer still holds it
    assert rotated is not None
    assert recover(directory, spool) == 2
    assert not dead.exists()
    (segment,) = spool.claim()
    assert segment.rows == [("a", 1.0, None, True), ("b", 2.0, "x", False)]
    assert len(list(directory.glob(f"*{SUFFIX}"))) == 2  # the live writer's files stay
