"""Row cleaning and its report; what fitting learned on training rows is reported too."""

from __future__ import annotations

import pandas as pd

from bundle.features import fit_feature
from training.cleaning import (
    CleaningReport,
    clean_table,
    describe_fitted_features,
    drop_rows_without_target,
    fingerprint,
)


def raw_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["a", "b", "b", "c", None, "d"],
            "plan": [" basic ", "pro", "pro", "N/A", None, "basic"],
            "fee": ["$9.99", "?", "?", "12", None, "-"],
            "Churn": ["Yes", "No", "No", "", None, "No"],
        },
        dtype=object,
    )


def test_clean_table_reports_each_step() -> None:
    cleaned, report = clean_table(raw_table())
    assert report.rows_in == 6
    assert report.cells_trimmed == 1
    assert report.empty_rows_dropped == 1
    assert report.duplicate_rows_dropped == 1
    assert report.rows_out == 4
    assert report.missing_markers == {"id": 1, "plan": 2, "fee": 4, "Churn": 2}
    assert cleaned["plan"].tolist() == ["basic", "pro", None, "basic"]
    assert cleaned["fee"].tolist() == ["$9.99", None, "12", None]


def test_rows_without_target_are_dropped_and_counted() -> None:
    cleaned, report = clean_table(raw_table())
    kept = drop_rows_without_target(cleaned, "Churn", report)
    assert report.rows_without_target_dropped == 1
    assert report.rows_out == 3
    assert kept["id"].tolist() == ["a", "b", "d"]
    assert set(report.to_dict()) >= {"rows_in", "duplicate_rows_dropped", "imputed", "outliers_capped"}


def test_numpy_scalars_become_plain_values() -> None:
    cleaned, _ = clean_table(pd.DataFrame({"n": [1, 2]}).astype(object))
    assert [type(value) for value in cleaned["n"]] == [int, int]


def test_fingerprint_is_stable_and_sensitive() -> None:
    cleaned, _ = clean_table(raw_table())
    same, _ = clean_table(raw_table())
    assert fingerprint(cleaned) == fingerprint(same)
    changed = cleaned.copy()
    changed.loc[0, "plan"] = "pro"
    assert fingerprint(changed) != fingerprint(cleaned)
    # The same values typed differently (text from CSV, numbers from Parquet) give the same fingerprint.
    assert fingerprint(pd.DataFrame({"x": ["1", "2.5"]})) == fingerprint(pd.DataFrame({"x": [1.0, 2.5]}))


def test_imputation_and_outlier_caps_are_reported() -> None:
    values = [float(v) for v in range(1, 40)] + [10_000.0, None, None]
    spec = fit_feature("spend", "numeric", values)
    report = CleaningReport()
    describe_fitted_features(report, [spec], {"spend": values})
    assert report.imputed["spend"] == {"value": spec.example(), "training_rows": 2}
    capped = report.outliers_capped["spend"]
    assert capped["training_rows_above"] == 1 and capped["training_rows_below"] == 0
    assert capped["high"] < 10_000


def test_nested_values_are_kept_as_text() -> None:
    cleaned, report = clean_table(pd.DataFrame({"tags": [["a", "b"], ["a", "b"], None], "n": [1, 1, 2]}, dtype=object))
    assert cleaned["tags"].tolist() == ["['a', 'b']", None]
    assert report.duplicate_rows_dropped == 1
