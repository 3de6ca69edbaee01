"""deploy/nginx/nginx.conf: the limits that bound slow and idle clients, in step with the service's settings."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy/nginx/nginx.conf"
UNITS = {"": 1, "s": 1, "m": 60, "k": 1024}


def directive(name: str, text: str | None = None) -> str:
    """The value of the one ``name ...;`` directive in ``text`` (default: the config outside the upstream block)."""
    if text is None:
        text = re.sub(r"upstream churn_api \{.*?\}", "", re.sub(r"#[^\n]*", "", CONFIG.read_text()), flags=re.DOTALL)
    values = re.findall(rf"^\s*{name}\s+([^;]+);", text, re.MULTILINE)
    assert len(values) == 1, f"{name}: {values}"
    return values[0].strip()


def seconds(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([sm]?)", value).groups()
    return int(number) * UNITS[unit]


def upstream_block() -> str:
    return re.search(r"upstream churn_api \{(.*?)\}", re.sub(r"#[^\n]*", "", CONFIG.read_text()), re.DOTALL).group(1)


def test_slow_and_idle_clients_are_bounded():
    assert 0 < seconds(directive("client_header_timeout")) <= 30
    assert 0 < seconds(directive("client_body_timeout")) <= 30
    assert 0 < seconds(directive("send_timeout")) <= 30
    assert 0 < seconds(directive("keepalive_timeout")) <= 75
    assert directive("limit_conn").startswith("per_client ")
    assert int(directive("worker_connections")) >= 1024
    assert directive("proxy_request_buffering") == "on"


def test_limits_are_in_step_with_the_service_settings():
    settings = Settings()
    body_limit = directive("client_max_body_size")
    assert int(body_limit[:-1]) * 1024 * 1024 == settings.max_body_bytes and body_limit.endswith("m")
    # nginx must drop a pooled connection before uvicorn does, or it may reuse one being closed.
    assert seconds(directive("keepalive_timeout", upstream_block())) < settings.timeout_keep_alive
    # POST /admin/reload waits for every worker after loading.
    assert seconds(directive("proxy_read_timeout")) > settings.reload_wait_seconds


def test_nginx_accepts_the_config(tmp_path: Path):
    nginx = shutil.which("nginx")
    if nginx is None:
        pytest.skip("nginx is not installed")
    # The upstream name resolves on the compose network only, and "resolve" needs nginx 1.27.3.
    config = tmp_path / "nginx.conf"
    config.write_text(CONFIG.read_text().replace("server churn-api:8000 resolve;", "server 127.0.0.1:8000;"))
    result = subprocess.run([nginx, "-t", "-c", str(config)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
