"""POST /predict and /predict/batch: responses, warnings, ids, and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bundle.features import clean_columns
from bundle.scoring import Scorer, load_raw_model
from bundle.store import current_bundle_dir, verify_bundle
from tests.conftest import CONSTANT_COLUMN, ID_COLUMN, TARGET, customer_record, fit_schema


@pytest.fixture
def client(serve: Any, linear_models_dir: Path) -> Any:
    return serve(linear_models_dir)


@pytest.fixture
def record(customers: pd.DataFrame) -> dict[str, Any]:
    return customer_record(customers, 3)


DECLARED_REQUIRED = ("tenure", "Contract", "Partner")
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def required_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A linear bundle whose training run declared tenure, Contract and Partner required."""
    from tests import conftest

    def fit_with_declared(frame: pd.DataFrame) -> Any:
        schema = fit_schema(frame)
        for name in DECLARED_REQUIRED:
            schema[name].required = True
        return schema

    models_dir = tmp_path_factory.mktemp("required") / "models"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conftest, "fit_schema", fit_with_declared)
        conftest.build_bundle(models_dir)
    return models_dir


def in_process_probability(models_dir: Path, record: dict[str, Any]) -> float:
    """The bundle's own prediction for a record, without the service: clean, encode, score."""
    bundle = current_bundle_dir(models_dir)
    manifest = verify_bundle(bundle)
    scorer = Scorer(load_raw_model(bundle, manifest), manifest.calibration)
    columns = clean_columns(manifest.schema, {name: [value] for name, value in record.items()})
    return float(scorer.predict_proba(manifest.schema.encode(columns, 1).matrix)[0])


def test_predict_returns_a_complete_explained_prediction(client: Any, record: dict[str, Any]) -> None:
    response = client.post("/predict", json={**record, "customer_id": "C-42"})

    assert response.status_code == 200
    body = response.json()
    assert body["customer_id"] == "C-42"
    assert 0.0 <= body["churn_probability"] <= 1.0
    assert body["predicted_churn"] == (body["churn_probability"] >= 0.4)  # the bundle's threshold
    expected_band = (
        "high" if body["churn_probability"] >= 0.6 else "medium" if body["churn_probability"] >= 0.3 else "low"
    )
    assert body["risk_category"] == expected_band
    assert body["recommended_actions"]
    assert body["model_version"] == client.get("/ready").json()["model_version"]
    assert body["warnings"] == []
    assert len(body["prediction_id"]) == 32
    for reason in body["top_reasons"]:
        assert reason["contribution"] > 0
        assert reason["feature"] in record


def test_served_probability_equals_the_in_process_bundle_prediction(
    client: Any, customers: pd.DataFrame, linear_models_dir: Path
) -> None:
    for row in range(0, 60, 7):
        record = customer_record(customers, row)
        served = client.post("/predict", json=record).json()["churn_probability"]
        assert served == pytest.approx(in_process_probability(linear_models_dir, record), abs=1e-9)


def test_top_reasons_are_the_largest_risk_raising_features(client: Any, record: dict[str, Any]) -> None:
    # Against the reference customer (median tenure, month-to-month), a one-month tenure raises the
    # risk in the synthetic table and a two-year contract lowers it, so only the first is a reason.
    reasons = client.post("/predict", json={**record, "Contract": "Two year", "tenure": 1}).json()["top_reasons"]

    contributions = [reason["contribution"] for reason in reasons]
    assert contributions == sorted(contributions, reverse=True)
    assert 1 <= len(reasons) <= 3
    features = {reason["feature"]: reason["value"] for reason in reasons}
    assert features["tenure"] == 1
    assert "Contract" not in features


def test_a_row_straight_from_the_training_table_is_accepted(
    client: Any, customers: pd.DataFrame, linear_models_dir: Path
) -> None:
    row = customer_record(customers, 5, drop_extra=False)
    assert {ID_COLUMN, TARGET, CONSTANT_COLUMN} <= set(row)

    body = client.post("/predict", json=row).json()

    assert body["customer_id"] == row[ID_COLUMN]
    assert body["churn_probability"] == pytest.approx(in_process_probability(linear_models_dir, row), abs=1e-9)


