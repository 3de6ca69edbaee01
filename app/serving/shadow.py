"""The challenger in shadow: scores calls the champion already answered, off the caller's path.

:meth:`ShadowRunner.submit` is all a request pays: a put into a bounded queue that never blocks
(a full queue skips the call, counted). One daemon thread scores what is queued with the
challenger, with no reasons, and hands the answers, under the champion's prediction ids, to
monitoring's shadow log. A slow or failing challenger delays and fails nothing but itself.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from app.monitoring.shadow_log import ShadowAnswers, ShadowLog
from app.monitoring.throttled import ThrottledErrors
from app.serving.challenger import Challenger
from app.serving.response import ScoredRecords

logger = logging.getLogger(__name__)

WRITE_EVERY_SECONDS = 1.0  # how often the thread writes what it scored to the log


@dataclass(frozen=True)
class ShadowCall:
    challenger: Challenger
    records: list[Any]  # the call's parsed records, as the champion got them
    champion: ScoredRecords


class ShadowRunner:
    """A bounded queue of calls for the challenger, and the thread that scores them."""

    def __init__(self, log: ShadowLog, queue_size: int) -> None:
        self.log = log
        self._queue: queue.Queue[ShadowCall | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._errors = ThrottledErrors(logger)

    def submit(self, challenger: Challenger, records: list[Any], champion: ScoredRecords) -> None:
        """Queue a call the champion answered; skip it (counted) when the challenger is behind. Never blocks."""
        try:
            self._queue.put_nowait(ShadowCall(challenger, records, champion))
        except queue.Full:
            self.log.failed(challenger.version, "skipped", len(champion.indices))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="challenger-shadow", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the calls already queued (or after ``timeout``), writing what was scored."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):  # a queue that stays full: the join below times out
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout=timeout)
        self._thread = None
        self.log.write()

    def _run(self) -> None:
        last_write = time.monotonic()
        while True:
            try:
                call = self._queue.get(timeout=WRITE_EVERY_SECONDS)
            except queue.Empty:
                self.log.write()
                last_write = time.monotonic()
                continue
            if call is None:  # from stop(): everything queued before it has been scored
                return
            self._score(call)
            if time.monotonic() - last_write >= WRITE_EVERY_SECONDS:
                self.log.write()
                last_write = time.monotonic()

    def _score(self, call: ShadowCall) -> None:
        challenger, champion = call.challenger, call.champion
        started = time.perf_counter()
        try:
            outcome = challenger.predictor.predict_records(call.records, explain=False)
        except Exception as exc:  # the challenger's failure is its own: counted, logged, never raised
            self.log.failed(challenger.version, "failed", len(champion.indices))
            self._errors.error("challenger %s failed in shadow: %s", challenger.version, exc, exc_info=exc)
            return
        seconds = time.perf_counter() - started
        if outcome.errors:
            self.log.failed(challenger.version, "refused", len(outcome.errors))
        scored = outcome.scored
        if scored is None:
            return
        # Only records both models scored are compared, each under the champion's prediction id.
        champion_at = {index: position for position, index in enumerate(champion.indices)}
        positions = [(mine, champion_at[index]) for mine, index in enumerate(scored.indices) if index in champion_at]
        self.log.scored(
            ShadowAnswers(
                model_version=challenger.version,
                predicted_at=time.time(),
                prediction_ids=[champion.prediction_ids[theirs] for _, theirs in positions],
                scores=[scored.probabilities[mine] for mine, _ in positions],
                decisions=[scored.decisions[mine] for mine, _ in positions],
                risk_bands=[scored.risk_bands[mine] for mine, _ in positions],
                champion_decisions=[champion.decisions[theirs] for _, theirs in positions],
                seconds=seconds,
            )
        )
