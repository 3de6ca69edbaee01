"""Column roles: target, churn value, id, feature kinds and dropped columns, each with a reason."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bundle.features import ROWS_TO_LEARN_A_CATEGORY, category_min_count, fit_feature
from training.cleaning import clean_table
from training.data import TrainingDataError
from training.roles import RoleSet, infer_feature_roles, infer_target, target_vector
from training.synthetic import generate_customers


def roles_of(frame: pd.DataFrame, **kwargs) -> RoleSet:
    cleaned, _ = clean_table(frame)
    target = infer_target(cleaned, kwargs.pop("target", None), kwargs.pop("positive_label", None))
    return infer_feature_roles(cleaned, target, **kwargs)


def by_name(roles: RoleSet) -> dict[str, dict[str, str]]:
    return roles.report()


@pytest.fixture(scope="module")
def telco_roles() -> RoleSet:
    return roles_of(generate_customers(1000, seed=3))


@pytest.fixture(scope="module")
def bank_roles() -> RoleSet:
    return roles_of(generate_customers(2000, seed=3, schema="bank"))


@pytest.fixture(scope="module")
def subscription_roles() -> RoleSet:
    return roles_of(generate_customers(2000, seed=3, schema="subscription"))


def test_telco_roles(telco_roles: RoleSet) -> None:
    report = by_name(telco_roles)
    assert telco_roles.target.column == "Churn" and telco_roles.target.positive_label == "Yes"
    assert telco_roles.id_column == "customerID"
    assert report["TotalCharges"]["role"] == "numeric"
    assert report["TotalCharges"]["reason"] == "numeric"  # text in the table, but plain numbers and blanks
    assert report["tenure"]["role"] == "numeric"
    assert report["SeniorCitizen"]["role"] == "boolean"
    assert report["Partner"]["role"] == "boolean"
    assert report["Contract"]["role"] == "categorical"
    assert report["gender"]["role"] == "categorical"  # two values, but not yes/no
    assert telco_roles.dropped == []
    assert all(info["reason"] for info in report.values())


def test_boolean_keeps_the_tables_own_labels(telco_roles: RoleSet) -> None:
    columns = {column.name: column for column in telco_roles.features}
    assert (columns["Partner"].true_label, columns["Partner"].false_label) == ("Yes", "No")
    assert (columns["SeniorCitizen"].true_label, columns["SeniorCitizen"].false_label) == (1, 0)


def test_bank_roles(bank_roles: RoleSet) -> None:
    report = by_name(bank_roles)
    assert bank_roles.target.column == "Exited" and bank_roles.target.positive_label == "1"
    assert bank_roles.id_column == "CustomerId"
    dropped = {column.name: column.reason for column in bank_roles.dropped}
    assert dropped == {"RowNumber": "identifier", "Surname": "high_cardinality"}
    assert "mostly rare" in report["Surname"]["reason"]
    assert report["HasCrCard"]["role"] == "boolean"
    assert report["Balance"]["role"] == "numeric"
    assert report["EstimatedSalary"]["role"] == "numeric"  # unique floats are measurements, not ids
    assert report["Geography"]["role"] == "categorical"


def test_subscription_roles(subscription_roles: RoleSet) -> None:
    report = by_name(subscription_roles)
    assert subscription_roles.target.column == "churned" and subscription_roles.target.positive_label == "true"
    assert subscription_roles.id_column == "user_id"
    dropped = {column.name: column.reason for column in subscription_roles.dropped}
    assert dropped == {"region": "constant", "signup_date": "datetime"}
    assert report["monthly_fee"]["role"] == "numeric"
    assert report["avg_session_minutes"]["role"] == "numeric"  # "?" and "NA" are missing markers
    assert report["autopay"]["role"] == "boolean"
    assert report["country"]["role"] == "categorical"
    assert report["plan"]["role"] == "categorical"


def test_all_missing_and_unnamed_unique_text_columns() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "ref": [f"R{i:05d}x" for i in range(200)],  # unique text: becomes the id
            "token": [f"T{i * 7:06d}" for i in range(200)],  # a second unique text column: identifier
            "notes": ["", "NA"] * 100,
            "score": rng.normal(size=200).round(3),
            "label": ["churned", "stayed"] * 100,
        }
    ).astype(object)
    roles = roles_of(frame)
    assert roles.target.column == "label" and roles.target.positive_label == "churned"
    assert roles.id_column == "ref"
    assert {c.name: c.reason for c in roles.dropped} == {"token": "identifier", "notes": "all_missing"}


def test_numeric_text_with_a_few_unreadable_values_is_numeric() -> None:
    values = [f"{i},{i % 10}00" for i in range(1, 198)] + ["n/a?", "unknown", "?"]
    frame = pd.DataFrame({"spend": values, "Churn": ["Yes", "No"] * 100})
    report = roles_of(frame).report()
    assert report["spend"]["role"] == "numeric"
    assert "2 values that are not numbers" in report["spend"]["reason"]


def test_mostly_text_column_stays_categorical() -> None:
    frame = pd.DataFrame(
        {"id": range(200), "tier": ["gold", "silver", "3", "bronze"] * 50, "Churn": ["Yes", "No"] * 100}
    )
    assert roles_of(frame).report()["tier"]["role"] == "categorical"


def test_given_id_and_positive_label() -> None:
    frame = pd.DataFrame({"acct": list(range(100)), "x": [1.5, 2.5] * 50, "status": ["gone", "kept"] * 50})
    roles = roles_of(frame, target="status", positive_label="GONE", id_column="acct")
    assert roles.id_column == "acct" and roles.target.positive_label == "gone"
    assert "given with --positive-label" in roles.target.reason


def test_target_vector() -> None:
    frame, _ = clean_table(pd.DataFrame({"id": [1, 2, 3, 4], "Churn": ["Yes", "No", " Yes ", "No"]}))
    target = infer_target(frame, None, None)
    assert target_vector(frame["Churn"], target).tolist() == [1, 0, 1, 0]


@pytest.mark.parametrize(
    ("frame", "kwargs", "message"),
    [
        (pd.DataFrame({"a": [1, 2], "Churn": ["Yes", "No"]}), {"target": "churnn"}, r"not found \(did you mean: Churn"),
        (pd.DataFrame({"a": [1, 2], "Churn": ["No", "No"]}), {}, "one class only"),
        (pd.DataFrame({"a": [1, 2, 3], "y": ["a", "b", "c"]}), {"target": "y"}, "has 3 values"),
        (pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}), {}, "cannot tell which column is the churn target"),
        (pd.DataFrame({"churn": ["Yes", "No"], "Exited": [1, 0]}), {}, "several columns could be the target"),
        (pd.DataFrame({"a": [1, 2], "Churn": ["red", "blue"]}), {}, "cannot tell which value .* means churn"),
        (pd.DataFrame({"a": [1, 2], "Churn": ["Yes", "No"]}), {"positive_label": "1"}, "is not a value of"),
        (pd.DataFrame({"a": [None, None], "Churn": [None, "?"]}), {"target": "Churn"}, "has no values"),
    ],
)
def test_target_errors(frame: pd.DataFrame, kwargs: dict, message: str) -> None:
    cleaned, _ = clean_table(frame.astype(object))
    with pytest.raises(TrainingDataError, match=message):
        infer_target(cleaned, kwargs.get("target"), kwargs.get("positive_label"))


def test_unknown_id_column() -> None:
    frame, _ = clean_table(pd.DataFrame({"a": [1, 2], "Churn": ["Yes", "No"]}))
    target = infer_target(frame, None, None)
    with pytest.raises(TrainingDataError, match="id column 'customer' not found"):
        infer_feature_roles(frame, target, "customer")


def test_numbers_written_with_symbols_or_decimal_commas_are_numeric_and_say_so() -> None:
    rng = np.random.default_rng(0)
    n = 300
    fee = rng.uniform(5, 500, n)
    frame = pd.DataFrame(
        {
            "fee": [f"${value:,.2f}" for value in fee],
            "balance": [f"{value:.2f}".replace(".", ",") for value in fee * 40],
            "age": [str(value) for value in rng.integers(18, 90, n)],
            "Churn": np.where(fee + rng.normal(0, 100, n) > 250, "Yes", "No"),
        }
    )

    report = by_name(roles_of(frame))

    assert report["fee"]["role"] == report["balance"]["role"] == report["age"]["role"] == "numeric"
    assert "written as text" in report["fee"]["reason"] and "written as text" in report["balance"]["reason"]
    assert report["age"]["reason"] == "numeric"  # as every CSV column is: nothing to say about it


@pytest.mark.parametrize(
    ("name", "values", "churn_value"),
    [
        ("is_churn", [True, False], "True"),
        ("Churn Label", ["Yes", "No"], "Yes"),
        ("Attrition_Flag", ["Attrited Customer", "Existing Customer"], "Attrited Customer"),
        ("customerChurned", [1, 0], "1"),
    ],
)
def test_a_target_named_with_churn_words_and_its_churn_value_are_inferred(name, values, churn_value) -> None:
    rng = np.random.default_rng(1)
    n = 200
    frame = pd.DataFrame(
        {
            "tenure": rng.integers(0, 70, n),
            "plan": rng.choice(["basic", "premium"], n),
            name: rng.choice(values, n),
        }
    )

    target = infer_target(clean_table(frame)[0], None, None)

    assert (target.column, target.positive_label) == (name, churn_value)


def test_two_columns_with_churn_words_are_left_to_the_user() -> None:
    frame = pd.DataFrame({"churn_risk_flag": ["Yes", "No"] * 50, "is_churn": ["No", "Yes"] * 50, "x": range(100)})

    with pytest.raises(TrainingDataError, match="several columns could be the target"):
        infer_target(clean_table(frame)[0], None, None)


def test_target_labels_differing_only_in_case_are_one_label() -> None:
    rng = np.random.default_rng(2)
    n = 300
    spelled = rng.choice(["Yes", "yes", "YES", "No", "no"], n, p=[0.15, 0.08, 0.02, 0.5, 0.25])
    frame = pd.DataFrame({"monthly": rng.uniform(20, 120, n).round(4), "Churn": spelled})  # no duplicate rows

    cleaned = clean_table(frame)[0]
    assert len(cleaned) == n
    target = infer_target(cleaned, None, None)

    assert (target.positive_label, target.negative_label) == ("Yes", "No")
    expected = np.isin(spelled, ["Yes", "yes", "YES"]).astype(int)
    np.testing.assert_array_equal(target_vector(cleaned["Churn"], target), expected)


def test_unique_whole_numbers_named_as_references_are_identifiers_not_features() -> None:
    rng = np.random.default_rng(4)
    n = 600
    frame = pd.DataFrame(
        {
            "account_number": rng.integers(100_000, 1_000_000, n),  # seeded: no repeats among these 600
            "PhoneNo": rng.integers(10**9, 2 * 10**9, n),
            "balance": rng.integers(0, 10**6, n),  # as unique, but a measurement
            "Churn": rng.choice(["Yes", "No"], n),
        }
    )

    report = by_name(roles_of(frame))

    assert report["account_number"]["role"] == report["PhoneNo"]["role"] == "dropped (identifier)"
    assert report["balance"]["role"] == "numeric"


def test_a_category_seen_on_enough_rows_gets_its_own_column_on_a_large_table() -> None:
    rng = np.random.default_rng(0)
    n = 30_000
    reps = [f"rep{i:03d}" for i in range(150)]  # about 200 rows each: 0.7% of the table
    levels = rng.choice(reps, n).tolist()
    levels[:25] = ["rare-but-learnable"] * 25  # below 0.2% of the rows, above ROWS_TO_LEARN_A_CATEGORY
    levels[25:28] = ["too-rare"] * 3

    spec = fit_feature("sales_rep", "categorical", levels)

    assert set(reps) <= set(spec.encoded) and "rare-but-learnable" in spec.encoded
    assert "too-rare" not in spec.encoded and spec.other_bucket
    assert category_min_count(n) == ROWS_TO_LEARN_A_CATEGORY
    assert category_min_count(1_000) == 5  # small tables: 0.2% of rows, at least 5
