"""The challenger beside the champion: canary answers, shadow scoring off the caller's path, refusal."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from app.serving.challenger import Challenger, Routing, canary_position
from bundle.manifest import CHALLENGER
from tests.conftest import API_KEY, build_bundle, customer_record, synthetic_customers

HEADERS = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A model directory with a champion (current) and a challenger trained on other rows."""
    models_dir = tmp_path_factory.mktemp("challenger") / "models"
    champion = build_bundle(models_dir, "logistic_regression", seed=0).name
    challenger = build_bundle(models_dir, "logistic_regression", synthetic_customers(seed=7), make_current=False).name
    (models_dir / CHALLENGER).write_text(challenger)
    return models_dir, champion, challenger


def records(count: int) -> list[dict[str, Any]]:
    frame = synthetic_customers(n_rows=count, seed=3)
    return [{**customer_record(frame, row), "customer_id": f"C-{row:05d}"} for row in range(count)]


def test_canary_positions_are_stable_and_spread_evenly() -> None:
    ids = [f"customer-{number}" for number in range(100_000)]
    share = sum(canary_position(customer) < 0.2 for customer in ids) / len(ids)
    assert abs(share - 0.2) < 0.01
    # Another interpreter (another hash seed) places the same ids in the same places.
    script = "from app.serving.challenger import canary_position; print(canary_position('customer-42'))"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert float(other.stdout) == canary_position("customer-42")


def test_routing_refuses_unknown_modes_and_shares() -> None:
    with pytest.raises(ValueError, match="mode"):
        Routing("mirror", 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="share"):
        Routing("canary", 1.5)


def test_canary_answers_a_stable_share_of_customers(serve: Any, two_models: tuple[Path, str, str]) -> None:
    models_dir, champion, challenger = two_models
    sample = records(60)
    answered = {}
    for _ in range(2):  # a second service (a restart, another worker) makes the same choices
        client = serve(models_dir, challenger_mode="canary", challenger_share=0.5)
        assert client.get("/ready").json()["challenger"] == {
            "mode": "canary",
            "share": 0.5,
            "version": challenger,
            "error": None,
        }
        for record in sample:
            version = client.post("/predict", json=record).json()["model_version"]
            assert answered.setdefault(record["customer_id"], version) == version
    for record in sample:
        expected = challenger if canary_position(record["customer_id"]) < 0.5 else champion
        assert answered[record["customer_id"]] == expected
    assert set(answered.values()) == {champion, challenger}
    anonymous = {key: value for key, value in sample[0].items() if key != "customer_id"}
    assert client.post("/predict", json=anonymous).json()["model_version"] == champion


def test_a_canary_batch_keeps_the_order_and_each_records_model(serve: Any, two_models: tuple[Path, str, str]) -> None:
    models_dir, champion, challenger = two_models
    client = serve(models_dir, challenger_mode="canary", challenger_share=0.5)
    batch = records(20)
    batch[5] = {**batch[5], "tenure": "not a number"}
    body = client.post("/predict/batch", json=batch).json()

    assert body["count"] == 20 and body["failed"] == 1
    for position, (record, result) in enumerate(zip(batch, body["results"], strict=True)):
        if position == 5:
            assert result["index"] == 5 and result["customer_id"] == record["customer_id"]
            assert result["errors"][0]["loc"][:2] == ["body", 5]
            continue
        assert result["customer_id"] == record["customer_id"]
        expected = challenger if canary_position(record["customer_id"]) < 0.5 else champion
        assert result["model_version"] == expected


def test_shadow_logs_the_challengers_answers_under_the_champions_ids(
    serve: Any, two_models: tuple[Path, str, str], tmp_path: Path
) -> None:
    models_dir, champion, challenger = two_models
    database = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    client = serve(models_dir, monitoring_enabled=True, database_url=database, challenger_mode="shadow")
    answers = [client.post("/predict", json=record).json() for record in records(12)]
    batch = client.post("/predict/batch", json=records(8)).json()["results"]
    assert {answer["model_version"] for answer in [*answers, *batch]} == {champion}
    client.app.state.shadow.stop()  # scores what is queued and writes it

    ids = {answer["prediction_id"] for answer in [*answers, *batch]}
    with create_engine(database).connect() as connection:
        rows = connection.execute(text("SELECT prediction_id, model_version FROM shadow_log")).all()
    assert {row[0] for row in rows} == ids
    assert {row[1] for row in rows} == {challenger}
    metrics = client.get("/metrics").text
    assert f'churn_role_predictions_total{{model_version="{challenger}",role="challenger"}} 20.0' in metrics
    assert f'churn_challenger_info{{mode="shadow",version="{challenger}"}} 1.0' in metrics


