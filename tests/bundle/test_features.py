"""The shared feature definition: cleaning rules, fitting, encoding and persistence."""

import math

import numpy as np
import pytest

from bundle.features import (
    OTHER_CATEGORY,
    FeatureSchema,
    FeatureValueError,
    clean_boolean,
    clean_category,
    clean_columns,
    clean_numeric,
    fit_feature,
    is_missing,
)


@pytest.mark.parametrize("value", [None, "", "  ", "?", "NA", "n/a", "null", "None", float("nan"), "#N/A"])
def test_missing_markers_are_missing(value):
    assert is_missing(value)
    assert clean_numeric(value) is None
    assert clean_category(value) is None
    assert clean_boolean(value) is None


@pytest.mark.parametrize(
    ("raw", "expected"), [("29.85", 29.85), (" 1,234.5 ", 1234.5), ("$12.50", 12.5), (7, 7.0), ("45%", 45.0)]
)
def test_clean_numeric_reads_numbers_written_as_text(raw, expected):
    assert clean_numeric(raw) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("174514,0", 174514.0),  # decimal commas, as European spreadsheets export them
        ("99931,12", 99931.12),
        ("€ 12,50", 12.5),
        ("1.234,50", 1234.5),
        ("-1.234,5", -1234.5),
        ("1 234 567,89", 1234567.89),
        ("1,234", 1234.0),  # three digits after a lone comma: thousands
        ("1,234,567.89", 1234567.89),
        ("1.234.567", 1234567.0),
    ],
)
def test_clean_numeric_reads_thousands_separators_and_decimal_commas(raw, expected):
    assert clean_numeric(raw) == pytest.approx(expected)


@pytest.mark.parametrize("raw", ["abc", "12..5", [1], float("inf"), "1,2,3", "1.2.3", "1,23.4"])
def test_clean_numeric_rejects_what_is_not_a_number(raw):
    with pytest.raises(FeatureValueError):
        clean_numeric(raw)


def test_clean_category_canonicalises_numbers_and_whitespace():
    assert clean_category(" Fiber optic ") == "Fiber optic"
    assert clean_category(3.0) == "3"
    assert clean_category(3) == "3"
    with pytest.raises(FeatureValueError):
        clean_category({"a": 1})


@pytest.mark.parametrize(("raw", "expected"), [("Yes", True), ("no", False), (1, True), (0.0, False), ("TRUE", True)])
def test_clean_boolean_tokens(raw, expected):
    assert clean_boolean(raw) is expected


def test_clean_boolean_rejects_other_values():
    with pytest.raises(FeatureValueError, match="yes/no"):
        clean_boolean("maybe")


def _schema(rng: np.random.Generator, n: int = 400) -> tuple[FeatureSchema, dict]:
    tenure = rng.integers(0, 72, n).astype(float)
    charges = [None if i % 50 == 0 else float(x) for i, x in enumerate(rng.gamma(2.0, 40.0, n))]
    contract = rng.choice(["Month-to-month", "One year", "Two year"], n, p=[0.55, 0.25, 0.2]).tolist()
    contract[0] = "Rare plan"  # a value too rare for its own column
    partner = rng.choice(["Yes", "No"], n).tolist()
    columns = {"tenure": list(tenure), "charges": charges, "contract": contract, "partner": partner}
    specs = [
        fit_feature("tenure", "numeric", columns["tenure"], required=True),
        fit_feature("charges", "numeric", columns["charges"]),
        fit_feature("contract", "categorical", columns["contract"]),
        fit_feature("partner", "boolean", [clean_boolean(v) for v in partner], true_label="Yes", false_label="No"),
    ]
    return FeatureSchema(specs, target="Churn", positive_label="Yes", id_column="customerID"), columns


def test_fit_learns_imputation_caps_and_layout():
    schema, _ = _schema(np.random.default_rng(0))
    charges = schema["charges"]
    assert not charges.required and charges.missing_indicator
    assert charges.lower_bound == 0.0 and charges.cap_low <= charges.cap_high
    assert schema["tenure"].integer and schema["tenure"].required  # declared
    assert not schema["contract"].required  # never missing in training, yet not declared
    contract = schema["contract"]
    assert "Rare plan" in contract.categories and "Rare plan" not in contract.encoded
    assert schema.encoded_names()[-2:] == [f"contract={OTHER_CATEGORY}", "partner"]
    assert schema.n_encoded == len(schema.encoded_names())


def test_encoded_training_numerics_are_standardised():
    schema, columns = _schema(np.random.default_rng(1))
    result = schema.encode(clean_columns(schema, columns), len(columns["tenure"]))
    assert result.matrix.shape == (400, schema.n_encoded)
    for name in ("tenure", "charges"):
        column = result.matrix[:, schema.encoded_names().index(name)]
        assert abs(column.mean()) < 1e-9
        assert column.std() == pytest.approx(1.0, rel=1e-6)


