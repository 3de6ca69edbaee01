"""What a hostile or careless client can send: every answer a clear 4xx, bounded in size, never a 5xx."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

from bundle.records import EXCERPT_LENGTH, MAX_TEXT_LENGTH
from tests.conftest import API_KEY, customer_record

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def client(serve: Any, linear_models_dir: Path) -> Any:
    return serve(linear_models_dir, max_feedback_body_bytes=4096)


@pytest.fixture
def record(customers: pd.DataFrame) -> dict[str, Any]:
    return customer_record(customers, 3)


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_declared_as_json_is_415(client: Any, record: dict[str, Any], path: str, content_type: str | None):
    body = orjson.dumps(record if path == "/predict" else [record])
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]


def test_json_media_types_with_parameters_or_a_suffix_are_accepted(client: Any, record: dict[str, Any]):
    for content_type in ("application/json; charset=utf-8", "Application/JSON", "application/vnd.churn+json"):
        assert client.post("/predict", content=orjson.dumps(record), headers={"Content-Type": content_type}).is_success


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_a_compressed_body_is_415_naming_the_encoding(client: Any, record: dict[str, Any], path: str):
    body = gzip.compress(orjson.dumps(record if path == "/predict" else [record]))
    response = client.post(path, content=body, headers={**JSON, "Content-Encoding": "gzip"})
    assert response.status_code == 415
    assert "gzip" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_invalid_utf8_is_422_not_500(client: Any, record: dict[str, Any], path: str):
    broken = {**record, "customer_id": "BROKEN"}
    text = json.dumps(broken if path == "/predict" else [record, broken])
    body = text.encode().replace(b"BROKEN", b"BR\xffKEN")
    response = client.post(path, content=body, headers=JSON)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize("escaped", [False, True])
@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_an_object_repeating_a_key_is_422(client: Any, record: dict[str, Any], path: str, escaped: bool):
    text = json.dumps(record)
    repeated = text[:-1] + ', "tenure": 70}'
    if escaped:  # escapes in the text take the other check
        repeated = repeated.replace('"tenure": 70', '"tenure": 70, "customer_id": "a\\"b"')
    body = repeated if path == "/predict" else f"[{text}, {repeated}]"
    response = client.post(path, content=body.encode(), headers=JSON)
    assert response.status_code == 422
    assert "repeats a key" in response.json()["detail"][0]["msg"]
    # The same texts without the repetition are fine.
    clean = text if not escaped else text[:-1] + ', "customer_id": "a\\"b"}'
    assert client.post(path, content=(clean if path == "/predict" else f"[{clean}]").encode(), headers=JSON).is_success


def test_a_megabyte_of_text_in_a_field_is_refused_naming_it_and_echoing_an_excerpt(client, record):
    response = client.post("/predict", json={**record, "Contract": "x" * 1_000_000})
    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "Contract"] and str(MAX_TEXT_LENGTH) in problem["msg"]
    assert len(response.content) < 1000


def test_a_customer_id_longer_than_the_log_keeps_is_refused(client: Any, record: dict[str, Any]):
    response = client.post("/predict", json={**record, "customer_id": "c" * 300})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "string_too_long"


def test_a_large_batch_of_bad_records_answers_with_short_excerpts(client: Any, record: dict[str, Any]):
    bad = {**record, "tenure": "not a number " * 200, "Contract": "y" * 5000, **{f"extra_{i}": i for i in range(50)}}
    body = orjson.dumps([bad] * 500)
    response = client.post("/predict/batch", content=body, headers=JSON)
    assert response.status_code == 200 and response.json()["failed"] == 500
    assert len(response.content) < len(body) / 2  # every record's problems listed, none echoed whole
    first = response.json()["results"][0]["errors"]
    assert len(first) == 10 and first[-1]["type"] == "too_many_errors"
    assert all(len(str(problem["input"])) <= EXCERPT_LENGTH + 30 for problem in first)


def test_feedback_over_its_limit_is_413_before_the_key_is_checked(serve: Any, linear_models_dir: Path, tmp_path):
    database = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    client = serve(linear_models_dir, max_feedback_body_bytes=4096, monitoring_enabled=True, database_url=database)
    outcomes = [{"prediction_id": f"p{i}", "churned": True} for i in range(500)]
    response = client.post("/feedback", json={"outcomes": outcomes})  # no key
    assert response.status_code == 413
    small = client.post("/feedback", json={"outcomes": outcomes[:1]})
    assert small.status_code == 401  # within the limit, the key decides


def test_an_admin_call_with_a_large_body_is_413_before_the_key_is_checked(client: Any):
    response = client.post("/admin/reload", content=b"x" * 200_000, headers=JSON)
    assert response.status_code == 413
    assert client.post("/admin/reload", headers={"X-API-Key": "wrong"}).status_code == 401
    assert API_KEY  # the client is configured with a key, so a wrong one is 401