def test_missing_optional_value_and_unseen_category_still_predict_with_warnings(
    client: Any, record: dict[str, Any]
) -> None:
    record = {**record, "TotalCharges": " ", "PaymentMethod": "Crypto wallet"}

    response = client.post("/predict", json=record)

    assert response.status_code == 200
    warnings = response.json()["warnings"]
    assert any(w.startswith("TotalCharges: missing, imputed") for w in warnings)
    assert any(w.startswith("PaymentMethod: category not seen in training") for w in warnings)
    without_total = {k: v for k, v in record.items() if k != "TotalCharges"}
    assert client.post("/predict", json=without_total).json()["churn_probability"] == pytest.approx(
        response.json()["churn_probability"]
    )


def test_table_labels_and_plain_booleans_mean_the_same(client: Any, record: dict[str, Any]) -> None:
    as_labels = client.post("/predict", json={**record, "Partner": "Yes", "SeniorCitizen": 1}).json()
    as_booleans = client.post("/predict", json={**record, "Partner": True, "SeniorCitizen": True}).json()

    assert as_labels["churn_probability"] == as_booleans["churn_probability"]


def problems(response: Any) -> dict[tuple[Any, ...], str]:
    return {tuple(item["loc"]): item["type"] for item in response.json()["detail"]}


@pytest.mark.parametrize(
    ("change", "loc", "kind"),
    [
        ({"tenure": "twelve"}, ("body", "tenure"), "value_error"),
        ({"tenure": -3}, ("body", "tenure"), "value_error"),
        ({"MonthlyCharges": [1, 2]}, ("body", "MonthlyCharges"), "value_error"),
        ({"Partner": "maybe"}, ("body", "Partner"), "value_error"),
        ({"Contract": {"kind": "monthly"}}, ("body", "Contract"), "value_error"),
        ({"tenure": "1e999"}, ("body", "tenure"), "value_error"),
        ({"tenure": 2**63 - 1}, ("body", "tenure"), None),
        ({"favourite_colour": "blue"}, ("body", "favourite_colour"), "extra_forbidden"),
        ({"customer_id": {"nested": 1}}, ("body", "customer_id"), "string_type"),
    ],
)
def test_bad_fields_get_422_naming_the_field(
    client: Any, record: dict[str, Any], change: dict[str, Any], loc: tuple[str, ...], kind: str | None
) -> None:
    response = client.post("/predict", json={**record, **change})

    if kind is None:  # a legal value: huge but finite
        assert response.status_code == 200
        return
    assert response.status_code == 422
    assert problems(response)[loc] == kind


def test_numbers_beyond_what_json_parsing_supports_are_422(client: Any, record: dict[str, Any]) -> None:
    body = json.dumps(record).replace(f'"tenure": {record["tenure"]}', f'"tenure": {10**400}')

    response = client.post("/predict", content=body.encode(), headers=JSON)

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_missing_declared_required_fields_are_all_listed(
    serve: Any, required_models_dir: Path, record: dict[str, Any]
) -> None:
    client = serve(required_models_dir)
    del record["tenure"], record["Contract"]

    response = client.post("/predict", json={**record, "Partner": None})

    assert response.status_code == 422
    assert problems(response) == {
        ("body", "tenure"): "missing",
        ("body", "Contract"): "missing",
        ("body", "Partner"): "missing",
    }
    batch = client.post("/predict/batch", json=[record, {**record, "tenure": 5, "Contract": "One year"}]).json()
    assert (batch["succeeded"], batch["failed"]) == (1, 1)
    assert {tuple(error["loc"]) for error in batch["results"][0]["errors"]} == {
        ("body", 0, "tenure"),
        ("body", 0, "Contract"),
    }


