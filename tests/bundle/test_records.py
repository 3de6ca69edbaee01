"""The record cleaner: records by column, the schema's rules, field-level errors in input order."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundle.features import FeatureSchema, FeatureValueError, clean_columns, fit_feature
from bundle.records import CLEAN_CACHE_SIZE, EXCERPT_LENGTH, MAX_ERRORS_PER_RECORD, MAX_TEXT_LENGTH, RecordCleaner


def schema_of(required: tuple[str, ...] = ()) -> FeatureSchema:
    rng = np.random.default_rng(0)
    n = 300
    specs = [
        fit_feature("tenure", "numeric", [float(x) for x in rng.integers(0, 72, n)], required="tenure" in required),
        fit_feature("balance", "numeric", [float(x) for x in rng.normal(0, 50, n)], required="balance" in required),
        fit_feature("plan", "categorical", rng.choice(["Basic", "Premium", "Gold"], n).tolist()),
        fit_feature("partner", "boolean", [bool(x) for x in rng.integers(0, 2, n)], true_label="Yes", false_label="No"),
    ]
    return FeatureSchema(specs, target="Churn", positive_label="Yes", id_column="customerID")


def record(**changes: Any) -> dict[str, Any]:
    return {"tenure": 12, "balance": -3.5, "plan": "Basic", "partner": "Yes", **changes}


def test_valid_records_come_out_by_column_in_schema_order() -> None:
    cleaner = RecordCleaner(schema_of())

    batch, errors = cleaner.clean([record(customer_id="a"), record(plan=" premium ", tenure="7", customerID=9)])

    assert errors == []
    assert batch.indices == [0, 1]
    assert batch.customer_ids == ["a", "9"]
    assert batch.columns == {
        "tenure": [12.0, 7.0],
        "balance": [-3.5, -3.5],
        "plan": ["Basic", "Premium"],
        "partner": [True, True],
    }


def test_a_missing_feature_is_none_unless_declared_required() -> None:
    optional = RecordCleaner(schema_of())
    declared = RecordCleaner(schema_of(required=("tenure",)))
    records = [
        record(tenure=None),
        {key: value for key, value in record().items() if key != "tenure"},
        record(tenure=""),
    ]

    batch, errors = optional.clean(records)
    refused_batch, refused = declared.clean(records)

    assert errors == [] and batch.columns["tenure"] == [None, None, None]
    assert len(refused_batch) == 0
    assert [(error.index, [(e.loc, e.type, e.msg) for e in error.errors]) for error in refused] == [
        (0, [(("tenure",), "missing", "A value is required (this feature is declared required)")]),
        (1, [(("tenure",), "missing", "Field required")]),
        (2, [(("tenure",), "missing", "A value is required (this feature is declared required)")]),
    ]


def test_each_bad_record_gets_all_its_field_errors_and_the_others_are_kept() -> None:
    cleaner = RecordCleaner(schema_of())
    records = [
        record(),
        {"colour": "blue", **record(tenure=-1, plan=["Basic"]), "customer_id": {"x": 1}},
        "not an object",
        record(partner="maybe", Churn="Yes"),
        record(customer_id="last"),
    ]

    batch, errors = cleaner.clean(records)

    assert batch.indices == [0, 4] and batch.customer_ids == [None, "last"]
    assert [error.index for error in errors] == [1, 2, 3]
    assert [(e.loc, e.type) for e in errors[0].errors] == [
        (("colour",), "extra_forbidden"),
        (("tenure",), "value_error"),
        (("plan",), "value_error"),
        (("customer_id",), "string_type"),
    ]
    assert errors[0].errors[1].msg == "must be >= 0 (training data never went below it)"
    assert errors[0].errors[1].input == -1
    assert [(e.loc, e.type) for e in errors[1].errors] == [((), "dict_type")]
    assert [(e.loc, e.type) for e in errors[2].errors] == [(("partner",), "value_error")]  # the target is ignored
    assert errors[2].to_dict(("body",))["errors"][0]["loc"] == ["body", 3, "partner"]


def test_one_record_and_a_batch_take_the_same_rules() -> None:
    cleaner = RecordCleaner(schema_of())
    records = [record(tenure=t, plan=p) for t, p in [(1, "Gold"), ("2", "GOLD"), (3.0, " gold "), (True, "New")]]

    batch, _ = cleaner.clean(records)
    alone = [cleaner.clean([one])[0].columns for one in records]

    for row, columns in enumerate(alone):
        assert {name: values[row] for name, values in batch.columns.items()} == {
            name: values[0] for name, values in columns.items()
        }


RAW_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", " ", "NA", "?", "Yes", "no", "1", "0", "1.0", "Basic", "PREMIUM", " Gold ", "$3", "1,234.5"]),
    st.text(max_size=6),
    st.lists(st.integers(), max_size=2),
)


@given(st.lists(RAW_VALUES, min_size=1, max_size=30))
@settings(max_examples=300, deadline=None)
def test_a_column_cleans_as_its_values_do_one_by_one(values: list[Any]) -> None:
    """Distinct-value caching and numpy passes give exactly what the rules give each value alone."""
    schema = schema_of()
    cleaner = RecordCleaner(schema)
    for column_cleaner, name in zip(cleaner.columns, schema.names, strict=True):
        cleaned, invalid, missing = column_cleaner.clean(values)
        assert missing == any(value is None for position, value in enumerate(cleaned) if position not in invalid)
        for position, value in enumerate(values):
            try:
                expected = schema.clean_value(name, value)
            except FeatureValueError:
                assert position in invalid and cleaned[position] is None
                continue
            assert position not in invalid
            assert cleaned[position] == expected and type(cleaned[position]) is type(expected)


def test_more_distinct_values_than_the_cache_holds_still_clean_correctly() -> None:
    cleaner = RecordCleaner(schema_of())
    texts = [f"{value}.5" for value in range(CLEAN_CACHE_SIZE * 2 + 7)]

    for _ in range(2):
        batch, errors = cleaner.clean([record(tenure=text) for text in texts])
        assert errors == [] and batch.columns["tenure"] == [value + 0.5 for value in range(len(texts))]


def test_clean_columns_treats_unreadable_values_as_missing() -> None:
    schema = schema_of()

    cleaned = clean_columns(schema, {"tenure": ["3", "three", None, -1], "plan": ["basic", [1], "Zinc", "NA"]})

    assert cleaned == {"tenure": [3.0, None, None, None], "plan": ["Basic", None, "Zinc", None]}


@pytest.mark.parametrize("missing", [None, "absent"])
def test_a_feature_never_missing_in_training_is_imputed_with_a_warning(missing: Any) -> None:
    schema = schema_of()
    assert schema["plan"].missing_rate == 0.0 and not schema["plan"].missing_indicator
    cleaner = RecordCleaner(schema)
    raw = record() if missing != "absent" else {key: value for key, value in record().items() if key != "plan"}
    if missing is None:
        raw["plan"] = None

    batch, errors = cleaner.clean([raw])
    encoded = schema.encode(batch.columns, 1)
    typical = schema.encode(
        clean_columns(schema, {name: [value] for name, value in record(plan=schema["plan"].impute).items()}), 1
    )

    assert errors == []
    assert encoded.imputed == [(0, "plan")]
    assert encoded.warnings == [[f"plan: missing, imputed with the training value {schema['plan'].impute!r}"]]
    np.testing.assert_array_equal(encoded.matrix, typical.matrix)


def test_text_over_the_limit_is_refused_with_the_field_named_and_only_an_excerpt_echoed() -> None:
    cleaner = RecordCleaner(schema_of())
    long_text = "x" * 1_000_000
    for records in ([record(plan=long_text)], [record(plan=long_text), record(plan="y" * (MAX_TEXT_LENGTH + 1))]):
        batch, errors = cleaner.clean(records)
        assert len(batch) == 0 and len(errors) == len(records)
        problem = errors[0].to_dict(("body",))["errors"][0]
        assert problem["loc"] == ["body", 0, "plan"] and "over the limit" in problem["msg"]
        assert len(problem["input"]) < EXCERPT_LENGTH + 40 and len(problem["msg"]) < 200
    assert cleaner.clean([record(plan="p" * MAX_TEXT_LENGTH)])[1] == []  # at the limit: an unseen category


def test_customer_ids_over_the_limit_are_refused() -> None:
    cleaner = RecordCleaner(schema_of())
    batch, errors = cleaner.clean([record(customer_id="c" * (MAX_TEXT_LENGTH + 1)), record(customer_id="ok")])
    assert batch.customer_ids == ["ok"]
    assert [(e.loc, e.type) for e in errors[0].errors] == [(("customer_id",), "string_too_long")]


def test_a_record_with_many_problems_lists_the_first_and_counts_the_rest() -> None:
    cleaner = RecordCleaner(schema_of())
    unknown = {f"field_{i}": i for i in range(1000)}
    _, errors = cleaner.clean([record(**unknown)])
    listed = errors[0].to_dict()["errors"]
    assert len(listed) == MAX_ERRORS_PER_RECORD
    assert listed[-1]["msg"] == f"and {1000 - MAX_ERRORS_PER_RECORD + 1} more problems"
    assert len(errors[0].errors) == 1000  # every problem is still known to the caller


RECORD_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "tenure": RAW_VALUES,
        "balance": RAW_VALUES,
        "plan": RAW_VALUES,
        "partner": RAW_VALUES,
        "customer_id": st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=3), st.just("c" * 300)),
        "customerID": st.one_of(st.none(), st.integers(), st.text(max_size=3)),
        "surprise": st.integers(),
    },
)


@given(RECORD_VALUES)
@settings(max_examples=300, deadline=None)
def test_a_record_alone_cleans_exactly_as_in_a_batch(one: dict[str, Any]) -> None:
    """A single record takes a value-by-value path; it must agree with the column path in every case."""
    cleaner = RecordCleaner(schema_of(required=("tenure",)))
    alone_batch, alone_errors = cleaner.clean([one])
    batch, errors = cleaner.clean([one, record()])
    assert [error.to_dict() for error in alone_errors] == [error.to_dict() for error in errors]
    if alone_errors:
        assert len(alone_batch) == 0
        return
    assert alone_batch.customer_ids == batch.customer_ids[:1]
    for name, values in batch.columns.items():
        assert alone_batch.columns[name] == values[:1]
        assert type(alone_batch.columns[name][0]) is type(values[0])
