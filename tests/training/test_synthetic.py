"""Synthetic customer tables: the Telco layout and value sets, the churn mechanism, drift, other schemas."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from training.synthetic import generate_customers

TELCO_COLUMNS = [
    "customerID", "gender", "SeniorCitizen", "Partner", "Dependents", "tenure", "PhoneService", "MultipleLines",
    "InternetService", "OnlineSecurity", "OnlineBackup", "DeviceProtection", "TechSupport", "StreamingTV",
    "StreamingMovies", "Contract", "PaperlessBilling", "PaymentMethod", "MonthlyCharges", "TotalCharges", "Churn",
]  # fmt: skip
TELCO_VALUES = {
    "gender": {"Male", "Female"},
    "SeniorCitizen": {0, 1},
    "Partner": {"Yes", "No"},
    "Dependents": {"Yes", "No"},
    "PhoneService": {"Yes", "No"},
    "MultipleLines": {"Yes", "No", "No phone service"},
    "InternetService": {"DSL", "Fiber optic", "No"},
    "OnlineSecurity": {"Yes", "No", "No internet service"},
    "TechSupport": {"Yes", "No", "No internet service"},
    "StreamingMovies": {"Yes", "No", "No internet service"},
    "Contract": {"Month-to-month", "One year", "Two year"},
    "PaperlessBilling": {"Yes", "No"},
    "PaymentMethod": {"Electronic check", "Mailed check", "Bank transfer (automatic)", "Credit card (automatic)"},
    "Churn": {"Yes", "No"},
}


@pytest.fixture(scope="module")
def telco() -> pd.DataFrame:
    return generate_customers(7043, seed=0)


def test_telco_columns_and_value_sets(telco: pd.DataFrame) -> None:
    assert list(telco.columns) == TELCO_COLUMNS
    assert len(telco) == 7043
    for column, values in TELCO_VALUES.items():
        assert set(telco[column]) == values, column
    assert all(re.fullmatch(r"\d{4}-[A-Z]{5}", value) for value in telco["customerID"])
    assert telco["customerID"].is_unique
    assert telco["tenure"].between(0, 72).all()


def test_telco_services_are_consistent(telco: pd.DataFrame) -> None:
    no_phone = telco["PhoneService"] == "No"
    assert (telco.loc[no_phone, "MultipleLines"] == "No phone service").all()
    no_internet = telco["InternetService"] == "No"
    assert (telco.loc[no_internet, "OnlineBackup"] == "No internet service").all()
    assert (telco.loc[~no_internet, "OnlineBackup"] != "No internet service").all()
    monthly = telco["MonthlyCharges"].astype(float)
    assert monthly.between(18.25, 118.75).all()
    assert monthly[telco["InternetService"] == "Fiber optic"].mean() > monthly[no_internet].mean() + 40


def test_total_charges_is_text_with_blanks_for_new_customers(telco: pd.DataFrame) -> None:
    assert all(isinstance(value, str) for value in telco["TotalCharges"])
    blank = telco["TotalCharges"] == " "
    assert 1 <= blank.sum() <= 40
    assert (telco.loc[blank, "tenure"] == 0).all()
    total = telco.loc[~blank, "TotalCharges"].astype(float)
    expected = telco.loc[~blank, "tenure"].astype(float) * telco.loc[~blank, "MonthlyCharges"].astype(float)
    assert np.median(np.abs(total / expected - 1)) < 0.05


def test_telco_churn_rate_and_signal(telco: pd.DataFrame) -> None:
    y = (telco["Churn"] == "Yes").to_numpy()
    assert 0.22 <= y.mean() <= 0.32
    m2m = telco["Contract"] == "Month-to-month"
    assert y[m2m].mean() > 2 * y[~m2m].mean()
    features = pd.get_dummies(telco[["Contract", "InternetService", "PaymentMethod", "TechSupport"]], dtype=float)
    features["tenure"] = telco["tenure"].astype(float) / 72
    features["MonthlyCharges"] = telco["MonthlyCharges"].astype(float) / 100
    x_train, x_test, y_train, y_test = train_test_split(features.to_numpy(), y, test_size=0.3, random_state=0)
    auc = roc_auc_score(y_test, LogisticRegression(max_iter=1000).fit(x_train, y_train).predict_proba(x_test)[:, 1])
    # Realistic: learnable, but noisy like real churn data.
    assert 0.78 <= auc <= 0.90


def test_same_seed_same_table_and_other_seed_differs() -> None:
    pd.testing.assert_frame_equal(generate_customers(300, seed=5), generate_customers(300, seed=5))
    assert not generate_customers(300, seed=5).equals(generate_customers(300, seed=6))


def test_drift_moves_toward_short_tenure_fibre_month_to_month(telco: pd.DataFrame) -> None:
    drifted = generate_customers(7043, seed=0, drift=1.0)
    assert (drifted["Contract"] == "Month-to-month").mean() > (telco["Contract"] == "Month-to-month").mean() + 0.2
    assert (drifted["InternetService"] == "Fiber optic").mean() > (telco["InternetService"] == "Fiber optic").mean()
    assert drifted["MonthlyCharges"].astype(float).mean() > telco["MonthlyCharges"].astype(float).mean() + 10
    assert drifted["tenure"].astype(float).mean() < telco["tenure"].astype(float).mean() - 10


def test_bank_schema_quirks() -> None:
    bank = generate_customers(3000, seed=1, schema="bank")
    assert {"RowNumber", "CustomerId", "Surname", "CreditScore", "Geography", "Exited"} <= set(bank.columns)
    assert bank["RowNumber"].tolist() == list(range(1, 3001))
    assert bank["CustomerId"].is_unique
    assert bank["Surname"].nunique() > 1000
    assert bank["Surname"].value_counts().max() < 15  # each surname rare
    assert set(bank["Exited"]) == {0, 1}
    assert 0.12 <= bank["Exited"].mean() <= 0.30


def test_subscription_schema_quirks() -> None:
    table = generate_customers(3000, seed=2, schema="subscription")
    assert all(value.startswith("$") for value in table["monthly_fee"])
    assert {"?", "NA"} <= set(table["avg_session_minutes"])
    assert table["region"].nunique() == 1
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) for value in table["signup_date"])
    assert set(table["churned"]) == {"true", "false"}
    assert set(table["autopay"]) == {"True", "False"}
    assert table.duplicated().sum() > 0
    counts = table["country"].value_counts(normalize=True)
    assert (counts < 0.01).sum() >= 10  # rare countries
    assert any(value != value.strip() for value in table["plan"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"schema": "retail"}, "unknown synthetic schema"), ({"drift": 1.5}, "drift"), ({"n_rows": 0}, "n_rows")],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_customers(**kwargs)


def test_a_partitioned_table_is_written_chunk_by_chunk_and_reproducibly(tmp_path) -> None:
    from training.cli import main

    for name in ("a", "b"):
        assert (
            main(["generate", "--rows", "250", "--partition-rows", "100", "--seed", "3", "--out", str(tmp_path / name)])
            == 0
        )
    files = sorted(path.name for path in (tmp_path / "a").iterdir())
    assert files == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    first, second = pd.read_parquet(tmp_path / "a"), pd.read_parquet(tmp_path / "b")
    assert len(first) == 250
    assert [len(pd.read_parquet(tmp_path / "a" / name)) for name in files] == [100, 100, 50]
    pd.testing.assert_frame_equal(first, second)
