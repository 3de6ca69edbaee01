"""The prediction log's writer process: it writes, survives a terminal's Ctrl-C, ends with the service,
and a crash loses only what it held (counted), never the service."""

from __future__ import annotations

import os
import signal
import time

from app.monitoring import Monitor
from app.monitoring.log_process import LogWriterProcess
from app.monitoring.log_store import pending_rows
from tests.app.monitoring.monitoring_helpers import make_event, make_settings, metric_value, running
from tests.app.monitoring.test_monitoring_prediction_log import dropped, logged_rows, logged_rows_after, wait_until


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(pid, 0); its state says it has exited
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def writer_of(monitor: Monitor) -> LogWriterProcess:
    writer = monitor.log._writer
    assert isinstance(writer, LogWriterProcess)
    return writer


def test_the_writer_process_writes_and_exits_with_the_service(tmp_path, manifest):
    monitor = Monitor(make_settings(tmp_path, prediction_log_flush_seconds=3600))
    with running(monitor):
        monitor.model_loaded(manifest)
        pid = writer_of(monitor).pid
        assert pid is not None and pid != os.getpid()
        monitor.record(make_event(manifest, 40, seed=1))
        monitor.record(make_event(manifest, 1, seed=2))
    # Stopping wrote what was still queued, then ended the child.
    assert len(logged_rows_after(monitor)) == 41
    assert wait_until(lambda: not alive(pid))
    assert metric_value(monitor.metrics.exposition().decode(), "churn_prediction_log_written_total") == 41


def test_a_terminal_interrupt_does_not_stop_the_writer_before_the_service(tmp_path, manifest):
    monitor = Monitor(make_settings(tmp_path, prediction_log_flush_seconds=3600))
    with running(monitor):
        monitor.model_loaded(manifest)
        pid = writer_of(monitor).pid
        assert pid is not None
        assert monitor.write_log() == 0  # the child is up and answering
        os.kill(pid, signal.SIGINT)
        time.sleep(0.3)
        assert alive(pid)
        monitor.record(make_event(manifest, 5, seed=1))
        assert monitor.write_log() == 5


def test_a_crashed_writer_loses_only_its_rows_counted_and_a_new_one_takes_over(tmp_path, manifest):
    monitor = Monitor(make_settings(tmp_path, prediction_log_flush_seconds=3600))
    with running(monitor):
        monitor.model_loaded(manifest)
        monitor.record(make_event(manifest, 3, seed=1))
        assert monitor.write_log() == 3
        first = writer_of(monitor).pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: not alive(first))

        monitor.record(make_event(manifest, 4, seed=2))
        assert monitor.write_log() == 0  # these went down with the child: counted, not raised
        assert dropped(monitor)["writer_failed"] == 4
        second = writer_of(monitor).pid
        assert second is not None and second != first

        monitor.record(make_event(manifest, 6, seed=3))
        assert monitor.write_log() == 6
        assert len(logged_rows(monitor)) == 9


def test_a_writer_that_stops_answering_is_replaced(tmp_path, manifest, monkeypatch):
    import app.monitoring.log_process as log_process

    writer = LogWriterProcess(f"sqlite:///{tmp_path / 'log.sqlite3'}", batch_size=100, queue_size=1000)
    writer.start()
    try:
        first = writer.pid
        assert first is not None
        os.kill(first, signal.SIGSTOP)  # hung: alive but silent
        with monkeypatch.context() as patch:
            patch.setattr(log_process, "REPLY_TIMEOUT_S", 0.5)
            report = writer.write(pending_rows(make_event(manifest, 2, seed=1), None))
        assert report.dropped["writer_failed"] == 2 and report.written == 0
        assert wait_until(lambda: not alive(first))
        report = writer.write(pending_rows(make_event(manifest, 2, seed=2), None))
        assert report.written == 2 and writer.pid not in (None, first)
    finally:
        writer.close()
