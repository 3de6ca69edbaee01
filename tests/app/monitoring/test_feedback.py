"""POST /feedback: joining outcomes to logged predictions, idempotency, validation, realized metrics, report."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from app.monitoring import Monitor
from tests.app.monitoring.monitoring_helpers import (
    API_KEY,
    build_app,
    make_event,
    make_manifest,
    make_settings,
    metric_value,
)

AUTH = {"X-API-Key": API_KEY}


def post(client: TestClient, body, headers=AUTH):
    return client.post("/feedback", json=body, headers=headers)


def feedback_counts(monitor: Monitor) -> dict[str, float | None]:
    text = monitor.exposition().decode()
    return {
        s: metric_value(text, "churn_feedback_outcomes_total", status=s) for s in ("matched", "unknown", "duplicate")
    }


@pytest.fixture
def slow_log_client(tmp_path):
    """A service whose log writer waits an hour: feedback must flush queued predictions itself.

    Retention covers ten years: some tests log predictions on fixed past dates, and the log's
    thread, woken when enough records wait, would otherwise delete them as expired.
    """
    settings = make_settings(tmp_path, prediction_log_flush_seconds=3600, prediction_log_retention_days=3650)
    monitor = Monitor(settings)
    with TestClient(build_app(settings, monitor, make_manifest())) as client:
        yield client, monitor


def test_outcomes_join_by_prediction_id_and_by_latest_prediction_of_a_customer(slow_log_client):
    client, monitor = slow_log_client
    manifest = make_manifest()
    now = time.time()
    older = make_event(manifest, 1, seed=1, timestamp=now - 100, customer_ids=["7590-VHVEG"])
    newer = make_event(manifest, 1, seed=2, timestamp=now - 10, customer_ids=["7590-VHVEG"])
    other = make_event(manifest, 2, seed=3, timestamp=now - 5, customer_ids=["5575-GNVDE", None])
    for event in (older, newer, other):
        monitor.record(event)
    response = post(
        client,
        {
            "outcomes": [
                {"customer_id": "7590-VHVEG", "churned": True},
                {"prediction_id": other.prediction_ids[1], "churned": False},
                {"customer_id": "no-such-customer", "churned": True},
                {"prediction_id": "no-such-prediction", "churned": False},
            ]
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["received"] == 4
    assert body["matched"] == [
        {"prediction_id": newer.prediction_ids[0], "customer_id": "7590-VHVEG", "churned": True},
        {"prediction_id": other.prediction_ids[1], "customer_id": None, "churned": False},
    ]
    assert body["unknown"] == [
        {"prediction_id": None, "customer_id": "no-such-customer", "churned": True},
        {"prediction_id": "no-such-prediction", "customer_id": None, "churned": False},
    ]
    assert body["duplicates"] == [] and body["updated"] == []
    assert body["performance"]["labelled_predictions"] == 2
    assert feedback_counts(monitor) == {"matched": 2, "unknown": 2, "duplicate": 0}


def test_repeated_outcomes_are_idempotent_and_changed_ones_update(slow_log_client):
    client, monitor = slow_log_client
    event = make_event(make_manifest(), 1, seed=5, customer_ids=["C-1"])
    monitor.record(event)
    pid = event.prediction_ids[0]
    assert post(client, {"prediction_id": pid, "churned": True}).json()["matched"][0]["prediction_id"] == pid
    again = post(client, {"customer_id": "C-1", "churned": True}).json()  # the same prediction, the same outcome
    assert [len(again[k]) for k in ("matched", "duplicates", "updated")] == [0, 1, 0]
    changed = post(client, {"prediction_id": pid, "churned": False}).json()
    assert [len(changed[k]) for k in ("matched", "duplicates", "updated")] == [0, 0, 1]
    assert changed["performance"]["labelled_predictions"] == 1  # still one labelled prediction
    assert changed["performance"]["actual_churn_rate"] == 0.0  # the latest outcome counts
    # Within one call: the first mention records, a repeat is a duplicate, a contradiction updates.
    second = make_event(make_manifest(), 1, seed=6)
    monitor.record(second)
    spid = second.prediction_ids[0]
    bulk = post(
        client,
        {
            "outcomes": [
                {"prediction_id": spid, "churned": True},
                {"prediction_id": spid, "churned": True},
                {"prediction_id": spid, "churned": False},
            ]
        },
    ).json()
    assert [len(bulk[k]) for k in ("matched", "duplicates", "updated")] == [1, 1, 1]
    assert bulk["performance"]["labelled_predictions"] == 2
    assert feedback_counts(monitor) == {"matched": 4, "unknown": 0, "duplicate": 2}


def test_feedback_requires_the_api_key(client: TestClient, tmp_path):
    body = {"customer_id": "C-1", "churned": True}
    assert client.post("/feedback", json=body).status_code == 401
    assert post(client, body, headers={"X-API-Key": "wrong"}).status_code == 401
    # A bad body without a key is still refused for the key first: nothing about the data leaks.
    assert client.post("/feedback", json={"nonsense": 1}).status_code == 401
    settings = make_settings(tmp_path / "nokey", api_key=None)
    with TestClient(build_app(settings, Monitor(settings), make_manifest())) as keyless:
        assert post(keyless, body).status_code == 403


@pytest.mark.parametrize(
    ("body", "location", "message"),
    [
        ({"customer_id": "C-1"}, ["body", "single", "churned"], "Field required"),
        ({"customer_id": "C-1", "churned": "perhaps"}, ["body", "single", "churned"], "valid boolean"),
        ({"churned": True}, ["body", "single"], "exactly one of prediction_id or customer_id"),
        ({"customer_id": "C", "prediction_id": "p", "churned": True}, ["body", "single"], "exactly one"),
        ({"customer_id": "", "churned": True}, ["body", "single", "customer_id"], "at least 1 character"),
        ({"prediction_id": "a\u0000b", "churned": True}, ["body", "single", "prediction_id"], "match pattern"),
        ({"customer_id": "x" * 257, "churned": True}, ["body", "single", "customer_id"], "at most 256"),
        ({"customer_id": "C-1", "churned": True, "extra": 1}, ["body", "single", "extra"], "Extra inputs"),
        ({"outcomes": []}, ["body", "batch", "outcomes"], "at least 1 item"),
        ({"outcomes": "all of them"}, ["body", "batch", "outcomes"], "valid list"),
        ({"outcomes": [{"customer_id": "C-1", "churned": True}, {"customer_id": "C-2"}]},
         ["body", "batch", "outcomes", 1, "churned"], "Field required"),
        ([1, 2], ["body", "single"], "valid dictionary"),
    ],
)  # fmt: skip
def test_bad_feedback_gets_422_with_the_field(client: TestClient, body, location, message):
    response = post(client, body)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(error["loc"] == location and message in error["msg"] for error in errors), errors


def test_malformed_json_gets_422(client: TestClient):
    response = client.post("/feedback", content=b"{not json", headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 422


def test_realized_metrics_equal_sklearn_on_the_joined_data(slow_log_client):
    client, monitor = slow_log_client
    manifest = make_manifest()
    rng = np.random.default_rng(42)
    scores = rng.random(400)
    event = make_event(manifest, 400, seed=9, scores=scores, customer_ids=[f"K-{i}" for i in range(400)])
    monitor.record(event)
    labelled = rng.choice(400, size=300, replace=False)  # a quarter never gets an outcome
    actual = rng.random(300) < 0.2 + 0.6 * scores[labelled]  # outcomes that follow the score, noisily
    # Half the outcomes name the customer, half the prediction.
    outcomes = [
        {"customer_id": f"K-{i}", "churned": bool(a)}
        if j % 2
        else {"prediction_id": event.prediction_ids[i], "churned": bool(a)}
        for j, (i, a) in enumerate(zip(labelled, actual, strict=True))
    ]
    body = post(client, {"outcomes": outcomes}).json()
    assert len(body["matched"]) == 300
    decisions = event.decisions[labelled]
    expected = {
        "roc_auc": roc_auc_score(actual, scores[labelled]),
        "precision": precision_score(actual, decisions, zero_division=0),
        "recall": recall_score(actual, decisions, zero_division=0),
        "f1": f1_score(actual, decisions, zero_division=0),
    }
    for name, value in expected.items():
        assert body["performance"][name] == pytest.approx(value, abs=1e-12), name
    text = monitor.exposition().decode()
    assert metric_value(text, "churn_realized_roc_auc") == pytest.approx(expected["roc_auc"])
    assert metric_value(text, "churn_realized_precision") == pytest.approx(expected["precision"])
    assert metric_value(text, "churn_realized_recall") == pytest.approx(expected["recall"])
    assert metric_value(text, "churn_realized_f1") == pytest.approx(expected["f1"])
    assert metric_value(text, "churn_realized_labelled_predictions") == 300


def test_precision_is_undefined_when_nothing_was_flagged(slow_log_client):
    client, monitor = slow_log_client
    manifest = make_manifest()
    event = make_event(manifest, 2, seed=3, scores=np.array([0.01, 0.02]), customer_ids=["A-1", "A-2"])
    assert not event.decisions.any()
    monitor.record(event)

    body = post(client, {"outcomes": [{"customer_id": "A-1", "churned": True}]}).json()

    performance = body["performance"]
    assert performance["precision"] is None  # not 0: nothing flagged, nothing to judge
    assert performance["recall"] == performance["f1"] == 0.0  # a churner was missed: that is measured
    text = monitor.exposition().decode()
    assert np.isnan(metric_value(text, "churn_realized_precision"))


def test_an_integer_customer_id_joins_like_its_text(slow_log_client):
    client, monitor = slow_log_client
    monitor.record(make_event(make_manifest(), 1, seed=4, customer_ids=["15299427"]))  # as /predict logs 15299427

    body = post(client, {"customer_id": 15299427, "churned": False}).json()

    assert len(body["matched"]) == 1
    assert post(client, {"customer_id": True, "churned": False}).status_code == 422  # a boolean is no id


def test_realized_metrics_only_cover_the_performance_window(tmp_path):
    settings = make_settings(tmp_path, performance_window_days=7)
    monitor = Monitor(settings)
    manifest = make_manifest()
    with TestClient(build_app(settings, monitor, manifest)) as client:
        old = make_event(manifest, 1, seed=1, timestamp=time.time() - 8 * 86_400)
        recent = make_event(manifest, 1, seed=2)
        monitor.record(old)
        monitor.record(recent)
        body = post(
            client,
            {
                "outcomes": [
                    {"prediction_id": old.prediction_ids[0], "churned": True},
                    {"prediction_id": recent.prediction_ids[0], "churned": False},
                ]
            },
        ).json()
    assert len(body["matched"]) == 2
    assert body["performance"]["labelled_predictions"] == 1


def test_unavailable_database_answers_503(tmp_path):
    settings = make_settings(tmp_path, database_url=f"sqlite:///{tmp_path}/no/such/dir/log.sqlite3")
    monitor = Monitor(settings)
    with TestClient(build_app(settings, monitor, make_manifest())) as client:
        assert client.post("/predict").status_code == 200  # predictions are unaffected
        assert post(client, {"customer_id": "C-0-0", "churned": True}).status_code == 503
        assert client.get("/monitoring/report", headers=AUTH).status_code == 503


# ---- daily report -----------------------------------------------------------------------------------------
def test_daily_report_shape_and_figures(slow_log_client):
    client, monitor = slow_log_client
    manifest = make_manifest()
    day_start = datetime(2026, 3, 14, tzinfo=UTC).timestamp()
    events = [make_event(manifest, 1, seed=i, timestamp=day_start + 60 * i) for i in range(20)]
    events.append(make_event(manifest, 80, seed=99, timestamp=day_start + 7200))
    events.append(make_event(manifest, 5, seed=98, timestamp=day_start + 86_400 + 1))  # the next day
    for event in events:
        monitor.record(event)
    post(client, {"prediction_id": events[0].prediction_ids[0], "churned": True})
    monitor.update_drift()
    response = client.get("/monitoring/report", params={"date": "2026-03-14"}, headers=AUTH)
    assert response.status_code == 200
    report = response.json()
    day = events[:-1]
    bands = [band for event in day for band in event.risk_bands]
    assert report["date"] == "2026-03-14"
    assert report["predictions"] == 100
    assert report["volume_by_risk_band"] == {band: bands.count(band) for band in sorted(set(bands))}
    decisions = np.concatenate([event.decisions for event in day])
    assert report["predicted_churn_rate"] == pytest.approx(decisions.mean())
    latencies = np.concatenate([[sum(e.stage_seconds.values())] * len(e.prediction_ids) for e in day])
    single = np.array([sum(e.stage_seconds.values()) for e in day if len(e.prediction_ids) == 1])
    for q in (50, 95, 99):
        # Read from a log-spaced histogram: within a few per cent of the exact figure.
        assert report["latency_seconds"]["all"][f"p{q}"] == pytest.approx(np.percentile(latencies, q), rel=0.04)
        assert report["latency_seconds"]["single"][f"p{q}"] == pytest.approx(np.percentile(single, q), rel=0.04)
    assert report["latency_seconds"]["single"]["predictions"] == 20
    assert report["latency_seconds"]["batch"]["predictions"] == 80
    assert report["model_versions"] == [
        {
            "version": manifest.version,
            "predictions": 100,
            "predicted_churn": int(decisions.sum()),
            "first_seen": "2026-03-14T00:00:00+00:00",
            "last_seen": "2026-03-14T02:00:00+00:00",
        }
    ]
    assert report["realized_performance"]["predictions_of_the_day"]["labelled_predictions"] == 1
    assert set(report["drift"]) >= {"window_predictions", "features", "score", "predicted_churn_rate"}
    assert {f["feature"] for f in report["drift"]["features"]} == {"tenure", "monthly_charges", "contract", "paperless"}
    assert set(report["drift"]["features"][0]) == {"feature", "kind", "count", "psi", "js", "threshold", "drifting"}


def test_report_defaults_to_today_and_rejects_bad_dates(client: TestClient):
    assert client.post("/predict", params={"n": 3}).status_code == 200
    today = client.get("/monitoring/report", headers=AUTH).json()
    assert today["date"] == datetime.now(UTC).date().isoformat()
    assert today["predictions"] == 3
    for bad in ("2026-13-01", "yesterday", "2026-02-30", "14/03/2026"):
        response = client.get("/monitoring/report", params={"date": bad}, headers=AUTH)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["query", "date"]
