"""GET /metadata: the served model and everything a client needs to build requests for it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api import PredictorDep
from app.api.errors import MessageOut, json_response
from app.api.schemas import feature_json_schema
from app.serving.challenger import describe_challenger
from app.serving.predictor import CUSTOMER_ID, Predictor, example_record
from bundle.redaction import redact_data

router = APIRouter(tags=["model"])


@router.get(
    "/metadata",
    summary="Model name, version, framework, feature schema, threshold, risk bands and training metrics",
    responses={503: {"model": MessageOut}},
)
async def metadata(request: Request, predictor: PredictorDep) -> Response:
    state = request.app.state
    described = describe(predictor)
    described["challenger"] = describe_challenger(state.challenger, state.routing, state.challenger_error)
    return json_response(described)


def describe(predictor: Predictor) -> dict[str, Any]:
    manifest, schema = predictor.manifest, predictor.schema
    return {
        "model": {
            "name": "churn",
            "version": manifest.version,
            "family": manifest.model_family,
            "framework": manifest.framework,
            "created_at": manifest.created_at,
            "libraries": manifest.libraries,
        },
        "threshold": manifest.threshold,
        "threshold_strategy": manifest.threshold_strategy,
        "calibration": manifest.calibration.method,
        "risk_bands": predictor.risk.bands,
        "playbook": predictor.risk.playbook,
        "top_reasons": predictor.top_reasons,
        "explanation_method": predictor.explainer.method,
        "explanation": predictor.explainer.describe(),
        "metrics": manifest.metrics,
        "performance_reference": manifest.performance_reference,
        "training": redact_data(manifest.training),  # a bundle trained elsewhere may record a password
        "inputs": [_feature(predictor, spec.name) for spec in schema.features],
        "id_field": CUSTOMER_ID,
        "id_column": schema.id_column,
        "target": schema.target,
        "ignored_columns": [{"name": column.name, "reason": column.reason} for column in schema.dropped],
        "example_request": example_record(schema),
        "outputs": [
            {"name": "churn_probability", "datatype": "FP64", "shape": [1]},
            {"name": "predicted_churn", "datatype": "BOOL", "shape": [1]},
            {"name": "risk_category", "datatype": "BYTES", "shape": [1]},
        ],
    }


def _feature(predictor: Predictor, name: str) -> dict[str, Any]:
    spec = predictor.schema[name]
    described: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind,
        "required": spec.required,
        "example": spec.example(),
        "json_schema": feature_json_schema(spec),
    }
    if spec.kind == "numeric":
        described.update(integer=spec.integer, minimum=spec.minimum, maximum=spec.maximum, lower_bound=spec.lower_bound)
    elif spec.kind == "boolean":
        described.update(true_label=spec.true_label, false_label=spec.false_label)
    else:
        described.update(categories=spec.categories)
    if spec.description:
        described["description"] = spec.description
    return described
