"""The retrainer: a small service that runs ``python -m training retrain`` when it is due or alerted.

    python -m training.retrainer --model-dir models --database-url URL [--schedule-hours 24]
        [--cool-down-hours 6] [--promote-if-better] [--reload-url http://api:8000/admin/reload]

Two things start a retraining: the schedule (every ``--schedule-hours``), and Alertmanager posting a
firing alert named in ``--alerts`` (drift, estimated or realized performance drop by default) to
``POST /alerts``, its webhook receiver. Each start runs the command in a child process, so training
never runs inside the API workers nor inside this server's event loop. One retraining at a time:
a start while one runs is declined, and the command itself refuses a second run on the same model
directory (its lock) and one within ``--cool-down-hours`` of the last (``--if-due``). After a
successful run, ``--reload-url`` (with ``CHURN_API_KEY``) asks the service to load what is now
current and challenger: every replica, when the URL's host name resolves to several addresses.
``GET /status`` says what ran, when, why and how it ended.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Header, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger("training.retrainer")

DEFAULT_ALERTS = ("ChurnFeatureDrift", "ChurnScoreDrift", "ChurnEstimatedRocAucDrop", "ChurnRealizedRocAucLow")
WEBHOOK_MAX_BODY_BYTES = 256 * 1024
OUTPUT_TAIL_LINES = 40  # of the command's output, kept for /status
HISTORY_RUNS = 20


@dataclass
class Run:
    trigger: str  # "schedule", "alert: <names>" or "manual"
    started_at: float
    finished_at: float | None = None
    exit_code: int | None = None
    outcome: str = "running"  # published, skipped, refused, failed, running
    output_tail: list[str] = field(default_factory=list)
    reload: str | None = None


OUTCOMES = {0: "published", 1: "failed", 2: "refused", 3: "skipped"}


class Retrainer:
    """Starts the retraining command, one run at a time, and remembers how the last runs ended."""

    def __init__(self, command: Sequence[str], reload_url: str | None = None, api_key: str | None = None) -> None:
        self.command = list(command)
        self.reload_url = reload_url
        self.api_key = api_key
        self.runs: deque[Run] = deque(maxlen=HISTORY_RUNS)
        self._lock = threading.Lock()
        self._running: Run | None = None

    def start(self, trigger: str) -> Run | None:
        """Start a run in the background; None when one is already running."""
        with self._lock:
            if self._running is not None:
                return None
            run = self._running = Run(trigger=trigger, started_at=time.time())
            self.runs.append(run)
        threading.Thread(target=self._execute, args=(run,), name="retraining", daemon=True).start()
        return run

    @property
    def running(self) -> Run | None:
        return self._running

    def _execute(self, run: Run) -> None:
        logger.info("retraining started (%s): %s", run.trigger, " ".join(self.command))
        try:
            completed = subprocess.run(self.command, capture_output=True, text=True, check=False)
            run.exit_code = completed.returncode
            run.output_tail = (completed.stdout + completed.stderr).splitlines()[-OUTPUT_TAIL_LINES:]
            run.outcome = OUTCOMES.get(completed.returncode, "failed")
            if run.exit_code == 0 and self.reload_url:
                run.reload = self._reload()
        except OSError as exc:  # the command could not start at all
            run.exit_code, run.outcome, run.output_tail = -1, "failed", [str(exc)]
        finally:
            run.finished_at = time.time()
            with self._lock:
                self._running = None
        logger.info("retraining %s (exit %s, %s)", run.outcome, run.exit_code, run.trigger)

    def _reload(self) -> str:
        """Ask every address the reload URL's host resolves to (each replica) to reload; their answers."""
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        url = httpx.URL(self.reload_url or "")
        answers = []
        for address in replica_addresses(url.host, url.port or 80):
            try:
                response = httpx.post(str(url.copy_with(host=address)), headers=headers, timeout=180)
            except httpx.HTTPError as exc:
                logger.error("replica %s could not be asked to reload: %s", address, exc)
                answers.append(f"{address}: failed: {exc}")
                continue
            answers.append(f"{address}: {response.status_code}: {response.text[:200]}")
        return "; ".join(answers) if len(answers) != 1 else answers[0].split(": ", 1)[1]


def replica_addresses(host: str, port: int) -> list[str]:
    """Every IPv4 address ``host`` resolves to (one per replica behind a service name), in a stable order."""
    try:
        found = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        return [host]  # let the request itself report the failure
    return sorted({info[4][0] for info in found}) or [host]


