"""The training report is complete, self-contained, and survives failed candidates and missing parts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.calibration import calibration_summary, fit_calibration
from training.evaluation import evaluate
from training.report import write_report
from training.report.context import winner_entry
from training.report.selection_sections import comparison_sentence
from training.report.statistics import bootstrap_auc_interval, hanley_mcneil_interval, rank_auc, wilson_interval
from training.threshold import choose_threshold

CHARTS = (
    "roc_curve.png",
    "precision_recall_curve.png",
    "calibration_curve.png",
    "confusion_matrix.png",
    "feature_importance.png",
    "threshold_curve.png",
)


def scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.27).astype(int)
    raw = np.clip(0.25 * y + rng.beta(2, 4, n), 0, 1)
    return y, raw


def full_context() -> dict[str, Any]:
    y_val, raw_val = scores(500, seed=1)
    y_test, raw_test = scores(400, seed=2)
    calibration = fit_calibration(raw_val, y_val, seed=0)
    threshold = choose_threshold(y_val, raw_val, strategy="max_profit", offer_cost=10.0, saved_value=60.0)
    return {
        "version": "20261123T120000Z-a1b2c3",
        "data": {"source": "customers.csv", "rows": 1800, "positives": 480, "churn_rate": 0.267, "fingerprint": "ab12"},
        "cleaning": {"duplicate_rows_dropped": 3, "unreadable_numbers": {"TotalCharges": 11}},
        "roles": {
            "customerID": {"role": "id", "reason": "unique per row"},
            "tenure": {"role": "numeric", "reason": "integer months"},
        },
        "leaderboard": [
            {
                "family": "logistic_regression",
                "cv_roc_auc": 0.84,
                "cv_roc_auc_std": 0.012,
                "val_roc_auc": 0.83,
                "val_log_loss": 0.42,
                "fit_seconds": 0.8,
                "trials": 12,
                "params": {"C": 0.31622776},
            },
            {
                "family": "random_forest",
                "cv_roc_auc": 0.82,
                "cv_roc_auc_std": 0.015,
                "val_roc_auc": 0.81,
                "val_log_loss": 0.45,
                "fit_seconds": 4.2,
                "trials": 8,
                "params": {"n_estimators": 300, "max_depth": 8},
            },
            {
                "family": "lightgbm",
                "error": "ImportError: lightgbm <is> not installed",
                "fit_seconds": 0.0,
                "trials": 0,
            },
        ],
        "winner": "logistic_regression",
        "threshold": threshold,
        "calibration": {
            "method": calibration.method,
            "summary": calibration_summary(raw_val, y_val, calibration, seed=0),
        },
        "test_metrics": evaluate(y_test, raw_test, threshold["threshold"]),
        "y_test": y_test,
        "p_test": raw_test,
        "importance": {"tenure": 0.08, "contract": 0.03, "region": -0.001},
        "timings": {"load": 0.4, "search": 75.0, "report": 1.2},
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One full report shared by the checks below (drawing the charts is the slow part)."""
    context = full_context()
    return write_report(tmp_path_factory.mktemp("report") / "bundle", context), context


def test_full_report_writes_html_markdown_and_every_chart(written: tuple[Path, dict[str, Any]]) -> None:
    html_path, context = written
    directory = html_path.parent
    assert html_path.name == "report.html"
    for chart in CHARTS:
        assert (directory / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = html_path.read_text()
    markdown = (directory / "report.md").read_text()
    # Self-contained: every chart is embedded, nothing refers to a file beside the page.
    assert page.count("data:image/png;base64,") == len(CHARTS)
    assert not re.search(r'src="(?!data:)', page)
    for chart in CHARTS:
        assert f"]({chart})" in markdown
    for text in (
        "20261123T120000Z-a1b2c3",
        "customers.csv",
        "logistic_regression",
        "Hanley-McNeil",
        "Precision at 80%",
    ):
        assert text in page and text in markdown
    # The failed candidate is listed with its error, escaped in HTML.
    assert "ImportError: lightgbm &lt;is&gt; not installed" in page
    assert "ImportError: lightgbm <is> not installed" in markdown
    # Every key of the test metrics appears.
    for key in context["test_metrics"]:
        assert key in markdown


def test_winner_explanation_compares_the_gap_with_fold_noise(written: tuple[Path, dict[str, Any]]) -> None:
    markdown = (written[0].parent / "report.md").read_text()
    # 0.84 vs 0.82 is a gap of 0.020, larger than either fold standard deviation.
    assert "the next best, random_forest" in markdown
    assert "gap (0.020) is larger than the fold-to-fold standard deviation" in markdown


def test_minimal_context_without_importance_or_test_data(tmp_path: Path) -> None:
    context = {
        "version": "v1",
        "leaderboard": [{"family": "xgboost", "error": "XGBoostError: out of memory"}],
        "importance": None,
    }
    html_path = write_report(tmp_path, context)
    page = html_path.read_text()
    assert "Feature importance was not computed" in page
    assert "XGBoostError: out of memory" in page
    assert (tmp_path / "report.md").is_file()
    assert not list(tmp_path.glob("*.png"))


def test_auc_intervals_agree_and_contain_the_estimate() -> None:
    y, p = scores(600, seed=5)
    auc = rank_auc(y, p)
    low, high = hanley_mcneil_interval(auc, int(y.sum()), int(y.size - y.sum()))
    boot_low, boot_high, resamples = bootstrap_auc_interval(y, p)
    assert low < auc < high and boot_low < auc < boot_high
    assert resamples > 900
    assert 0.5 < (boot_high - boot_low) / (high - low) < 2.0


def test_wilson_interval_known_values() -> None:
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    low, high = wilson_interval(50, 100)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)


def test_a_gap_within_fold_noise_is_called_a_practical_tie() -> None:
    winner = {"family": "xgboost", "val_roc_auc": 0.851, "cv_roc_auc": 0.846, "cv_roc_auc_std": 0.011}
    runner_up = {"family": "lightgbm", "val_roc_auc": 0.849, "cv_roc_auc": 0.848, "cv_roc_auc_std": 0.009}
    sentence = comparison_sentence(winner, runner_up)
    assert "lightgbm" in sentence and "gap (0.002)" in sentence and "practically tied" in sentence
    assert "only candidate" in comparison_sentence(winner, None)


def test_the_winner_is_told_apart_from_another_soft_vote_by_its_stage() -> None:
    leaderboard = [
        {"family": "soft_vote", "stage": "blended", "cv_roc_auc": 0.853, "cv_roc_auc_std": 0.01},
        {"family": "soft_vote", "stage": "equal vote", "cv_roc_auc": 0.852, "cv_roc_auc_std": 0.01},
        {"family": "xgboost", "stage": "tuned", "cv_roc_auc": 0.851, "cv_roc_auc_std": 0.01},
    ]
    context = {"leaderboard": leaderboard, "winner": "soft_vote", "winner_stage": "equal vote"}

    assert winner_entry(context) is leaderboard[1]
    assert winner_entry({"leaderboard": leaderboard, "winner": "xgboost"}) is leaderboard[2]
