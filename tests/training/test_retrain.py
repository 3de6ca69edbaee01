"""Retraining from the prediction log: the table it builds, the holdout, the comparison and the promotion rule."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert

from app.monitoring.log_store import create_tables, event_rows, insert_rows, make_engine, outcomes_table
from app.serving.predictor import Predictor
from app.serving.risk import RiskPolicy
from bundle.registry import ModelRegistry
from bundle.store import current_bundle_dir
from training import retrain as retrain_module
from training.cli import main as cli_main
from training.config import TrainingConfig
from training.log_table import read_log_table
from training.pipeline import run_training
from training.retrain import RetrainConfig, run_retrain, split_holdout
from training.retrain_lock import exclusive_retrain
from training.synthetic import generate_customers

START = 1_780_000_000.0  # UNIX seconds of the first logged prediction
HOUR = 3600.0
CUTOFF = START + 10_000 * HOUR


def fast_training(**overrides) -> TrainingConfig:
    settings = {"models": ("logistic_regression",), "trials": 2, "report": False, "progress": False, "seed": 3}
    settings.update(overrides)
    return TrainingConfig(**settings)


def publish_champion(model_dir: Path, table: pd.DataFrame) -> str:
    return run_training(fast_training(data=table, model_dir=model_dir)).manifest.version


def shuffled_labels(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    out = table.copy()
    out["Churn"] = np.random.default_rng(seed).permutation(out["Churn"].to_numpy())
    return out


def log_customers(model_dir: Path, url: str, table: pd.DataFrame, *, start: float = START) -> list[str]:
    """Score ``table``'s customers with the champion as the service does and log them an hour apart
    with their outcome received an hour after the prediction; returns the prediction ids."""
    predictor = Predictor.load(model_dir, RiskPolicy({"all": 0.0}, {}), top_reasons=0)
    records = table.drop(columns=["Churn"]).to_dict("records")
    outcome = predictor.predict_records(records, explain=False)
    assert not outcome.errors
    rows = [(row[0], start + i * HOUR, *row[2:]) for i, row in enumerate(event_rows(outcome.event, latency=0.01))]
    engine = make_engine(url)
    create_tables(engine)
    with engine.begin() as connection:
        insert_rows(connection, rows)
        connection.execute(
            insert(outcomes_table),
            [
                {
                    "prediction_id": row[0],
                    "churned": churned == "Yes",
                    "received_at": row[1] + HOUR,
                    "updated_at": row[1] + HOUR,
                }
                for row, churned in zip(rows, table["Churn"], strict=True)
            ],
        )
    engine.dispose()
    return [row[0] for row in rows]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    publish_champion(directory, generate_customers(600, seed=7))
    return directory


def schema_of(model_dir: Path):
    from bundle.store import read_manifest

    return read_manifest(current_bundle_dir(model_dir)).schema


def test_log_table_keeps_each_customers_latest_outcome_known_at_the_cutoff(model_dir: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    customers = generate_customers(6, seed=11)
    log_customers(model_dir, url, customers)
    # The first customer again, later, now retained; the second customer's later prediction has its
    # outcome after the cut-off, so their earlier one stands.
    again = customers.iloc[[0, 1]].assign(Churn=["No", "Yes"])
    later_ids = log_customers(model_dir, url, again, start=START + 100 * HOUR)
    cutoff = START + 100 * HOUR + 1.5 * HOUR  # after the first re-prediction's outcome, before the second's
    table = read_log_table(url, schema_of(model_dir), cutoff).frame
    in_small_chunks = read_log_table(url, schema_of(model_dir), cutoff, chunk_rows=2).frame
    pd.testing.assert_frame_equal(table, in_small_chunks)
    assert len(table) == 6
    by_customer = table.set_index("customer_id")
    first, second = customers["customerID"].iloc[0], customers["customerID"].iloc[1]
    assert by_customer.loc[first, "Churn"] == "No"
    assert by_customer.loc[first, "predicted_at"] == START + 100 * HOUR
    assert by_customer.loc[second, "Churn"] == customers["Churn"].iloc[1]
    assert by_customer.loc[second, "predicted_at"] == START + HOUR
    assert set(table["Partner"]) <= {"Yes", "No"}  # booleans written back with the table's labels
    assert later_ids[1] not in set(table.get("prediction_id", []))

    before_everything = read_log_table(url, schema_of(model_dir), START + 0.5 * HOUR)
    assert before_everything.frame.empty


def test_retrain_holds_out_the_newest_customers_and_publishes_a_challenger(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    logged = generate_customers(300, seed=21)
    log_customers(model_dir, url, logged)
    original = generate_customers(200, seed=22)
    original.iloc[:20, original.columns.get_loc("customerID")] = logged["customerID"].iloc[:20].to_numpy()
    data_file = tmp_path / "original.csv"
    original.to_csv(data_file, index=False)
    trained_on: list[pd.DataFrame] = []

    def recording(config: TrainingConfig):
        trained_on.append(config.data)
        return run_training(config)

    monkeypatch.setattr(retrain_module, "run_training", recording)
    champion = ModelRegistry(model_dir).champion()
    result = run_retrain(
        RetrainConfig(
            database_url=url,
            model_dir=model_dir,
            data=str(data_file),
            cutoff=CUTOFF,
            min_labels=100,
            training=fast_training(),
        )
    )
    registry = ModelRegistry(model_dir)
    assert registry.champion() == champion
    assert registry.challenger() == result.version
    newest = set(logged["customerID"].iloc[-60:])  # 20% of 300, by prediction time
    ids = set(trained_on[0]["customerID"].astype(str))
    assert not newest & ids
    assert result.report["data"]["sources"] == {"log": 240, "original_replaced_by_log": 20, "original": 180}
    assert len(trained_on[0]) == 420
    assert result.report["holdout"]["rows"] == 60
    assert result.comparison["labelled"] == 60
    saved = json.loads(result.report_path.read_text())
    assert saved["action"] == "published as challenger"
    assert result.report_path.parent == model_dir / "retrain-reports"


def test_promote_if_better_promotes_a_clearly_better_model(tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    publish_champion(model_dir, shuffled_labels(generate_customers(600, seed=7), seed=1))  # learned noise
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    log_customers(model_dir, url, generate_customers(1500, seed=31))
    config = RetrainConfig(url, model_dir, cutoff=CUTOFF, promote_if_better=True, training=fast_training())
    result = run_retrain(config)
    assert result.comparison["verdict"] == "better"
    assert ModelRegistry(model_dir).champion() == result.version
    assert result.action == "promoted to champion"
    reason = ModelRegistry(model_dir).history()[-1]["reason"]
    assert "ROC-AUC" in reason


def test_promote_if_better_keeps_a_worse_model_as_challenger(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    customers = generate_customers(1500, seed=41)
    # Older outcomes are noise, the newest (the holdout) are real: the new model learns nothing.
    noisy = pd.concat([shuffled_labels(customers.iloc[:1200], seed=2), customers.iloc[1200:]], ignore_index=True)
    log_customers(model_dir, url, noisy)
    champion = ModelRegistry(model_dir).champion()
    command = ["retrain", "--database-url", url, "--model-dir", str(model_dir), "--promote-if-better"]
    options = ["--cutoff", "2026-12-31T00:00:00Z", "--models", "logistic_regression", "--trials", "2", "--quiet"]
    assert cli_main([*command, *options, "--no-report", "--seed", "3"]) == 0
    challenger = ModelRegistry(model_dir).challenger()
    assert ModelRegistry(model_dir).champion() == champion
    assert challenger not in (None, champion)
    report = json.loads((model_dir / "retrain-reports" / f"{challenger}.json").read_text())
    assert report["comparison"]["verdict"] == "worse"
    assert report["action"] == "published as challenger"
    summary = capsys.readouterr().out
    assert "verdict     worse" in summary
    assert f"models promote {challenger}" in summary


@pytest.mark.parametrize(
    ("rows", "arguments", "message"),
    [
        (50, [], "only 50 labelled customers"),
        (0, ["--cutoff", "2000-01-01T00:00:00Z", "--min-labels", "1"], "no labelled predictions"),
    ],
)
def test_too_few_labels_are_refused_in_one_line(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], rows: int, arguments: list[str], message: str
) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    log_customers(model_dir, url, generate_customers(max(rows, 10), seed=51))
    code = cli_main(["retrain", "--database-url", url, "--model-dir", str(model_dir), "--quiet", *arguments])
    error = capsys.readouterr().err
    assert code == 2
    assert message in error
    assert error.count("\n") == 1
    assert ModelRegistry(model_dir).challenger() is None


def test_one_class_is_refused(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    log_customers(model_dir, url, generate_customers(40, seed=52).assign(Churn="No"))
    code = cli_main(["retrain", "--database-url", url, "--model-dir", str(model_dir), "--min-labels", "10"])
    assert code == 2
    assert "all of one class" in capsys.readouterr().err


def test_unreachable_database_is_refused(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'log.sqlite3'}"
    code = cli_main(["retrain", "--database-url", url, "--model-dir", str(model_dir)])
    error = capsys.readouterr().err
    assert code == 2
    assert "cannot read the prediction log" in error


def test_no_champion_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["retrain", "--database-url", "sqlite://", "--model-dir", str(tmp_path / "none")])
    assert code == 2
    assert "no champion" in capsys.readouterr().err


def test_holdout_by_days_takes_the_predictions_of_the_last_days() -> None:
    frame = pd.DataFrame({"predicted_at": [START + day * 86_400 for day in range(10)], "Churn": ["No", "Yes"] * 5})
    cutoff = START + 10 * 86_400
    training, holdout = split_holdout(frame, cutoff, RetrainConfig("sqlite://", holdout_days=3))
    assert list(holdout["predicted_at"]) == [START + day * 86_400 for day in (7, 8, 9)]
    assert len(training) == 7
    _, by_share = split_holdout(frame, cutoff, RetrainConfig("sqlite://", holdout_share=0.25))
    assert list(by_share["predicted_at"]) == [START + day * 86_400 for day in (7, 8, 9)]


def test_a_second_retraining_is_skipped_while_one_runs(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    with exclusive_retrain(model_dir):
        code = cli_main(["retrain", "--database-url", url, "--model-dir", str(model_dir)])
    assert code == 3
    assert "another retraining" in capsys.readouterr().err
    assert ModelRegistry(model_dir).challenger() is None


def test_if_due_skips_within_the_cool_down(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    log_customers(model_dir, url, generate_customers(20, seed=53))
    reports = model_dir / "retrain-reports"
    reports.mkdir()
    (reports / "earlier.json").write_text("{}")
    command = ["retrain", "--database-url", url, "--model-dir", str(model_dir), "--if-due", "24"]
    assert cli_main(command) == 3
    assert "cool-down is 24 h" in capsys.readouterr().err
    two_days_ago = time.time() - 48 * 3600
    os.utime(reports / "earlier.json", (two_days_ago, two_days_ago))
    assert cli_main(command) == 2  # due: it reads the log, which holds too few labels
    assert "labelled customers" in capsys.readouterr().err


def test_a_log_of_another_schema_is_refused(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    engine = make_engine(url)
    create_tables(engine)
    rows = [
        (f"p{i}", START + i, "v1", f"c{i}", json.dumps({"balance": i, "region": "north"}), 0.5, False, "all", 0.01, 1)
        for i in range(30)
    ]
    outcomes = [
        {"prediction_id": f"p{i}", "churned": i % 2 == 0, "received_at": START + 100, "updated_at": START + 100}
        for i in range(30)
    ]
    with engine.begin() as connection:
        insert_rows(connection, rows)
        connection.execute(insert(outcomes_table), outcomes)
    engine.dispose()
    code = cli_main(["retrain", "--database-url", url, "--model-dir", str(model_dir), "--min-labels", "10"])
    assert code == 2
    assert "share no feature with the champion's schema" in capsys.readouterr().err


def test_retrains_from_what_a_running_service_logged(model_dir: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.conftest import API_KEY, service_settings

    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    customers = generate_customers(300, seed=61)
    records = customers.drop(columns=["Churn"]).to_dict("records")
    settings = service_settings(model_dir, monitoring_enabled=True, database_url=url)
    with TestClient(create_app(settings)) as client:
        for start in range(0, len(records), 100):
            assert client.post("/predict/batch", json=records[start : start + 100]).status_code == 200
        outcomes = [
            {"customer_id": customer, "churned": churned == "Yes"}
            for customer, churned in zip(customers["customerID"], customers["Churn"], strict=True)
        ]
        response = client.post("/feedback", json={"outcomes": outcomes}, headers={"X-API-Key": API_KEY})
        assert response.status_code == 200, response.text
    time.sleep(0.01)  # outcomes received strictly before the default cut-off, now
    result = run_retrain(RetrainConfig(url, model_dir, min_labels=100, training=fast_training()))
    assert result.report["data"]["log"]["labelled_customers"] == 300
    assert result.report["holdout"]["rows"] == 60
    assert result.comparison["labelled"] == 60
    assert result.comparison["unscored"] == {"champion": 0, "challenger": 0}
    assert ModelRegistry(model_dir).challenger() == result.version
