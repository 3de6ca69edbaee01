"""Request and response schemas, generated from the loaded bundle's feature schema.

Requests are validated by the predictor with the schema's own cleaning rules (fast, and the same
rules training used); this module describes exactly those rules as JSON Schema, so the OpenAPI page
shows the real fields, types, allowed categories and an example for whatever data the model was
trained on. Response bodies are plain pydantic models used for documentation only: the routes
serialise with orjson directly.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.serving.predictor import CUSTOMER_ID, example_record
from bundle.features import OTHER_CATEGORY, FeatureSchema, FeatureSpec

RECORD_COMPONENT = "CustomerRecord"
_SCHEMA_REF = f"#/components/schemas/{RECORD_COMPONENT}"


# ---- requests (generated per bundle) ------------------------------------------------------------
def feature_json_schema(spec: FeatureSpec) -> dict[str, Any]:
    """JSON Schema of one feature as the service accepts it."""
    if spec.kind == "numeric":
        number: dict[str, Any] = {"type": "number"}
        if spec.lower_bound is not None:
            number["minimum"] = spec.lower_bound
        described = f"Number{' (whole)' if spec.integer else ''}; training range {spec.minimum:g} to {spec.maximum:g}."
        schema = number
    elif spec.kind == "boolean":
        labels = [label for label in (spec.true_label, spec.false_label) if label is not None]
        schema = {"anyOf": [{"type": "boolean"}, {"enum": labels}]} if labels else {"type": "boolean"}
        described = f"Yes/no: true/false or the table's labels {labels}." if labels else "Yes/no."
    else:
        schema = {"type": "string", "examples": spec.categories[:20], "x-known-categories": spec.categories}
        described = (
            f"One of {', '.join(repr(c) for c in spec.categories[:20])}"
            f"{' and more' if len(spec.categories) > 20 else ''}. "
            f"Other values are accepted, scored as {OTHER_CATEGORY!r} and reported in warnings."
        )
    if not spec.required:
        schema = _or_null(schema)
        described += " Optional: omitted, null or blank is imputed with the training value (a warning says so)."
    schema["title"] = spec.name
    prefix = f"{spec.description[:1].upper()}{spec.description[1:].rstrip('.')}. " if spec.description else ""
    schema["description"] = f"{prefix}{described}"
    schema["example"] = spec.example()
    return schema


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` that also accepts null, its keywords (minimum, known categories) left where they are."""
    if "anyOf" in schema:
        return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}
    return {**schema, "type": [schema["type"], "null"]}


def record_json_schema(schema: FeatureSchema) -> dict[str, Any]:
    """One customer: the model's features, an optional id, and the training table's ignored columns."""
    properties: dict[str, Any] = {
        CUSTOMER_ID: {
            "anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}],
            "description": "Optional; echoed back in the response.",
        }
    }
    properties.update({spec.name: feature_json_schema(spec) for spec in schema.features})
    if schema.id_column and schema.id_column != CUSTOMER_ID:
        properties[schema.id_column] = {
            "anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}],
            "description": f"The training table's id column; used as {CUSTOMER_ID} when that is absent.",
        }
    for column in schema.dropped:
        if column.name not in properties:
            properties[column.name] = {"description": f"Accepted and ignored: {column.reason}."}
    if schema.target not in properties:
        properties[schema.target] = {"description": "The training target: accepted and ignored."}
    return {
        "title": RECORD_COMPONENT,
        "type": "object",
        "properties": properties,
        "required": [spec.name for spec in schema.features if spec.required],
        "additionalProperties": False,
        "example": example_record(schema),
    }


def single_request_body(schema: FeatureSchema | None) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": _content(schema, {"$ref": _SCHEMA_REF}, single=True)}}


def batch_request_body(schema: FeatureSchema | None, max_batch_size: int) -> dict[str, Any]:
    items = {"type": "array", "items": {"$ref": _SCHEMA_REF}, "minItems": 1, "maxItems": max_batch_size}
    return {"required": True, "content": {"application/json": _content(schema, items, single=False)}}


def _content(schema: FeatureSchema | None, body: dict[str, Any], single: bool) -> dict[str, Any]:
    if schema is None:
        return {"schema": {"type": "object" if single else "array", "description": "No model is loaded yet."}}
    example = example_record(schema)
    return {"schema": body, "example": example if single else [example, example]}


def record_component(schema: FeatureSchema | None) -> dict[str, Any]:
    if schema is None:
        return {"title": RECORD_COMPONENT, "type": "object", "description": "No model is loaded yet."}
    return record_json_schema(schema)


# ---- responses (documentation) ------------------------------------------------------------------
class Reason(BaseModel):
    feature: str
    value: Any = Field(description="The customer's value (imputed values filled in)")
    contribution: float = Field(description="Log-odds this feature adds versus a typical customer (> 0)")


class PredictionOut(BaseModel):
    customer_id: str | None
    prediction_id: str = Field(description="Quote it in POST /feedback when the outcome is known")
    churn_probability: float = Field(ge=0.0, le=1.0)
    predicted_churn: bool = Field(description="churn_probability >= the bundle's threshold")
    risk_category: str
    recommended_actions: list[str]
    top_reasons: list[Reason] | None = Field(
        default=None, description="Features that raise this customer's risk most (absent when not requested)"
    )
    warnings: list[str] = Field(
        description="Imputed missing values, categories not seen in training, numbers outside the training range"
    )
    model_version: str


class FieldProblem(BaseModel):
    type: str
    loc: list[str | int]
    msg: str
    input: Any = None


class RecordErrorOut(BaseModel):
    index: int
    customer_id: str | None
    errors: list[FieldProblem]


class BatchOut(BaseModel):
    model_version: str
    count: int
    succeeded: int
    failed: int
    results: list[PredictionOut | RecordErrorOut] = Field(description="One per input record, in input order")


class ValidationErrorOut(BaseModel):
    detail: list[FieldProblem]


class HealthOut(BaseModel):
    status: str


class ChallengerOut(BaseModel):
    mode: str = Field(description="off, shadow (scored beside the champion, never answers) or canary")
    share: float = Field(description="shadow: share of calls scored; canary: share of customers answered")
    version: str | None = Field(None, description="the challenger taking part, if any")
    error: str | None = Field(None, description="why the configured challenger was refused")


class ReadyOut(BaseModel):
    status: str
    model_version: str | None = None
    reason: str | None = None
    challenger: ChallengerOut | None = None


class ReloadOut(BaseModel):
    status: str
    model_version: str
    previous_version: str | None
    load_seconds: float
