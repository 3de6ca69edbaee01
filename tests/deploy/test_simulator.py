"""The traffic simulator: its settings, the customers it sends, and a short run against the real service."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.simulator import LABEL_COLUMN, Simulator, SimulatorConfig, customer_stream, main, spoil

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "simulator-test-key"


# ---- settings and customers -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rate": 0}, "rate must be positive"),
        ({"drift": 1.5}, "drift must lie in"),
        ({"invalid": -0.1}, "invalid must lie in"),
        ({"duration": 0}, "duration must be positive"),
        ({"requests": 0}, "requests must be at least 1"),
        ({"outcomes_after": 5}, "needs --api-key"),
        ({"outcomes_after": -1, "api_key": "k"}, "must not be negative"),
        ({"concurrency": 0}, "concurrency must be at least 1"),
    ],
)
def test_config_rejects_settings_that_cannot_work(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulatorConfig(**changes)


def test_records_per_call_follow_the_rate() -> None:
    assert SimulatorConfig(rate=20).records_per_call == 1
    assert SimulatorConfig(rate=50).records_per_call == 1
    assert SimulatorConfig(rate=51).records_per_call == 2
    assert SimulatorConfig(rate=1000).records_per_call == 20
    assert SimulatorConfig(rate=1000, batch_size=7).records_per_call == 7


def test_cli_refuses_outcomes_without_an_api_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--outcomes-after", "30"])
    assert exit_info.value.code == 2
    assert "needs --api-key" in capsys.readouterr().err


def test_customers_are_json_records_without_the_label() -> None:
    pairs = list(itertools.islice(customer_stream(seed=3, drift=0.0, chunk=50), 120))  # crosses a chunk boundary
    records = [record for record, _ in pairs]
    assert all(LABEL_COLUMN not in record for record in records)
    assert {"customerID", "Contract", "tenure", "MonthlyCharges"} <= set(records[0])
    json.dumps(records)  # plain Python values only
    assert len({record["customerID"] for record in records}) == len(records)
    labels = [churned for _, churned in pairs]
    assert 0 < sum(labels) < len(labels)


def test_customer_stream_is_seeded() -> None:
    first = list(itertools.islice(customer_stream(seed=4, drift=0.0, chunk=40), 40))
    again = list(itertools.islice(customer_stream(seed=4, drift=0.0, chunk=40), 40))
    other = list(itertools.islice(customer_stream(seed=5, drift=0.0, chunk=40), 40))
    assert first == again
    assert first != other


def test_drift_moves_customers_toward_month_to_month_fibre_and_higher_charges() -> None:
    def profile(drift: float) -> tuple[float, float, float]:
        records = [record for record, _ in itertools.islice(customer_stream(seed=6, drift=drift), 2000)]
        monthly = sum(record["Contract"] == "Month-to-month" for record in records) / len(records)
        fibre = sum(record["InternetService"] == "Fiber optic" for record in records) / len(records)
        charges = sum(float(record["MonthlyCharges"]) for record in records) / len(records)
        return monthly, fibre, charges

    base, drifted = profile(0.0), profile(0.8)
    assert drifted[0] > base[0] + 0.15
    assert drifted[1] > base[1] + 0.1
    assert drifted[2] > base[2] + 5


def test_spoil_breaks_one_numeric_field_of_a_copy() -> None:
    record, _ = next(customer_stream(seed=1, drift=0.0))
    spoilt = spoil(record)
    assert spoilt["tenure"] == "not a number"
    assert record["tenure"] != "not a number"
    assert {key: value for key, value in spoilt.items() if key != "tenure"} == {
        key: value for key, value in record.items() if key != "tenure"
    }


# ---- against the service ----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, bundle_builder) -> Iterator[str]:
    """``python -m app`` on loopback, serving a bundle fitted on the simulator's own customer layout."""
    from training.synthetic import generate_customers

    tmp = tmp_path_factory.mktemp("simulator")
    bundle_builder(tmp / "models", "logistic_regression", frame=generate_customers(800, seed=2))
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CHURN_", "PROMETHEUS_"))}
    env.update(
        CHURN_MODEL_DIR=str(tmp / "models"),
        CHURN_HOST="127.0.0.1",
        CHURN_PORT=str(port),
        CHURN_API_KEY=API_KEY,
        CHURN_DATABASE_URL=f"sqlite:///{tmp / 'predictions.sqlite3'}",
        CHURN_METRICS_MULTIPROC_DIR=str(tmp / "metrics"),
        CHURN_PREDICTION_LOG_FLUSH_SECONDS="0.2",
    )
    log = tmp / "service.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "app"], cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def _predictions_counted(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(value) for value in re.findall(r"^churn_predictions_total\{[^}]*\} (\S+)$", text, re.MULTILINE))


@pytest.mark.slow
def test_single_predictions_invalid_customers_and_outcomes(service: str) -> None:
    before = _predictions_counted(service)
    config = SimulatorConfig(
        url=service, rate=40, requests=40, invalid=0.25, outcomes_after=0.2, api_key=API_KEY, seed=8
    )
    summary = asyncio.run(Simulator(config).run())
    assert summary.calls == 40  # one customer per /predict call at 40/s
    assert summary.transport_errors == 0
    assert summary.calls_by_status["200"] + summary.calls_by_status["422"] == summary.calls
    assert summary.calls_by_status["422"] == summary.customers_rejected > 0
    assert summary.customers_scored + summary.customers_rejected == summary.customers_sent == 40
    assert sum(summary.risk_bands.values()) == summary.customers_scored
    assert summary.outcomes_posted == summary.outcomes_matched == summary.customers_scored
    assert summary.outcomes_pending == 0 and summary.outcomes_failed == 0
    assert _predictions_counted(service) - before == summary.customers_scored


@pytest.mark.slow
def test_batches_at_a_bounded_duration_from_the_command_line(service: str) -> None:
    before = _predictions_counted(service)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "deploy.simulator", "--url", service, "--rate", "200", "--duration", "2",
         "--drift", "0.5", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert time.monotonic() - started < 30
    assert summary["calls_by_status"] == {"200": summary["calls"]}
    assert summary["customers_sent"] == summary["calls"] * 4  # 200/s in batches of 4 at 50 calls/s
    assert 300 <= summary["customers_sent"] <= 420
    assert summary["customers_scored"] == summary["customers_sent"]
    assert summary["drift"] == 0.5
    assert _predictions_counted(service) - before == summary["customers_scored"]


@pytest.mark.slow
def test_unreachable_service_counts_transport_errors_and_fails() -> None:
    port = _free_port()  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "deploy.simulator", "--url", f"http://127.0.0.1:{port}", "--requests", "3",
         "--timeout", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "transport errors: 3" in result.stdout