class BlockedPredictor:
    """A challenger that waits until released, then fails: the caller must never notice either."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.release = threading.Event()
        self.calls = 0

    def predict_records(self, records: list[Any], explain: bool = True) -> Any:
        self.calls += 1
        self.release.wait(timeout=30)
        raise RuntimeError("the challenger broke")


def test_a_stuck_or_failing_shadow_never_delays_or_fails_a_request(
    serve: Any, two_models: tuple[Path, str, str], tmp_path: Path
) -> None:
    models_dir, champion, _ = two_models
    database = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    client = serve(
        models_dir, monitoring_enabled=True, database_url=database, challenger_mode="shadow", shadow_queue_size=3
    )
    stuck = BlockedPredictor("stuck-challenger")
    client.app.state.challenger = Challenger(stuck, Routing("shadow", 1.0))  # type: ignore[arg-type]

    responses = [client.post("/predict", json=record) for record in records(10)]  # all while it is stuck

    assert [response.status_code for response in responses] == [200] * 10
    assert {response.json()["model_version"] for response in responses} == {champion}
    stuck.release.set()
    client.app.state.shadow.stop()
    errors = challenger_errors(client.get("/metrics").text, "stuck-challenger")
    # One call in the stuck challenger and three queued behind it; the rest were skipped, never waited for.
    assert 1 <= stuck.calls <= 4
    assert errors == {"failed": stuck.calls, "skipped": 10 - stuck.calls}


def challenger_errors(exposition: str, version: str) -> dict[str, float]:
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(exposition)
        if family.name == "churn_challenger_errors"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["model_version"] == version and sample.value
    }


def test_a_broken_challenger_is_refused_and_the_champion_serves(serve: Any, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    champion = build_bundle(models_dir, "logistic_regression").name
    (models_dir / CHALLENGER).write_text("20990101T000000Z-absent")

    client = serve(models_dir, challenger_mode="canary", challenger_share=1.0)

    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["model_version"] == champion
    assert ready["challenger"]["version"] is None
    assert "20990101T000000Z-absent" in ready["challenger"]["error"]
    assert client.post("/predict", json=records(1)[0]).json()["model_version"] == champion


def test_the_admin_endpoint_switches_the_routing(serve: Any, two_models: tuple[Path, str, str]) -> None:
    models_dir, champion, challenger = two_models
    client = serve(models_dir)
    record = records(1)[0]
    assert client.post("/predict", json=record).json()["model_version"] == champion

    assert client.post("/admin/challenger", json={"mode": "canary", "share": 1.0}).status_code == 401
    assert client.post("/admin/challenger", json={"mode": "canary", "share": 2}, headers=HEADERS).status_code == 422
    assert client.post("/admin/challenger", json={"mode": "mirror"}, headers=HEADERS).status_code == 422

    switched = client.post("/admin/challenger", json={"mode": "canary", "share": 1.0}, headers=HEADERS)
    assert switched.status_code == 200
    assert switched.json()["challenger"] == {"mode": "canary", "share": 1.0, "version": challenger, "error": None}
    assert client.post("/predict", json=record).json()["model_version"] == challenger
    assert client.get("/metadata").json()["challenger"]["version"] == challenger

    off = client.post("/admin/challenger", json={"mode": "off"}, headers=HEADERS)
    assert off.json()["challenger"]["version"] is None
    assert client.post("/predict", json=record).json()["model_version"] == champion


def test_other_workers_are_told_the_challenger_and_its_routing(tmp_path: Path) -> None:
    from app.serving.reload import WorkerSync

    announced = WorkerSync(tmp_path).announce("champion-v1", "challenger-v2", Routing("canary", 0.25))

    read = WorkerSync(tmp_path, pid=12345).read_announcement()
    assert read == announced
    assert (read.challenger, read.routing) == ("challenger-v2", Routing("canary", 0.25))


def test_the_comparison_waits_for_labels_then_names_the_better_model(serve: Any, tmp_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    models_dir = tmp_path / "models"
    degraded = synthetic_customers(seed=11)
    degraded["Churn"] = degraded["Churn"].sample(frac=1.0, random_state=0).to_numpy()  # labels unrelated to customers
    champion = build_bundle(models_dir, "logistic_regression", degraded).name
    challenger = build_bundle(models_dir, "logistic_regression", synthetic_customers(seed=12), make_current=False).name
    (models_dir / CHALLENGER).write_text(challenger)
    database = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    client = serve(models_dir, monitoring_enabled=True, database_url=database, challenger_mode="shadow")

    frame = synthetic_customers(n_rows=600, seed=13)
    customers = [{**customer_record(frame, row), "customer_id": f"K-{row:04d}"} for row in range(len(frame))]
    answers = []
    for start in range(0, len(customers), 100):
        answers += client.post("/predict/batch", json=customers[start : start + 100]).json()["results"]
    client.app.state.shadow.stop()

    response = client.get("/monitoring/compare", headers=HEADERS)
    assert response.status_code == 200, response.text
    early = response.json()["shadow"]
    assert [(pair["champion"], pair["challenger"], pair["rows"]) for pair in early] == [(champion, challenger, 600)]
    assert early[0]["verdict"] == "not enough labels yet" and early[0]["labels_needed"] > 0

    churned = (frame["Churn"] == "Yes").tolist()
    outcomes = [{"prediction_id": a["prediction_id"], "churned": c} for a, c in zip(answers, churned, strict=True)]
    assert client.post("/feedback", json={"outcomes": outcomes}, headers=HEADERS).status_code == 200

    compared = client.get("/monitoring/compare", params={"saved_value": 300, "offer_cost": 20}, headers=HEADERS).json()
    (pair,) = compared["shadow"]
    assert pair["labelled"] == 600 and pair["verdict"] == "better"
    champion_auc = roc_auc_score(churned, [answer["churn_probability"] for answer in answers])
    assert pair["metrics"]["roc_auc"]["champion"] == pytest.approx(champion_auc)
    assert pair["metrics"]["roc_auc"]["difference"] > 0 and pair["metrics"]["expected_profit"]["challenger"] is not None
    (answered,) = compared["answered"]
    assert answered["model_version"] == champion and answered["predictions"] == 600
    assert answered["realized"]["roc_auc"] == pytest.approx(champion_auc)
    report = client.get("/monitoring/report", headers=HEADERS).json()
    assert report["challenger"]["shadow"][0]["verdict"] == "better"
    assert client.get("/monitoring/compare", params={"saved_value": 300}, headers=HEADERS).status_code == 422
    assert client.get("/monitoring/compare").status_code == 401


def test_a_worker_follows_the_challenger_and_routing_another_worker_announced(
    serve: Any, two_models: tuple[Path, str, str], tmp_path: Path
) -> None:
    import os
    import time

    from app.serving.reload import WorkerSync

    models_dir, champion, challenger = two_models
    reload_dir = tmp_path / "reload"
    client = serve(models_dir, reload_dir=reload_dir, reload_poll_seconds=0.05)
    record = records(1)[0]
    assert client.post("/predict", json=record).json()["model_version"] == champion

    another_worker = WorkerSync(reload_dir, pid=os.getppid())
    for routing, expected in ((Routing("canary", 1.0), challenger), (Routing("off", 1.0), champion)):
        with another_worker.service_wide_lock():
            another_worker.announce(champion, challenger, routing)
        deadline = time.monotonic() + 10
        while client.get("/ready").json()["challenger"]["mode"] != routing.mode:
            assert time.monotonic() < deadline, f"the worker never followed {routing}"
            time.sleep(0.05)
        assert client.post("/predict", json=record).json()["model_version"] == expected
