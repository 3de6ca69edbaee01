"""The retrainer service: alerts and the schedule start the retraining command, one run at a time."""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from training.retrainer import Retrainer, create_app, parse_args, retrain_command

FIRING = {"status": "firing", "alerts": [{"status": "firing", "labels": {"alertname": "ChurnFeatureDrift"}}]}


def fake_command(marker: Path, exit_code: int = 0, wait_for: Path | None = None) -> list[str]:
    """A stand-in for python -m training retrain: waits for a file if told, leaves a marker, exits."""
    script = (
        "import pathlib, sys, time\n"
        f"gate = {str(wait_for)!r} if {wait_for is not None} else None\n"
        "while gate and not pathlib.Path(gate).exists(): time.sleep(0.02)\n"
        f"pathlib.Path({str(marker)!r}).write_text('ran')\n"
        "print('published 20990101T000000Z-abcdef')\n"
        f"sys.exit({exit_code})\n"
    )
    return [sys.executable, "-c", script]


def wait_until(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def client_for() -> Iterator[Any]:
    clients: list[TestClient] = []

    def make(retrainer: Retrainer, schedule_hours: float = 0.0, token: str | None = None) -> TestClient:
        client = TestClient(
            create_app(retrainer, ["ChurnFeatureDrift", "ChurnEstimatedRocAucDrop"], schedule_hours, token)
        )
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def test_a_firing_alert_starts_one_retraining_and_status_says_how_it_ended(client_for: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    retrainer = Retrainer(fake_command(tmp_path / "ran", wait_for=gate))
    client = client_for(retrainer)

    first = client.post("/alerts", json=FIRING)
    second = client.post("/alerts", json=FIRING)  # while the first still runs

    assert first.status_code == 202 and first.json() == {"started": True, "trigger": "alert: ChurnFeatureDrift"}
    assert second.json() == {"started": False, "reason": "a retraining is already running"}
    gate.write_text("go")
    wait_until(lambda: client.get("/status").json()["running"] is None)
    (run,) = client.get("/status").json()["runs"]
    assert (run["outcome"], run["exit_code"], run["trigger"]) == ("published", 0, "alert: ChurnFeatureDrift")
    assert run["output_tail"] == ["published 20990101T000000Z-abcdef"]
    assert (tmp_path / "ran").exists()


@pytest.mark.parametrize(
    "payload",
    [
        {"status": "resolved", "alerts": [{"status": "resolved", "labels": {"alertname": "ChurnFeatureDrift"}}]},
        {"status": "firing", "alerts": [{"status": "firing", "labels": {"alertname": "ChurnHighP99Latency"}}]},
    ],
)
def test_resolved_or_unrelated_alerts_start_nothing(client_for: Any, tmp_path: Path, payload: dict) -> None:
    client = client_for(Retrainer(fake_command(tmp_path / "ran")))
    answer = client.post("/alerts", json=payload)
    assert answer.json() == {"started": False, "reason": "no firing alert that retrains"}
    assert client.get("/status").json()["runs"] == []


def test_bad_payloads_and_missing_tokens_are_refused(client_for: Any, tmp_path: Path) -> None:
    client = client_for(Retrainer(fake_command(tmp_path / "ran")), token="s3cret-token")
    assert client.post("/alerts", json=FIRING).status_code == 401
    headers = {"Authorization": "Bearer s3cret-token"}
    assert client.post("/alerts", json={"alerts": "nope"}, headers=headers).status_code == 422
    assert (
        client.post("/alerts", content=b"{", headers={**headers, "Content-Type": "application/json"}).status_code == 422
    )
    assert client.post("/alerts", json=FIRING, headers=headers).json()["started"] is True


def test_a_run_the_command_skips_is_recorded_as_skipped(client_for: Any, tmp_path: Path) -> None:
    retrainer = Retrainer(fake_command(tmp_path / "ran", exit_code=3))
    client = client_for(retrainer)
    client.post("/retrain")
    wait_until(lambda: client.get("/status").json()["runs"][0]["outcome"] != "running")
    assert client.get("/status").json()["runs"][0]["outcome"] == "skipped"


def test_the_schedule_starts_a_retraining(client_for: Any, tmp_path: Path) -> None:
    client = client_for(Retrainer(fake_command(tmp_path / "ran")), schedule_hours=0.5 / 3600)
    wait_until(lambda: (tmp_path / "ran").exists())
    assert client.get("/status").json()["runs"][-1]["trigger"] == "schedule"


def test_a_published_run_asks_the_service_to_reload(tmp_path: Path) -> None:
    calls: list[tuple[str, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            calls.append((self.path, self.headers.get("X-API-Key")))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"status": "reloaded"}')

        def log_message(self, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/admin/reload"
        retrainer = Retrainer(fake_command(tmp_path / "ran"), reload_url=url, api_key="the-key")
        run = retrainer.start("manual")
        wait_until(lambda: run.finished_at is not None)
    finally:
        server.shutdown()
    assert calls == [("/admin/reload", "the-key")]
    assert run.reload == '200: {"status": "reloaded"}'


def test_the_command_line_builds_the_retrain_command(tmp_path: Path) -> None:
    args, extra = parse_args(
        ["--model-dir", str(tmp_path), "--database-url", "sqlite:///x.db", "--promote-if-better", "--", "--trials", "5"]
    )
    command = retrain_command(args, extra)
    assert command[1:4] == ["-m", "training", "retrain"]
    assert command[command.index("--if-due") + 1] == "6.0"
    assert command[-3:] == ["--promote-if-better", "--trials", "5"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(shutil.which("prometheus-alertmanager") is None, reason="needs Alertmanager (Debian's package)")
def test_a_real_alertmanager_routes_a_drift_alert_to_the_retrainer(tmp_path: Path) -> None:
    import uvicorn

    retrainer_port, alertmanager_port, cluster_port = _free_port(), _free_port(), _free_port()
    retrainer = Retrainer(fake_command(tmp_path / "ran"))
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(retrainer, ["ChurnFeatureDrift"], 0.0, None), port=retrainer_port, log_level="warning"
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        json.dumps(
            {
                "route": {"receiver": "retrainer", "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
                "receivers": [
                    {"name": "retrainer", "webhook_configs": [{"url": f"http://127.0.0.1:{retrainer_port}/alerts"}]}
                ],
            }
        )
    )
    alertmanager = subprocess.Popen(
        [
            "prometheus-alertmanager", f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{alertmanager_port}", f"--cluster.listen-address=127.0.0.1:{cluster_port}",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        import httpx

        alert = [{"labels": {"alertname": "ChurnFeatureDrift", "feature": "tenure", "job": "churn-api"}}]
        api = f"http://127.0.0.1:{alertmanager_port}/api/v2/alerts"
        wait_until(lambda: _posted(httpx, api, alert), timeout=20)
        wait_until(lambda: (tmp_path / "ran").exists(), timeout=30)
    finally:
        alertmanager.terminate()
        alertmanager.wait(timeout=10)
        server.should_exit = True
    assert retrainer.runs[0].trigger == "alert: ChurnFeatureDrift"


def _posted(httpx: Any, url: str, alerts: list[dict[str, Any]]) -> bool:
    try:
        return httpx.post(url, json=alerts, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_every_replica_behind_a_service_name_is_asked_to_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket as socket_module

    calls: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            calls.append(self.server.server_address[0])
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    first = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = first.server_address[1]
    second = http.server.ThreadingHTTPServer(("127.0.0.2", port), Handler)  # another replica, same port
    for server in (first, second):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    real = socket_module.getaddrinfo

    def resolve(host: str, *args: Any, **kwargs: Any) -> Any:  # Docker's DNS: one address per replica
        if host == "churn-api":
            return [
                (socket_module.AF_INET, socket_module.SOCK_STREAM, 6, "", (ip, port))
                for ip in ("127.0.0.2", "127.0.0.1")
            ]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket_module, "getaddrinfo", resolve)
    try:
        retrainer = Retrainer(fake_command(tmp_path / "ran"), reload_url=f"http://churn-api:{port}/admin/reload")
        run = retrainer.start("manual")
        wait_until(lambda: run.finished_at is not None)
    finally:
        first.shutdown()
        second.shutdown()
    assert sorted(calls) == ["127.0.0.1", "127.0.0.2"]
    assert run.reload == "127.0.0.1: 200: ; 127.0.0.2: 200: "
