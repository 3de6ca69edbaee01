"""bench.quality: its tables, its baselines, its statistics, and one run of the whole protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bench.quality_tables as quality_tables
from bench.quality import main, parse_args, refusal_reason, stratified_split
from bench.quality_baselines import baseline_aucs, numeric_columns, typed
from bench.quality_report import cost_targets, summarize, write_results
from bench.quality_tables import TABLES, read_exported


def written(name: str, seed: int, tmp_path: Path, rows: int | None = None) -> pd.DataFrame:
    table = TABLES[name]
    frame = table.build(rows or table.quick_rows, seed, tmp_path)
    path = tmp_path / f"{name}-{seed}.csv"
    frame.to_csv(path, index=False)
    return read_exported(path)


# ---- tables ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [name for name in TABLES if name != "telco"])
def test_each_generated_table_is_seeded_and_has_a_two_class_target(name: str, tmp_path: Path) -> None:
    table = TABLES[name]
    first, again = written(name, 3, tmp_path), written(name, 3, tmp_path)
    other = written(name, 4, tmp_path)

    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)
    assert len(first) == table.quick_rows
    assert table.positive in set(first[table.target])
    assert first[table.target].nunique() == 2
    assert 0.05 < (first[table.target] == table.positive).mean() < 0.6
    assert all(column in first.columns for column in table.id_columns)


def test_telecom_usage_has_states_linear_charges_and_numeric_area_codes(tmp_path: Path) -> None:
    frame = written("telecom_usage", 0, tmp_path, rows=4000)

    assert frame["state"].nunique() == 51
    assert set(frame["area_code"]) <= {"408", "415", "510"}
    minutes, charge = frame["total_day_minutes"].astype(float), frame["total_day_charge"].astype(float)
    assert np.allclose(charge, (minutes * 0.17).round(2))
    assert len([column for column in frame.columns if frame[column].str.fullmatch(r"[\d.]+").all()]) >= 15
    assert frame["phone_number"].str.fullmatch(r"\d{3}-\d{4}").all()


def test_bank_blanks_repeats_rows_and_leaves_cells_blank(tmp_path: Path) -> None:
    frame = written("bank_blanks", 0, tmp_path)

    assert frame.duplicated().sum() > 10
    for column in ("Geography", "Age", "Balance"):
        assert (frame[column] == "").any()
    assert set(frame["Exited"]) == {"0", "1"}
    assert frame["Surname"].nunique() > 100


def test_bank_markers_writes_question_marks_and_numbers_as_text(tmp_path: Path) -> None:
    frame = written("bank_markers", 0, tmp_path)

    for column in ("Geography", "Age", "CreditScore", "Balance"):
        assert (frame[column] == "?").any()
    assert set(frame["IsActiveMember"]) == {"0.0", "1.0"}
    assert (frame["Balance"] == "0.00").mean() > 0.2  # many customers hold no balance


def test_many_levels_has_categoricals_with_hundreds_of_levels(tmp_path: Path) -> None:
    frame = written("many_levels", 0, tmp_path, rows=20_000)

    assert frame["product_code"].nunique() > 500
    assert frame["city"].nunique() > 200
    assert frame["sales_rep"].nunique() > 100


def test_a_table_whose_source_is_absent_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quality_tables, "TELCO_CSV", tmp_path / "absent.csv")

    assert TABLES["telco"].write(tmp_path / "telco.csv", 0) is None


# ---- split and baselines ------------------------------------------------------------------------------
def test_the_split_keeps_the_churn_rate(tmp_path: Path) -> None:
    frame = written("small_weak", 0, tmp_path)
    train, test = stratified_split(frame, "churned", seed=1)

    assert len(train) == 800 and len(test) == 200
    assert abs((train["churned"] == "yes").mean() - (test["churned"] == "yes").mean()) < 0.01


def messy_table(rows: int, seed: int) -> pd.DataFrame:
    """Text cells as exported: blanks, '?', numbers as text, and a churn driven by two columns."""
    rng = np.random.default_rng(seed)
    usage = rng.normal(50, 15, rows)
    plan = rng.choice(["a", "b", "c"], rows)
    churn = rng.random(rows) < 1 / (1 + np.exp(-(usage - 50) / 5 - 2 * (plan == "a") + 1))
    usage_text = np.char.mod("%.1f", usage).astype(object)
    usage_text[rng.random(rows) < 0.1] = "?"
    usage_text[rng.random(rows) < 0.1] = ""
    plan = plan.astype(object)
    plan[rng.random(rows) < 0.05] = ""
    return pd.DataFrame(
        {"id": [f"c{i}" for i in range(rows)], "usage": usage_text, "plan": plan, "churn": np.where(churn, "Yes", "No")}
    )


def test_mostly_numeric_text_columns_are_read_as_numbers() -> None:
    frame = messy_table(200, 0).drop(columns=["churn", "id"])

    assert numeric_columns(frame) == ["usage"]
    parsed = typed(frame, ["usage"])
    assert parsed["usage"].isna().sum() == ((frame["usage"] == "?") | (frame["usage"] == "")).sum()
    assert parsed["plan"].isna().sum() == (frame["plan"] == "").sum()


def test_baselines_fit_messy_text_and_score_categories_unseen_in_training() -> None:
    train, test = messy_table(600, 1), messy_table(200, 2)
    test.loc[:20, "plan"] = "brand-new plan"

    aucs = baseline_aucs(train, test, "churn", "Yes", ("id",), seed=0)

    assert set(aucs) == {"logistic_regression", "xgboost", "lightgbm"}
    assert all(0.8 < auc <= 1.0 for auc in aucs.values())


# ---- statistics and targets ------------------------------------------------------------------------------
def run(table: str, seed: int, project: float | None, refused: dict[str, int] | None = None) -> dict:
    result = {"table": table, "seed": seed, "baselines": {"logistic_regression": 0.80, "xgboost": 0.82}}
    if project is not None:
        result["project_auc"] = project
    result["refused"] = refused or {}
    return result


def test_the_summary_gives_each_tables_spread_and_the_targets() -> None:
    runs = [run("a", 0, 0.83), run("a", 1, 0.81), run("a", 2, 0.85), run("b", 0, 0.84)]

    summary = summarize(runs)

    spread = summary["tables"]["a"]["difference"]
    assert spread["mean"] == pytest.approx(0.01) and spread["min"] == pytest.approx(-0.01)
    assert spread["max"] == pytest.approx(0.03) and spread["std"] == pytest.approx(0.02)
    assert summary["tables"]["a"]["seeds"][0]["best_baseline"] == "xgboost"
    assert summary["average_difference"] == pytest.approx(0.015)
    assert summary["tables"]["a"]["verdict"] == summary["average_verdict"] == "PASS"
    assert summary["refusals_verdict"] == "PASS"


def test_failed_training_and_refused_missing_values_fall_short() -> None:
    runs = [run("a", 0, None), run("b", 0, 0.80, {"records": 3, "missing value (Age)": 3, "value_error (Plan)": 1})]

    summary = summarize(runs)

    assert summary["tables"]["a"]["verdict"] == "FALL SHORT"
    assert summary["tables"]["b"]["verdict"] == "FALL SHORT"
    assert summary["average_difference"] == pytest.approx(-0.02)
    assert summary["missing_value_refusals"] == 3 and summary["refusals_verdict"] == "FALL SHORT"


def test_refusals_are_named_by_reason_and_field() -> None:
    blank = {"type": "value_error", "loc": ["body", 4, "Age"], "input": " "}
    marker = {"type": "value_error", "loc": ["body", 4, "Age"], "input": "?"}
    absent = {"type": "missing", "loc": ["body", 4, "Plan"], "input": None}
    wrong = {"type": "value_error", "loc": ["body", 4, "Age"], "input": "old"}

    assert refusal_reason(blank) == refusal_reason(marker) == "missing value (Age)"
    assert refusal_reason(absent) == "missing value (Plan)"
    assert refusal_reason(wrong) == "value_error (Age)"


def test_cost_targets_apply_to_the_million_row_run() -> None:
    fast = {"exit_code": 0, "wall_seconds": 300.0, "peak_rss_mb": 5000.0}

    assert cost_targets(1_000_000, fast) == {"wall_seconds": "<= 600: PASS", "peak_rss_mb": "<= 4096: FALL SHORT"}
    assert cost_targets(200_000, fast) == {}


def test_quick_runs_one_seed_with_limited_training() -> None:
    args = parse_args(["--quick", "--tables", "telco,small_weak"])

    assert args.seeds == [0] and args.tables == ["telco", "small_weak"]
    assert args.training_args == ["--trials", "2"] and args.cost_rows == (200_000, 1_000_000)
    assert parse_args(["--cost", "--cost-rows", "5000"]).cost_rows == (5000,)
    with pytest.raises(SystemExit):
        parse_args(["--tables", "nonexistent"])


# ---- the whole protocol ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_harness_trains_serves_and_compares_on_a_small_table(tmp_path: Path) -> None:
    training = "--trials 1 --models logistic_regression"
    arguments = ["--tables", "small_weak", "--quick", "--training-args", training]
    exit_code = main([*arguments, "--out-dir", str(tmp_path / "results"), "--workdir", str(tmp_path / "work")])

    assert exit_code == 0
    results = json.loads(next((tmp_path / "results").glob("quality-*.json")).read_text())
    (only,) = results["runs"]
    assert only["training"]["exit_code"] == 0 and only["training"]["peak_rss_mb"] > 0
    assert 0.5 < only["project_auc"] < 1.0
    assert only["refused"] == {} and only["test_rows"] == 200
    assert "| small_weak | 0 |" in next((tmp_path / "results").glob("quality-*.md")).read_text()


def test_the_written_report_lists_every_run_and_names_failures(tmp_path: Path) -> None:
    failed = run("b", 0, None) | {
        "training": {"exit_code": 2, "wall_seconds": 3.0, "peak_rss_mb": 200.0, "error": "error: no target\n"}
    }
    runs = [run("a", 0, 0.83) | {"training": {"exit_code": 0, "wall_seconds": 90.0, "peak_rss_mb": 700.0}}, failed]
    for result in runs:
        result["table_shape"] = [1000, 9]
    results = {"protocol": {"seeds": [0], "training_args": []}, "environment": {"load_average": (1.0, 1.0, 1.0)}}
    results |= {"skipped": ["telco"], "runs": runs, "summary": summarize(runs), "cost": []}

    json_path, md_path, text = write_results(results, tmp_path)

    assert json.loads(json_path.read_text())["summary"]["tables"]["a"]["verdict"] == "PASS"
    assert md_path.read_text() == text
    assert "| a | 0 | 1000 | 0.8300 | xgboost | 0.8200 | +0.0100 |" in text
    assert "- b seed 0: training exited 2: error: no target" in text
    assert "Skipped (source absent): telco" in text