@pytest.mark.parametrize("missing", ["absent", None, "", "  ", "N/A", "?"])
def test_a_feature_never_missing_in_training_is_imputed_when_missing(
    client: Any, linear_models_dir: Path, record: dict[str, Any], missing: Any
) -> None:
    """Every customer gets a score: only features declared required refuse a record."""
    schema = verify_bundle(current_bundle_dir(linear_models_dir)).schema
    assert schema["Contract"].missing_rate == 0.0 and not schema["Contract"].required  # training had no gaps
    body = {key: value for key, value in record.items() if key != "Contract"}
    if missing != "absent":
        body["Contract"] = missing

    single = client.post("/predict", json=body)
    batch = client.post("/predict/batch", json=[body, record]).json()

    assert single.status_code == 200
    expected = f"Contract: missing, imputed with the training value {schema['Contract'].impute!r}"
    assert expected in single.json()["warnings"]
    assert batch["failed"] == 0 and batch["results"][0]["warnings"] == single.json()["warnings"]
    imputed = {**record, "Contract": schema["Contract"].impute}
    assert single.json()["churn_probability"] == pytest.approx(
        client.post("/predict", json=imputed).json()["churn_probability"], abs=1e-12
    )


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"{not json", "json_invalid"),
        (b"", "missing"),
        (b"   ", "missing"),
        (b"[1, 2]", "dict_type"),
        (b"42", "dict_type"),
    ],
)
def test_malformed_or_empty_body_is_422(client: Any, body: bytes, kind: str) -> None:
    response = client.post("/predict", content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == kind


def test_oversize_body_is_413(serve: Any, linear_models_dir: Path, record: dict[str, Any]) -> None:
    client = serve(linear_models_dir, max_body_bytes=2048)

    response = client.post("/predict", json={**record, "customer_id": "x" * 5000})

    assert response.status_code == 413
    assert "2048" in response.json()["detail"]


def test_oversize_body_without_content_length_is_413(serve: Any, linear_models_dir: Path) -> None:
    client = serve(linear_models_dir, max_body_bytes=2048)

    def chunks() -> Any:
        for _ in range(10):
            yield b" " * 1024

    response = client.post("/predict", content=chunks(), headers={"Content-Type": "application/json"})

    assert response.status_code == 413


# ---- batch -------------------------------------------------------------------------------------------
def test_batch_scores_in_order_and_reports_bad_records_individually(
    client: Any, customers: pd.DataFrame, linear_models_dir: Path
) -> None:
    records = [customer_record(customers, row) for row in range(6)]
    records[2] = {**records[2], "tenure": -1, "customer_id": "bad-one"}
    records[4] = "not an object"

    response = client.post("/predict/batch", json=records)

    assert response.status_code == 200
    body = response.json()
    assert (body["count"], body["succeeded"], body["failed"]) == (6, 4, 2)
    results = body["results"]
    assert results[2] == {
        "index": 2,
        "customer_id": "bad-one",
        "errors": [
            {
                "type": "value_error",
                "loc": ["body", 2, "tenure"],
                "msg": "must be >= 0 (training data never went below it)",
                "input": -1,
            }
        ],
    }
    assert results[4]["errors"][0]["type"] == "dict_type"
    for row in (0, 1, 3, 5):
        assert results[row]["churn_probability"] == pytest.approx(
            in_process_probability(linear_models_dir, records[row]), abs=1e-9
        )
        assert "top_reasons" not in results[row]


def test_batch_results_equal_single_predictions_including_reasons(client: Any, customers: pd.DataFrame) -> None:
    records = [customer_record(customers, row) for row in range(10, 20)]

    batch = client.post("/predict/batch", params={"reasons": "true"}, json=records).json()["results"]

    for record, result in zip(records, batch, strict=True):
        single = client.post("/predict", json=record).json()
        assert result["churn_probability"] == pytest.approx(single["churn_probability"], abs=1e-12)
        assert result["top_reasons"] == single["top_reasons"]


@pytest.mark.parametrize(
    ("body", "kind"), [(b"[]", "too_short"), (b'{"tenure": 1}', "list_type"), (b"[{", "json_invalid")]
)
def test_batch_that_cannot_be_a_batch_is_422(client: Any, body: bytes, kind: str) -> None:
    response = client.post("/predict/batch", content=body, headers=JSON)

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == kind


def test_batch_over_the_limit_is_413(serve: Any, linear_models_dir: Path, record: dict[str, Any]) -> None:
    client = serve(linear_models_dir, max_batch_size=5)

    response = client.post("/predict/batch", json=[record] * 6)

    assert response.status_code == 413
    assert "maximum of 5" in response.json()["detail"]
    assert client.post("/predict/batch", json=[record] * 5).status_code == 200


def test_batch_reasons_flag_must_be_a_boolean(client: Any, record: dict[str, Any]) -> None:
    response = client.post("/predict/batch", params={"reasons": "perhaps"}, json=[record])

    assert response.status_code == 422


def test_configured_bands_playbook_and_reason_count_are_used(
    serve: Any, linear_models_dir: Path, record: dict[str, Any]
) -> None:
    client = serve(
        linear_models_dir,
        risk_bands={"calm": 0.0, "alarm": 0.000001},
        playbook={"alarm": ["Call today"]},
        top_reasons=1,
    )

    body = client.post("/predict", json=record).json()

    assert body["risk_category"] == "alarm"
    assert body["recommended_actions"] == ["Call today"]
    assert len(body["top_reasons"]) <= 1


def test_probabilities_match_for_a_random_sample_of_rows(
    client: Any, linear_models_dir: Path, customers: pd.DataFrame
) -> None:
    rows = np.random.default_rng(1).choice(len(customers), 40, replace=False)
    records = [customer_record(customers, int(row)) for row in rows]

    results = client.post("/predict/batch", json=records).json()["results"]

    served = [result["churn_probability"] for result in results]
    expected = [in_process_probability(linear_models_dir, record) for record in records]
    np.testing.assert_allclose(served, expected, atol=1e-9)


def test_prediction_ids_are_unique_and_ordered_by_time() -> None:
    import time

    from app.serving.ids import new_prediction_ids

    first = new_prediction_ids(3)
    time.sleep(0.002)
    second = new_prediction_ids(1)
    ids = first + second
    assert len(set(ids)) == 4 and all(len(value) == 32 and int(value, 16) >= 0 for value in ids)
    assert ids == sorted(ids)  # the log's primary-key index grows at its end
    assert {value[12:24] for value in ids} == {first[0][12:24]}  # one tag per process


def test_prediction_ids_keep_eight_sequence_digits_when_the_sequence_wraps() -> None:
    from app.serving.ids import PredictionIds

    ids = PredictionIds(start=0xFFFF_FFFE)
    wrapped = ids.take(4)
    plain = ids.take(3)

    assert all(len(value) == 32 for value in wrapped + plain)
    assert [value[24:] for value in wrapped] == ["fffffffe", "ffffffff", "00000000", "00000001"]
    assert [value[24:] for value in plain] == ["00000002", "00000003", "00000004"]


def test_a_later_batch_with_new_or_odd_values_in_known_columns_is_still_checked_field_by_field(
    client: Any, customers: pd.DataFrame
) -> None:
    """After one batch, known category texts are looked up in one pass; anything else still gets its own answer."""
    records = [customer_record(customers, row) for row in range(40)]
    assert client.post("/predict/batch", json=records).json()["failed"] == 0  # the texts are now known
    later = [dict(record) for record in records]
    later[1]["Contract"] = ["Month-to-month"]  # unhashable: a list is not a category
    later[2]["Contract"] = "Three year"  # a new text: unseen, imputed like in training, with a warning
    later[3]["Partner"] = None  # not declared required: imputed, with a warning
    later[4]["Contract"] = " Two year "  # spacing is cleaned as in training
    later[5]["TotalCharges"] = None  # optional: imputed, with a warning

    results = client.post("/predict/batch", json=later).json()["results"]

    assert results[1]["errors"][0]["loc"] == ["body", 1, "Contract"]
    assert any("Contract" in warning for warning in results[2]["warnings"])
    assert any(warning.startswith("Partner: missing") for warning in results[3]["warnings"])
    assert any("TotalCharges" in warning for warning in results[5]["warnings"])
    single = client.post("/predict", json={**records[4], "Contract": "Two year"}).json()
    assert results[4]["churn_probability"] == pytest.approx(single["churn_probability"], abs=1e-12)
    assert all("churn_probability" in results[row] for row in [2, *range(3, 40)])


# ---- one cleaning path for one record and for many ------------------------------------------------
@pytest.fixture(scope="module")
def predictor(linear_models_dir: Path) -> Any:
    from app.serving.predictor import build_predictor
    from app.settings import Settings

    return build_predictor(Settings(model_dir=linear_models_dir))


def test_a_batch_of_odd_values_predicts_as_each_record_does_alone(predictor: Any, customers: pd.DataFrame) -> None:
    """Ids both ways, omitted and blank values, an unseen category, table-only columns, numbers as text,
    labels and booleans: each record of a batch is cleaned, scored and explained as it is alone."""
    records = [customer_record(customers, row, drop_extra=False) for row in range(30)]
    records[0]["customer_id"] = "wins-over-the-table-id"
    records[1].pop(ID_COLUMN)
    records[2]["customer_id"] = 12345
    records[3].pop("TotalCharges")
    records[4]["TotalCharges"] = " "
    records[5]["Contract"] = "Three year"
    records[6]["MonthlyCharges"] = 70
    records[7]["Partner"] = True
    records[8]["Contract"] = records[8]["Contract"].upper()
    for row, text in enumerate(["29.85", "-0", ".5", "5.", "1e3", "+7", " 12 ", "$3", "1,234.5"], start=10):
        records[row]["TotalCharges"] = text
    records[20]["SeniorCitizen"] = True
    records[21]["SeniorCitizen"] = "1"

    batch = predictor.predict_records(records, explain=True)
    alone = [predictor.predict_records([record], explain=True) for record in records]

    assert not batch.errors
    for row, single in enumerate(alone):
        assert batch.scored.probabilities[row] == pytest.approx(single.scored.probabilities[0], abs=1e-12)
        assert batch.scored.warnings[row] == single.scored.warnings[0]
        reasons, single_reasons = batch.scored.reasons[row], single.scored.reasons[0]
        assert [(r["feature"], r["value"]) for r in reasons] == [(r["feature"], r["value"]) for r in single_reasons]
        assert [r["contribution"] for r in reasons] == pytest.approx([r["contribution"] for r in single_reasons])
        assert batch.scored.customer_ids[row] == single.scored.customer_ids[0]
        assert {name: values[row] for name, values in batch.event.columns.items()} == {
            name: values[0] for name, values in single.event.columns.items()
        }
    assert batch.scored.customer_ids[:3] == ["wins-over-the-table-id", None, "12345"]
    assert batch.event.columns["TotalCharges"][10:19] == [29.85, 0.0, 0.5, 5.0, 1000.0, 7.0, 12.0, 3.0, 1234.5]
    assert batch.event.columns["Contract"][8] == customer_record(customers, 8)["Contract"]
    assert batch.scored.warnings[5] and batch.scored.warnings[3]


def test_errors_in_a_batch_are_listed_per_record_in_field_order(predictor: Any, customers: pd.DataFrame) -> None:
    records = [customer_record(customers, row) for row in range(5)]
    records[1] = {"surprise": 1, **records[1], "tenure": "twelve", "customer_id": [1]}
    records[3] = ["not", "an", "object"]

    outcome = predictor.predict_records(records)

    assert outcome.scored.indices == [0, 2, 4]
    assert [error.index for error in outcome.errors] == [1, 3]
    assert [(error.loc, error.type) for error in outcome.errors[0].errors] == [
        (("surprise",), "extra_forbidden"),
        (("tenure",), "value_error"),
        (("customer_id",), "string_type"),
    ]
    assert outcome.errors[1].errors[0].type == "dict_type"
    assert len(outcome.event.prediction_ids) == 3


def test_a_batch_with_an_unknown_field_is_answered_record_by_record(client: Any, customers: pd.DataFrame) -> None:
    records = [customer_record(customers, row) for row in range(4)]
    records[2] = {**records[2], "surprise": 1}

    body = client.post("/predict/batch", json=records).json()

    assert (body["count"], body["succeeded"], body["failed"]) == (4, 3, 1)
    assert body["results"][2]["errors"][0]["loc"] == ["body", 2, "surprise"]


def test_a_single_record_event_carries_its_cleaned_columns_to_the_log(predictor: Any, record: dict[str, Any]) -> None:
    from app.monitoring.log_store import event_rows

    event = predictor.predict_records([{**record, "TotalCharges": " "}]).event

    assert list(event.columns) == predictor.schema.names
    [logged] = event_rows(event, None)
    assert json.loads(logged[4]) == {name: values[0] for name, values in event.columns.items()}
    assert json.loads(logged[4])["TotalCharges"] is None  # missing stays missing in the log
    assert event.imputed == [(0, "TotalCharges")]


@pytest.mark.parametrize("huge", [2e19, 1e300, 10**30])
def test_a_huge_whole_number_is_scored_and_shown_without_a_server_error(
    client: Any, predictor: Any, record: dict[str, Any], huge: Any
) -> None:
    body = {**record, "tenure": huge}

    assert client.post("/predict", json=body).status_code == 200
    batch = client.post("/predict/batch", params={"reasons": "true"}, json=[body, record])
    assert batch.status_code == 200 and batch.json()["failed"] == 0
    assert predictor.display_value("tenure", float(huge)) == float(huge)  # no longer exact as a whole number
    assert predictor.display_value("tenure", 12.0) == 12


def test_an_integer_too_large_for_a_float_is_a_422_in_a_batch_as_in_a_single_call(
    client: Any, record: dict[str, Any]
) -> None:
    digits = "1" + "0" * 400
    body = json.dumps({**record, "MonthlyCharges": 0}).replace('"MonthlyCharges": 0', f'"MonthlyCharges": {digits}')

    single = client.post("/predict", content=body, headers={"content-type": "application/json"})
    batch = client.post("/predict/batch", content=f"[{body}]", headers={"content-type": "application/json"})

    assert single.status_code == 422 and batch.status_code == 422
    assert batch.json()["detail"][0]["type"] == single.json()["detail"][0]["type"] == "json_invalid"


def test_a_number_outside_the_training_range_is_scored_with_a_warning(
    client: Any, record: dict[str, Any], linear_models_dir: Path
) -> None:
    spec = verify_bundle(current_bundle_dir(linear_models_dir)).schema["MonthlyCharges"]
    far = {**record, "MonthlyCharges": spec.maximum * 50}

    single = client.post("/predict", json=far).json()
    batch = client.post("/predict/batch", params={"reasons": "true"}, json=[far, record]).json()["results"]

    expected = f"MonthlyCharges: outside the training range ({spec.minimum:g} to {spec.maximum:g})"
    assert any(warning.startswith(expected) for warning in single["warnings"])
    assert batch[0]["warnings"] == single["warnings"] and batch[1]["warnings"] == []
    assert batch[0]["churn_probability"] == pytest.approx(single["churn_probability"], abs=1e-12)
    assert client.post("/predict", json=record).json()["warnings"] == []


def test_out_of_range_numbers_reach_monitoring_by_row_and_feature(predictor: Any, record: dict[str, Any]) -> None:
    far = {**record, "MonthlyCharges": 1e9}

    assert predictor.predict_records([far]).event.out_of_range == [(0, "MonthlyCharges")]
    assert predictor.predict_records([record, far, record]).event.out_of_range == [(1, "MonthlyCharges")]
    assert predictor.predict_records([record]).event.out_of_range == []
