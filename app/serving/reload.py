"""Hot reload that reaches every worker process.

``POST /admin/reload`` lands on one worker. That worker loads, verifies and warms whatever
``current`` names, swaps it in and announces ``{generation, version}`` in ``reload.json`` inside a
directory every worker of one ``python -m app`` run shares (``CHURN_RELOAD_DIR``, which
``python -m app`` creates). A lock file there makes reloads of the whole service happen one at a
time, so generations only grow and the last announcement is the one everybody ends on.

Every worker reads that small file every ``reload_poll_seconds``. On a newer generation naming a
version it does not serve, it loads exactly that version (not whatever ``current`` names by then),
verifies and warms it off the event loop and swaps it in; if that fails it keeps its model, logs
why and counts a failed reload. Each worker writes what it serves to ``served/<pid>.json``, which
lets the worker that took the request answer with what the whole service serves.

A worker started later (a replaced or restarted one) loads ``current`` like any startup and
follows only announcements made after it began loading. Without a shared directory (a single
process) a reload concerns this process only.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from app.serving.challenger import Challenger, Routing, load_challenger
from app.serving.predictor import Predictor, build_predictor
from app.settings import Settings
from bundle.manifest import BundleError

logger = logging.getLogger("app")

ANNOUNCEMENT_FILE = "reload.json"
LOCK_FILE = "reload.lock"
REPORTS_DIR = "served"
# How often the worker that took a reload looks whether the others have reported the new version.
_CONFIRMATION_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class Announcement:
    """The version every worker should serve, as of reload number ``generation``."""

    generation: int
    version: str
    challenger: str | None = None  # the challenger's version, None when none takes part
    routing: Routing = field(default_factory=Routing)


@dataclass(frozen=True)
class WorkerReport:
    """What one worker serves after handling reload ``generation`` (``error``: why it could not switch)."""

    pid: int
    generation: int
    model_version: str | None
    error: str | None = None


@dataclass(frozen=True)
class Reloaded:
    """A successful reload in the worker that took the request."""

    predictor: Predictor
    previous_version: str | None
    generation: int  # 0 when no other worker needs telling


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    # Readers see the old content or the new, never a half-written file.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


def read_json_object(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, it just belongs to someone else
        return True
    return True


class WorkerSync:
    """This worker's side of the directory the workers of one run share."""

    def __init__(self, directory: Path, pid: int | None = None) -> None:
        self.directory = directory
        self.pid = pid or os.getpid()
        self.announcement_path = directory / ANNOUNCEMENT_FILE
        self.reports_dir = directory / REPORTS_DIR
        self.reports_dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def service_wide_lock(self) -> Iterator[None]:
        """Held by the worker taking a reload from loading to announcing; the kernel frees it if that worker dies."""
        with open(self.directory / LOCK_FILE, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read_announcement(self) -> Announcement | None:
        data = read_json_object(self.announcement_path)
        if data is None:
            return None
        try:
            challenger = data.get("challenger")
            routing = Routing(**data["routing"]) if isinstance(data.get("routing"), dict) else Routing()
            return Announcement(
                generation=int(data["generation"]),
                version=str(data["version"]),
                challenger=str(challenger) if challenger is not None else None,
                routing=routing,
            )
        except (KeyError, TypeError, ValueError):
            return None

    def announce(self, version: str, challenger: str | None = None, routing: Routing | None = None) -> Announcement:
        """Publish the next generation; call it with ``service_wide_lock`` held so generations never collide."""
        previous = self.read_announcement()
        announcement = Announcement(
            generation=(previous.generation if previous else 0) + 1,
            version=version,
            challenger=challenger,
            routing=routing or Routing(),
        )
        data = {**asdict(announcement), "routing": announcement.routing.as_dict()}
        write_json_atomically(self.announcement_path, data)
        return announcement

    def report(self, generation: int, model_version: str | None, error: str | None = None) -> None:
        report = WorkerReport(pid=self.pid, generation=generation, model_version=model_version, error=error)
        write_json_atomically(self.reports_dir / f"{self.pid}.json", asdict(report))

    def withdraw(self) -> None:
        (self.reports_dir / f"{self.pid}.json").unlink(missing_ok=True)

    def live_reports(self) -> list[WorkerReport]:
        """Every live worker's report; those of workers that died without withdrawing are removed."""
        reports = []
        for path in sorted(self.reports_dir.glob("*.json")):
            report = parse_report(read_json_object(path))
            if report is None:
                continue
            if not process_alive(report.pid):
                path.unlink(missing_ok=True)
                continue
            reports.append(report)
        return reports


def parse_report(data: dict[str, Any] | None) -> WorkerReport | None:
    if data is None:
        return None
    try:
        return WorkerReport(
            pid=int(data["pid"]),
            generation=int(data["generation"]),
            model_version=data.get("model_version"),
            error=data.get("error"),
        )
    except (KeyError, TypeError, ValueError):
        return None


# ---- loading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Loaded:
    """What a reload loaded: the champion, the challenger (or why not), and its generation."""

    predictor: Predictor
    challenger: Challenger | None
    challenger_error: str | None
    generation: int  # 0 when there is nobody to tell


def load_challenger_or_reason(
    settings: Settings, routing: Routing, version: str | None = None
) -> tuple[Challenger | None, str | None]:
    """The challenger, or None and why it was refused; its failure never fails the champion's reload."""
    try:
        return load_challenger(settings, routing, version), None
    except BundleError as exc:
        logger.error("challenger refused, the champion serves alone: %s", exc)
        return None, str(exc)


def load_current_and_announce(settings: Settings, sync: WorkerSync | None, routing: Routing) -> Loaded:
    """Load the champion ``current`` names and the challenger, and tell the other workers."""
    if sync is None:
        predictor = build_predictor(settings)
        return Loaded(predictor, *load_challenger_or_reason(settings, routing), 0)
    with sync.service_wide_lock():
        predictor = build_predictor(settings)
        challenger, error = load_challenger_or_reason(settings, routing)
        announced = sync.announce(predictor.version, challenger.version if challenger else None, routing)
        return Loaded(predictor, challenger, error, announced.generation)


def swap_in_challenger(app: FastAPI, challenger: Challenger | None, error: str | None, routing: Routing) -> None:
    """Make ``challenger`` the one taking part (None: the champion serves alone)."""
    state = app.state
    state.routing = routing
    if challenger is not None and routing.mode == "shadow" and state.shadow is None:
        challenger, error = None, "shadow mode needs monitoring on (CHURN_MONITORING_ENABLED=true)"
    state.challenger = challenger
    state.challenger_error = error
    state.monitor.challenger_loaded(challenger.version if challenger else None, routing.mode)


def swap_in(app: FastAPI, predictor: Predictor) -> None:
    """Make ``predictor`` the one serving: one reference assignment, so in-flight requests finish on theirs."""
    app.state.predictor = predictor
    app.state.model_error = None
    app.openapi_schema = None  # the request schema follows the new bundle
    app.state.monitor.model_loaded(predictor.manifest)


# ---- the worker that takes the request ------------------------------------------------------------
async def reload_service(app: FastAPI, routing: Routing | None = None) -> Reloaded:
    """Load what ``current`` (and ``challenger``) name, swap them in here and announce them to the other workers.

    ``routing``: how the challenger takes part from now on (default: as now). Raises BundleError,
    with nothing announced and the old model serving everywhere, when the champion's bundle is
    unusable; a refused challenger leaves the champion serving alone (``challenger_error`` says why).
    """
    state = app.state
    routing = routing or state.routing
    async with state.reload_lock:
        previous = state.predictor
        # Off the event loop: a load takes seconds and requests keep being served meanwhile. The
        # service-wide lock is taken and released inside that one thread call, so a cancelled
        # request can never leave it held.
        try:
            loaded = await run_in_threadpool(load_current_and_announce, state.settings, state.worker_sync, routing)
        except BundleError as exc:
            serving = f"still serving {previous.version}" if previous else "no model is serving"
            logger.error("reload failed, %s: %s", serving, exc)
            raise
        predictor, generation = loaded.predictor, loaded.generation
        swap_in(app, predictor)
        swap_in_challenger(app, loaded.challenger, loaded.challenger_error, routing)
        logger.info(
            "reloaded: model %s (%s) loaded, verified and warm in %.2f s (was %s)",
            predictor.version,
            predictor.manifest.model_family,
            predictor.load_seconds,
            previous.version if previous else "no model",
        )
        state.reload_generation = generation
        if state.worker_sync is not None:
            state.worker_sync.report(generation, predictor.version)
    return Reloaded(predictor, previous.version if previous else None, generation)


async def await_workers(app: FastAPI, reloaded: Reloaded) -> list[WorkerReport]:
    """Every live worker's report once all have handled the reload, or as they stand when the wait ends."""
    sync: WorkerSync | None = app.state.worker_sync
    if sync is None:
        return [WorkerReport(pid=os.getpid(), generation=0, model_version=reloaded.predictor.version)]
    deadline = time.monotonic() + app.state.settings.reload_wait_seconds
    while True:
        reports = await run_in_threadpool(sync.live_reports)
        if all(report.generation >= reloaded.generation for report in reports) or time.monotonic() >= deadline:
            return reports
        await asyncio.sleep(_CONFIRMATION_POLL_SECONDS)


# ---- every other worker -----------------------------------------------------------------------------
async def follow_reloads(app: FastAPI) -> None:
    """Background task of every worker: switch to each version another worker announces."""
    poll_seconds = app.state.settings.reload_poll_seconds
    while True:
        await asyncio.sleep(poll_seconds)
        try:
            await follow_announcement(app)
        except Exception:  # the loop must outlive any surprise, or this worker stops following for good
            logger.exception("checking for a reload announced by another worker failed; retrying")


async def follow_announcement(app: FastAPI) -> None:
    state = app.state
    announcement = state.worker_sync.read_announcement()
    if announcement is None or announcement.generation <= state.reload_generation:
        return
    async with state.reload_lock:
        # This worker may have taken a newer reload itself while waiting for the lock.
        if announcement.generation > state.reload_generation:
            await apply_announcement(app, announcement)


async def apply_announcement(app: FastAPI, announcement: Announcement) -> None:
    state = app.state
    serving: Predictor | None = state.predictor
    error = None
    if serving is None or serving.version != announcement.version:
        try:
            predictor = await run_in_threadpool(build_predictor, state.settings, announcement.version)
        except BundleError as exc:
            error = str(exc)
            keep_serving_after_failed_follow(app, announcement, error)
        else:
            swap_in(app, predictor)
            logger.info(
                "reloaded: model %s (%s) announced by another worker, loaded, verified and warm in %.2f s",
                predictor.version,
                predictor.manifest.model_family,
                predictor.load_seconds,
            )
    await follow_challenger(app, announcement)
    state.reload_generation = announcement.generation
    current = state.predictor
    state.worker_sync.report(announcement.generation, current.version if current else None, error)


async def follow_challenger(app: FastAPI, announcement: Announcement) -> None:
    """Take part with exactly the challenger and routing another worker announced."""
    state = app.state
    serving: Challenger | None = state.challenger
    wanted = announcement.challenger if announcement.routing.mode != "off" else None
    if serving is not None and serving.version == wanted:
        if serving.routing != announcement.routing:
            swap_in_challenger(app, Challenger(serving.predictor, announcement.routing), None, announcement.routing)
        return
    if wanted is None:
        swap_in_challenger(app, None, None, announcement.routing)
        return
    challenger, error = await run_in_threadpool(load_challenger_or_reason, state.settings, announcement.routing, wanted)
    swap_in_challenger(app, challenger, error, announcement.routing)


def keep_serving_after_failed_follow(app: FastAPI, announcement: Announcement, error: str) -> None:
    state = app.state
    state.monitor.reload_attempted(False)
    if state.predictor is None:
        state.model_error = error
    serving = f"still serving {state.predictor.version}" if state.predictor else "no model is serving"
    logger.error("reload to %s announced by another worker failed, %s: %s", announcement.version, serving, error)
