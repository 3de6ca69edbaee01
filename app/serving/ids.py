"""Prediction ids: unique, time-ordered, 32 hex digits, quoted back in POST /feedback."""

from __future__ import annotations

import os
import secrets
import threading
import time


class PredictionIds:
    """Ids of milliseconds since the epoch (12 digits), a random tag of this process (12) and a
    per-process sequence number (8).

    Time-ordered like UUIDv7, so the prediction log's primary-key index grows at its end instead of
    at random places; unique across workers through the tag, within one through the sequence; no
    random number and no system call per prediction.
    """

    def __init__(self, start: int = 0) -> None:
        self._lock = threading.Lock()
        self._start = start  # the first sequence number of each process
        self._pid = -1
        self._tag = ""
        self._next = start

    def take(self, count: int) -> list[str]:
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not reuse its parent's tag
                self._pid, self._tag, self._next = os.getpid(), secrets.token_hex(6), self._start
            first, self._next = self._next, self._next + count
        prefix = f"{int(time.time() * 1000) & 0xFFFF_FFFF_FFFF:012x}{self._tag}"
        low = first & 0xFFFF_FFFF
        if count == 1:
            return [f"{prefix}{low:08x}"]
        if low + count <= 0x1_0000_0000:  # no wrap of the 8 digits: one %-format per id, mapped in C
            return list(map(f"{prefix}%08x".__mod__, range(low, low + count)))
        return [f"{prefix}{sequence & 0xFFFF_FFFF:08x}" for sequence in range(first, first + count)]


new_prediction_ids = PredictionIds().take
