"""The API against its own OpenAPI document: generated requests never get a 5xx, responses match it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from app.main import create_app
from tests.conftest import API_KEY, service_settings

SERVICE_PATHS = {"/predict", "/predict/batch", "/metadata", "/health", "/ready", "/admin/reload"}


@pytest.fixture(scope="module")
def running_client(linear_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    database = tmp_path_factory.mktemp("openapi") / "predictions.sqlite3"
    settings = service_settings(linear_models_dir, monitoring_enabled=True, database_url=f"sqlite:///{database}")
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def api_schema(running_client: TestClient) -> Any:
    return schemathesis.openapi.from_dict(running_client.get("/openapi.json").json())


def test_the_documented_request_schema_is_the_bundles(running_client: TestClient) -> None:
    document = running_client.get("/openapi.json").json()
    record = document["components"]["schemas"]["CustomerRecord"]
    metadata = running_client.get("/metadata").json()

    features = {item["name"]: item for item in metadata["inputs"]}
    assert set(features) <= set(record["properties"])
    assert set(record["required"]) == {name for name, item in features.items() if item["required"]}
    assert record["additionalProperties"] is False
    assert record["properties"]["tenure"]["minimum"] == 0
    assert record["properties"]["Contract"]["x-known-categories"] == ["Month-to-month", "One year", "Two year"]
    assert record["properties"]["Partner"]["anyOf"][1]["enum"] == ["Yes", "No"]
    single = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert single["example"] == metadata["example_request"]
    batch = document["paths"]["/predict/batch"]["post"]["requestBody"]["content"]["application/json"]
    assert batch["schema"]["maxItems"] == 10_000


def test_the_documented_example_is_accepted(running_client: TestClient) -> None:
    document = running_client.get("/openapi.json").json()
    example = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["example"]

    assert running_client.post("/predict", json=example).status_code == 200


def test_generated_requests_never_get_a_server_error(api_schema: Any, running_client: TestClient) -> None:
    """Every operation, with requests generated from the document: no 5xx, documented statuses and bodies."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {operation.path for operation in operations} >= {"/predict", "/predict/batch", "/metadata", "/admin/reload"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call_and_check(case: Any) -> None:
            kwargs = case.as_transport_kwargs(headers={"X-API-Key": API_KEY})
            response = running_client.request(
                kwargs["method"],
                case.formatted_path,
                params=kwargs.get("params"),
                headers=kwargs.get("headers"),
                json=kwargs.get("json", None),
                content=kwargs.get("data") if "json" not in kwargs else None,
            )
            # Every endpoint must avoid 5xx; the prediction service's own endpoints must also
            # answer only with documented statuses and bodies.
            checks = [not_a_server_error]
            if case.path in SERVICE_PATHS:
                checks += [status_code_conformance, response_schema_conformance]
            case.validate_response(response, checks=checks)

        call_and_check()
