"""The local spool: durable segments, one owner per segment, a byte budget, what dead writers leave."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from app.monitoring.spool import PARTIAL, SEALED, Spool, SpoolSegment

ROWS = [
    ("id-1", 1.5, "v1", "C-1", '{"a": 1}', 0.25, False, "low", 0.001, 1),
    ("id-2", 2.5, "v1", None, "{}", 0.75, True, "high", 0.002, 1),
]


def started(directory: Path, max_bytes: int = 1 << 20) -> Spool:
    spool = Spool(directory, max_bytes)
    spool.start()
    return spool


def claimed(spool: Spool) -> list[SpoolSegment]:
    segments = list(spool.claim())
    assert all(isinstance(segment, SpoolSegment) for segment in segments)
    return segments  # type: ignore[return-value]


def test_spooled_rows_come_back_whole_once_released(tmp_path):
    spool = started(tmp_path)
    segment = spool.write(ROWS)
    assert segment is not None
    assert claimed(spool) == []  # its writer still holds it
    segment.release()
    assert spool.pending_rows() == 2
    [replay] = claimed(spool)
    assert replay.rows == ROWS
    replay.remove()
    assert spool.pending_rows() == 0 and claimed(spool) == []


def test_one_claimer_at_a_time(tmp_path):
    spool = started(tmp_path)
    spool.write(ROWS).release()
    first = next(iter(spool.claim()))
    assert list(Spool(tmp_path, 1 << 20).claim()) == []  # another worker finds it taken
    first.release()
    assert len(claimed(Spool(tmp_path, 1 << 20))) == 1


def test_the_budget_refuses_what_does_not_fit(tmp_path):
    spool = started(tmp_path)
    spool.write(ROWS).release()
    spool.max_bytes = spool.used_bytes() + 10  # room for the one segment, not a second
    assert spool.write(ROWS) is None
    assert spool.pending_rows() == 2
    assert started(tmp_path / "off", max_bytes=0).write(ROWS) is None


def test_a_corrupt_segment_is_counted_and_removed(tmp_path):
    spool = started(tmp_path)
    spool.write(ROWS).release()
    [path] = tmp_path.glob(f"*{SEALED}")
    path.write_bytes(path.read_bytes()[:-5])
    assert list(spool.claim()) == [2]
    assert list(tmp_path.iterdir()) == []


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_partial_files_of_dead_writers_are_sealed_or_counted_lost(tmp_path):
    writer = started(tmp_path / "writer")
    writer.write(ROWS).release()
    [whole] = (tmp_path / "writer").glob(f"*{SEALED}")
    pid = dead_pid()
    (tmp_path / f"00000000000000000001-{pid}-0-2{PARTIAL}").write_bytes(whole.read_bytes())
    (tmp_path / f"00000000000000000002-{pid}-1-7{PARTIAL}").write_bytes(whole.read_bytes()[:20])
    spool = Spool(tmp_path, 1 << 20)
    assert spool.start() == 7  # the torn one
    [replay] = claimed(spool)
    assert replay.rows == ROWS


def test_a_killed_writers_segment_is_replayed_by_another_process(tmp_path):
    """Written ahead and still locked by its writer; free for the others once the writer is killed."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from app.monitoring.spool import Spool
        spool = Spool(Path({str(tmp_path)!r}), 1 << 20)
        spool.start()
        segment = spool.write({ROWS!r})
        print("written", flush=True)
        time.sleep(60)
        """
    )
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert writer.stdout.readline().strip() == "written"
        spool = Spool(tmp_path, 1 << 20)
        assert claimed(spool) == []
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        [replay] = claimed(spool)
        assert replay.rows == ROWS
    finally:
        writer.kill()
        writer.wait()