# ---- Alertmanager's webhook ------------------------------------------------------------------------
class AlertIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str = Field(max_length=32)
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)


class WebhookIn(BaseModel):
    """Alertmanager's webhook payload (version 4): only what deciding needs is read."""

    model_config = ConfigDict(extra="allow")

    status: str = Field(max_length=32)
    alerts: list[AlertIn] = Field(max_length=1000)


def firing_names(payload: WebhookIn, wanted: frozenset[str]) -> list[str]:
    return sorted({a.labels.get("alertname", "") for a in payload.alerts if a.status == "firing"} & wanted)


def create_app(retrainer: Retrainer, alerts: Sequence[str], schedule_hours: float, token: str | None) -> FastAPI:
    wanted = frozenset(alerts)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(schedule(retrainer, schedule_hours)) if schedule_hours > 0 else None
        yield
        if task is not None:
            task.cancel()

    app = FastAPI(title="Churn retrainer", lifespan=lifespan)

    def check_token(authorization: str | None) -> None:
        if token is not None and authorization != f"Bearer {token}":
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token")

    @app.post("/alerts", status_code=status.HTTP_202_ACCEPTED, max_body_size=WEBHOOK_MAX_BODY_BYTES)
    def alerts_webhook(payload: WebhookIn, authorization: str | None = Header(default=None)) -> dict[str, Any]:
        check_token(authorization)
        names = firing_names(payload, wanted)
        if not names:
            return {"started": False, "reason": "no firing alert that retrains"}
        run = retrainer.start(f"alert: {', '.join(names)}")
        if run is None:
            return {"started": False, "reason": "a retraining is already running"}
        return {"started": True, "trigger": run.trigger}

    @app.post("/retrain", status_code=status.HTTP_202_ACCEPTED)
    def retrain_now(authorization: str | None = Header(default=None)) -> dict[str, Any]:
        check_token(authorization)
        run = retrainer.start("manual")
        return {"started": run is not None, **({} if run else {"reason": "a retraining is already running"})}

    @app.get("/status")
    def status_of() -> dict[str, Any]:
        running = retrainer.running
        return {
            "running": asdict(running) if running else None,
            "runs": [asdict(run) for run in reversed(retrainer.runs)],
            "schedule_hours": schedule_hours,
            "alerts": sorted(wanted),
        }

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def schedule(retrainer: Retrainer, hours: float) -> None:
    while True:
        await asyncio.sleep(hours * 3600)
        if retrainer.start("schedule") is None:
            logger.info("scheduled retraining skipped: one is already running")


# ---- command line -------------------------------------------------------------------------------------
def retrain_command(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    command = [
        sys.executable, "-m", "training", "retrain", "--database-url", args.database_url,
        "--model-dir", str(args.model_dir), "--if-due", str(args.cool_down_hours), "--quiet",
    ]  # fmt: skip
    if args.promote_if_better:
        command.append("--promote-if-better")
    return [*command, *extra]


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m training.retrainer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Arguments after -- go to python -m training retrain (for example -- --models lightgbm --trials 20).",
    )
    parser.add_argument("--model-dir", type=Path, default=Path(os.environ.get("CHURN_MODEL_DIR", "models")))
    parser.add_argument("--database-url", default=os.environ.get("CHURN_DATABASE_URL", "sqlite:///predictions.sqlite3"))
    parser.add_argument("--schedule-hours", type=float, default=24.0, help="0: alerts only (default 24)")
    parser.add_argument("--cool-down-hours", type=float, default=6.0, help="least time between retrainings")
    parser.add_argument("--alerts", default=",".join(DEFAULT_ALERTS), help="alert names that start a retraining")
    parser.add_argument("--promote-if-better", action="store_true")
    parser.add_argument("--reload-url", help="the service's POST /admin/reload, called after a run that published")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9095)
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.cool_down_hours <= 0 or args.schedule_hours < 0:
        parser.error("--cool-down-hours must be above 0 and --schedule-hours at least 0")
    return args, extra


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args, extra = parse_args(argv)
    retrainer = Retrainer(retrain_command(args, extra), args.reload_url, os.environ.get("CHURN_API_KEY"))
    alerts = [name.strip() for name in args.alerts.split(",") if name.strip()]
    app = create_app(retrainer, alerts, args.schedule_hours, os.environ.get("RETRAINER_TOKEN"))
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