def test_missing_and_unseen_values_are_imputed_with_warnings():
    schema, _ = _schema(np.random.default_rng(2))
    columns = {"tenure": [12.0], "charges": [None], "contract": ["Lifetime"], "partner": [None]}
    result = schema.encode(columns, 1)
    names = schema.encoded_names()
    assert result.matrix[0, names.index(f"contract={OTHER_CATEGORY}")] == 1.0
    assert result.matrix[0, names.index("charges__missing")] == 1.0
    assert {feature for _, feature in result.imputed} == {"charges", "partner"}
    assert result.unseen == [(0, "contract")]
    assert any("not seen in training" in w for w in result.warnings[0])


def test_outliers_are_capped_to_the_training_fences():
    schema, _ = _schema(np.random.default_rng(3))
    spec = schema["charges"]
    huge = schema.encode({"tenure": [1.0], "charges": [1e9], "contract": ["One year"], "partner": [True]}, 1)
    at_cap = schema.encode(
        {"tenure": [1.0], "charges": [spec.cap_high], "contract": ["One year"], "partner": [True]}, 1
    )
    np.testing.assert_array_equal(huge.matrix, at_cap.matrix)


def test_clean_value_applies_lower_bound_and_table_labels():
    schema, _ = _schema(np.random.default_rng(4))
    with pytest.raises(FeatureValueError, match=">= 0"):
        schema.clean_value("tenure", -3)
    assert schema.clean_value("partner", "Yes") is True
    assert schema.clean_value("partner", "No") is False
    assert schema.clean_value("partner", True) is True
    assert schema.clean_value("charges", " ") is None


def test_one_record_encodes_like_the_same_row_in_a_frame():
    """Serving encodes one record at a time; training whole columns. Both must agree exactly."""
    schema, columns = _schema(np.random.default_rng(5))
    frame = schema.encode(clean_columns(schema, columns), 400).matrix
    for row in (0, 7, 123, 399):
        record = {name: [schema.clean_value(name, columns[name][row])] for name in schema.names}
        np.testing.assert_array_equal(schema.encode(record, 1).matrix[0], frame[row])


def test_schema_round_trips_through_json_dict():
    schema, columns = _schema(np.random.default_rng(6))
    restored = FeatureSchema.from_dict(schema.to_dict())
    cleaned = clean_columns(schema, columns)
    np.testing.assert_array_equal(restored.encode(cleaned, 400).matrix, schema.encode(cleaned, 400).matrix)


def test_schema_with_inconsistent_layout_is_refused():
    schema, _ = _schema(np.random.default_rng(7))
    data = schema.to_dict()
    data["encoded_names"] = data["encoded_names"][:-1]
    with pytest.raises(ValueError, match="inconsistent"):
        FeatureSchema.from_dict(data)


def test_skewed_non_negative_feature_is_log_transformed():
    rng = np.random.default_rng(8)
    spec = fit_feature("balance", "numeric", list(rng.lognormal(3, 1.5, 1000)))
    assert spec.log_transform
    assert not math.isnan(spec.mean)


def test_category_spellings_that_differ_only_in_case_are_one_category():
    values = ["Premium"] * 30 + ["premium"] * 10 + ["PREMIUM"] * 5 + ["Basic"] * 40 + ["basic"] * 20
    spec = fit_feature("plan", "categorical", values)
    schema = FeatureSchema([spec], target="Churn", positive_label="Yes")

    assert spec.categories == ["Basic", "Premium"] and spec.impute == "Basic"  # 60 of any case against 45
    assert schema.clean_value("plan", " pReMiUm ") == "Premium"
    assert schema.clean_value("plan", "basic") == "Basic"
    assert schema.clean_value("plan", "Gold") == "Gold"  # unseen stays unseen (and is reported as such)
    encoded = schema.encode({"plan": [schema.clean_value("plan", v) for v in ("PREMIUM", "Premium")]}, 2)
    np.testing.assert_array_equal(encoded.matrix[0], encoded.matrix[1])
    assert not encoded.unseen


def test_a_bundle_whose_categories_differ_only_in_case_keeps_reading_them_exactly():
    spec = fit_feature("plan", "categorical", ["x"] * 10)
    spec.categories, spec.encoded = ["Premium", "premium"], ["Premium", "premium"]  # as fitted before merging
    schema = FeatureSchema([spec], target="Churn", positive_label="Yes")

    assert schema.clean_value("plan", "premium") == "premium"
    assert schema.clean_value("plan", "PREMIUM") == "PREMIUM"  # ambiguous: not guessed
