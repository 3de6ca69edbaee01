"""python -m scoring: the service's scores, error rows, reruns, database tables, a separate Dask cluster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.serving.predictor import build_predictor
from tests.conftest import CONSTANT_COLUMN, ID_COLUMN, TARGET, service_settings, synthetic_customers
from tests.scoring.conftest import read_scores, score, write_parquet_parts

FAMILIES = ("logistic_regression", "random_forest", "xgboost", "lightgbm", "mlp")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_customer_scores_as_the_service_scores_it(
    family: str, family_models_dirs: dict[str, Path], scheduler_address: str, tmp_path: Path
) -> None:
    models_dir = family_models_dirs[family]
    table = synthetic_customers(n_rows=30, seed=5)
    predictor = build_predictor(service_settings(models_dir))

    one = write_parquet_parts(table.iloc[[7]], tmp_path / "one", parts=1)
    score(models_dir, one, tmp_path / "one-out", scheduler_address, reasons=True)
    scored = read_scores(tmp_path / "one-out").iloc[0]
    alone = predictor.predict_records(pd.read_parquet(one).to_dict("records"), explain=True).scored
    assert scored["customer_id"] == alone.customer_ids[0] == table[ID_COLUMN].iloc[7]
    assert scored["churn_probability"] == alone.probabilities[0]
    assert scored["predicted_churn"] == alone.decisions[0]
    assert scored["risk_category"] == alone.risk_bands[0]
    assert scored["model_version"] == predictor.version
    assert json.loads(scored["top_reasons"]) == json.loads(json.dumps(alone.reasons[0], default=str))

    # A partition scores as the same records sent to /predict/batch in one request.
    data = write_parquet_parts(table, tmp_path / "data", parts=1)
    score(models_dir, data, tmp_path / "out", scheduler_address)
    batch = predictor.predict_records(pd.read_parquet(data).to_dict("records"), explain=False).scored
    scores = read_scores(tmp_path / "out")
    assert scores["churn_probability"].tolist() == batch.probabilities
    assert scores["risk_category"].tolist() == batch.risk_bands
    assert scores["customer_id"].tolist() == batch.customer_ids


def test_bad_rows_become_error_rows_and_every_row_is_accounted_for(
    linear_models_dir: Path, scheduler_address: str, tmp_path: Path
) -> None:
    table = synthetic_customers(n_rows=40, seed=1).astype(object)
    table.loc[3, "tenure"] = "not a number"
    table.loc[25, "MonthlyCharges"] = "-5"
    table["LoyaltyTier"] = "gold"  # a column the model does not know is left out, not an error
    data = write_parquet_parts(table, tmp_path / "data", parts=2)

    summary = score(linear_models_dir, data, tmp_path / "out", scheduler_address)

    errors = pd.read_parquet(tmp_path / "out" / "_errors").sort_values("row")
    assert errors["customer_id"].tolist() == [table.loc[3, ID_COLUMN], table.loc[25, ID_COLUMN]]
    assert errors["reason"].str.startswith("tenure:").iloc[0]
    assert errors["reason"].str.startswith("MonthlyCharges:").iloc[1]
    assert len(read_scores(tmp_path / "out")) + len(errors) == len(table)
    assert (summary["rows"], summary["scored"], summary["errors"]) == (40, 38, 2)
    assert summary["ignored_columns"] == ["LoyaltyTier"]
    assert sum(summary["risk_bands"].values()) == 38
    assert set(summary["risk_bands"]) <= set(service_settings(linear_models_dir).risk_bands)


def test_a_rerun_skips_written_partitions_and_gives_the_same_output(
    linear_models_dir: Path, scheduler_address: str, tmp_path: Path
) -> None:
    table = synthetic_customers(n_rows=60, seed=2)
    data = write_parquet_parts(table, tmp_path / "data", parts=3)
    out = tmp_path / "out"
    first = score(linear_models_dir, data, out, scheduler_address)
    complete = read_scores(out)
    kept = (out / "part-00000.parquet").stat().st_mtime_ns
    # A job killed while writing partition 2: its file never got its final name.
    (out / "part-00002.parquet").rename(out / ".part-00002.parquet.1234.tmp")

    second = score(linear_models_dir, data, out, scheduler_address)

    assert second["partitions_written_before"] == 2
    assert (out / "part-00000.parquet").stat().st_mtime_ns == kept
    assert not list(out.glob(".*.tmp"))
    pd.testing.assert_frame_equal(read_scores(out), complete)
    assert len(complete) == len(table) == second["scored"]
    assert {key: second[key] for key in ("rows", "scored", "risk_bands", "features")} == {
        key: first[key] for key in ("rows", "scored", "risk_bands", "features")
    }
    # Nothing left to score: the output stays as it is, without a cluster.
    third = score(linear_models_dir, data, out, scheduler="tcp://127.0.0.1:9")
    assert third["partitions_written_before"] == 3
    pd.testing.assert_frame_equal(read_scores(out), complete)


def test_a_rerun_of_a_different_job_into_the_same_output_is_refused(
    linear_models_dir: Path, scheduler_address: str, tmp_path: Path
) -> None:
    from scoring.sinks import ScoringOutputError

    data = write_parquet_parts(synthetic_customers(n_rows=20, seed=3), tmp_path / "data", parts=1)
    score(linear_models_dir, data, tmp_path / "out", scheduler_address)
    with pytest.raises(ScoringOutputError, match="different scoring job"):
        score(linear_models_dir, data, tmp_path / "out", scheduler_address, reasons=True)


def test_a_database_table_in_and_out_with_resumable_partitions(
    linear_models_dir: Path, scheduler_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy

    monkeypatch.chdir(tmp_path)  # the summary of a database output goes to the current directory

    table = synthetic_customers(n_rows=50, seed=4).drop(columns=[TARGET, CONSTANT_COLUMN])
    source = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = sqlalchemy.create_engine(source)
    table.to_sql("customers", engine, index=False)
    target = f"sqlite:///{tmp_path / 'scores.db'}"
    options = {"table": "customers", "out_table": "scores", "partition_rows": 20}

    summary = score(linear_models_dir, source, target, scheduler_address, **options)
    again = score(linear_models_dir, source, target, scheduler_address, **options)

    written = pd.read_sql("SELECT * FROM scores ORDER BY partition, row", sqlalchemy.create_engine(target))
    assert (summary["partitions"], summary["scored"]) == (3, 50)
    assert again["partitions_written_before"] == 3
    assert written["customer_id"].tolist() == table[ID_COLUMN].tolist()
    assert np.isfinite(written["churn_probability"]).all()
    assert json.loads((tmp_path / "scores_summary.json").read_text())["scored"] == 50


def test_the_drift_summary_is_written_beside_the_output(
    linear_models_dir: Path, scheduler_address: str, tmp_path: Path
) -> None:
    data = write_parquet_parts(synthetic_customers(n_rows=30, seed=6), tmp_path / "data", parts=1)
    summary = score(linear_models_dir, data, tmp_path / "out", scheduler_address)
    written = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert written["rows"] == 30
    assert {item["feature"] for item in written["features"]} >= {"tenure", "Contract"}
    assert sum(written["score_distribution"]["counts"]) == summary["scored"] == 30
    assert all(item["psi"] >= 0 for item in written["features"])
    estimate = written["estimated_performance"]
    assert estimate["predictions"] == 30
    assert 0.0 <= estimate["expected_churn_rate"] <= 1.0
    auc = estimate["roc_auc"]
    assert auc["lower"] <= auc["value"] <= auc["upper"]


def test_a_csv_file_is_scored_in_blocks_with_its_text_values(
    linear_models_dir: Path, scheduler_address: str, tmp_path: Path
) -> None:
    table = synthetic_customers(n_rows=300, seed=9)
    data = tmp_path / "customers.csv"
    table.to_csv(data, sep=";", index=False)

    summary = score(linear_models_dir, data, tmp_path / "out", scheduler_address, partition_rows=100)

    scores = read_scores(tmp_path / "out")
    assert summary["partitions"] > 1
    assert scores["customer_id"].tolist() == table[ID_COLUMN].tolist()
    assert summary["errors"] == 0


def test_when_a_partition_cannot_be_scored_only_its_failing_rows_become_errors(linear_models_dir: Path) -> None:
    from scoring.partition import error_table, predict

    predictor = build_predictor(service_settings(linear_models_dir))
    records = pd.DataFrame(synthetic_customers(n_rows=3, seed=10)).astype(str).to_dict("records")

    class FailsOnTheSecondCustomer:
        """The real predictor, except that a batch holding customer 1 raises."""

        cleaner = predictor.cleaner

        def predict_records(self, batch: list, explain: bool):
            if records[1] in batch:
                raise RuntimeError("kernel failure")
            return predictor.predict_records(batch, explain=explain)

    pieces = predict(FailsOnTheSecondCustomer(), records, reasons=False)

    scored_rows = [offset + index for offset, outcome in pieces if outcome.scored for index in outcome.scored.indices]
    errors = error_table(pieces, number=4).to_pylist()
    assert scored_rows == [0, 2]
    assert errors == [
        {
            "customer_id": records[1][ID_COLUMN],
            "partition": 4,
            "row": 1,
            "reason": "could not be scored: RuntimeError: kernel failure",
        }
    ]
