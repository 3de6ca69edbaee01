"""The drift window of every replica: each service process's slot counts kept in the log database.

On one host the workers share their slot tables through files (``app.monitoring.drift``). Replicas
on several hosts share nothing but the log database, so with ``CHURN_DRIFT_SHARING=database`` each
process also writes the slots it counted since its last update to ``drift_window_slots`` (one row per
process and slot), and every update sums the rows of all processes inside the window. Every replica
then computes the same PSI, thresholds and performance estimate from the same summed counts, as one
service, and an alert fires once whichever replica Prometheus asks.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence

import numpy as np
from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import SQLAlchemyError

from app.monitoring.log_store import create_tables, drift_slots_table

COUNTS_DTYPE = np.dtype("<i8")


def process_source() -> str:
    """This process among all replicas: host, pid and a token for a pid reused after a restart."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SharedWindow:
    """Slot counts of every service process, in the log database."""

    def __init__(self, engine: Callable[[], Engine | None], source: str | None = None) -> None:
        self._engine = engine
        self.source = source or process_source()
        self._tables_checked = False

    def _begin(self) -> Engine:
        engine = self._engine()
        if engine is None:
            raise SQLAlchemyError("the prediction log database is not started")
        if not self._tables_checked:
            create_tables(engine)
            self._tables_checked = True
        return engine

    def publish(self, layout_key: str, rows: Sequence[tuple[int, np.ndarray]]) -> None:
        """Replace this process's counts of these slots (SQLAlchemyError when the database fails)."""
        if not rows:
            return
        table, now = drift_slots_table, time.time()
        slots = [slot for slot, _ in rows]
        with self._begin().begin() as connection:
            connection.execute(
                delete(table).where(
                    table.c.layout_key == layout_key, table.c.source == self.source, table.c.slot.in_(slots)
                )
            )
            connection.execute(
                insert(table),
                [
                    {
                        "layout_key": layout_key,
                        "source": self.source,
                        "slot": slot,
                        "counts": np.ascontiguousarray(counts, dtype=COUNTS_DTYPE).tobytes(),
                        "updated_at": now,
                    }
                    for slot, counts in rows
                ],
            )

    def window(self, layout_key: str, first_slot: int, last_slot: int, width: int) -> np.ndarray:
        """The summed counts of every process's slots in [first_slot, last_slot]."""
        table = drift_slots_table
        total = np.zeros(width, dtype=np.int64)
        query = select(table.c.counts).where(
            table.c.layout_key == layout_key, table.c.slot >= first_slot, table.c.slot <= last_slot
        )
        with self._begin().connect() as connection:
            for (blob,) in connection.execute(query):
                counts = np.frombuffer(blob, dtype=COUNTS_DTYPE)
                if counts.size == width:  # a row of another layout width cannot be this key's
                    total += counts
        return total

    def remove_before(self, slot: int) -> int:
        """Delete every process's rows of slots before ``slot`` (out of any window); rows deleted."""
        with self._begin().begin() as connection:
            return connection.execute(delete(drift_slots_table).where(drift_slots_table.c.slot < slot)).rowcount
