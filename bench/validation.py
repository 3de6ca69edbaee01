"""Bake-off: JSON request bytes -> cleaned columns, three ways, for 1 and for 10,000 records.

    python -m bench.validation --model-dir DIR    # a directory with a `current` bundle

1. **orjson + column cleaning**: ``orjson.loads`` then the bundle's ``RecordCleaner`` (the service's path).
2. **msgspec Struct**: a ``Struct`` generated from the feature schema (every known field, unknown
   fields refused) decodes the bytes; its columns then go through the same ``ColumnCleaner``s. msgspec
   reports only the first problem of a body, so a body it refuses is answered by path 1.
3. **pydantic TypeAdapter**: a model generated from the schema, one ``BeforeValidator`` per feature
   applying that feature's cached cleaning; pydantic words every field error itself. A batch with
   errors is validated again without its bad records, for partial success.

All three must give the same cleaned columns and, on a batch with problems, the same failing records
(checked before timing). Figures are median process CPU of interleaved repeats; compare the figures of
one run with each other (the machine is shared).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec
import orjson
from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from pydantic_core import PydanticCustomError

from bench.worker import DEFAULT_DATA
from bundle.features import FeatureSchema
from bundle.records import CUSTOMER_ID, CleanBatch, InvalidValue, RecordCleaner, RecordError
from bundle.store import current_bundle_dir, verify_bundle

Cleaned = tuple[CleanBatch, list[RecordError]]


def orjson_path(cleaner: RecordCleaner) -> Callable[[bytes], Cleaned]:
    return lambda body: cleaner.clean(orjson.loads(body))


def msgspec_path(schema: FeatureSchema, cleaner: RecordCleaner) -> Callable[[bytes], Cleaned]:
    """A Struct with a slot per known field (values as JSON gives them), then the bundle's column cleaning."""
    fields = [*schema.names, *sorted(cleaner.allowed - set(schema.names))]
    slots = [f"f{position}" for position in range(len(fields))]
    record = msgspec.defstruct(
        "Record",
        [(slot, Any, None) for slot in slots],
        rename=dict(zip(slots, fields, strict=True)),
        forbid_unknown_fields=True,
        gc=False,
    )
    decoder = msgspec.json.Decoder(list[record])
    n_features = len(schema.names)

    def clean(body: bytes) -> Cleaned:
        try:
            records = decoder.decode(body)
        except msgspec.MsgspecError:
            return cleaner.clean(orjson.loads(body))  # msgspec names one problem; the cleaner words them all
        raw = dict(zip(fields, zip(*map(msgspec.structs.astuple, records), strict=True), strict=True))
        problems: dict[int, list[Any]] = {}
        columns = {}
        for name, column_cleaner in zip(schema.names[:n_features], cleaner.columns, strict=True):
            columns[name], invalid, _ = column_cleaner.clean(raw[name])
            for row in invalid:
                problems.setdefault(row, []).append(name)
        if problems:  # field-level errors: worded by the cleaner
            return cleaner.clean(orjson.loads(body))
        ids = [
            None if value is None else str(value) for value in raw.get(CUSTOMER_ID, [None] * len(records))
        ]  # the table's id column is left out of this comparison's timing
        return CleanBatch(list(range(len(records))), ids, columns), []

    return clean


def pydantic_path(schema: FeatureSchema, cleaner: RecordCleaner) -> Callable[[bytes], Cleaned]:
    """A model generated from the schema: one validator per feature applying its cleaning; pydantic's errors."""

    def validator(column_cleaner: Any, required: bool) -> Any:
        def clean(value: Any) -> Any:
            cleaned = column_cleaner.clean_one(value)
            if cleaned.__class__ is InvalidValue:
                raise PydanticCustomError("value_error", cleaned.message)
            if cleaned is None and required:
                raise PydanticCustomError("missing", "A value is required (this feature is declared required)")
            return cleaned

        return BeforeValidator(clean)

    def customer_id(value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise PydanticCustomError("string_type", "Input should be a string or an integer")
        return None if value is None else str(value)

    definitions: dict[str, Any] = {}
    for position, (spec, column_cleaner) in enumerate(zip(schema.features, cleaner.columns, strict=True)):
        kind = Annotated[Any, validator(column_cleaner, spec.required)]
        definitions[f"f{position}"] = (kind, Field(alias=spec.name) if spec.required else Field(None, alias=spec.name))
    extras = sorted(cleaner.allowed - set(schema.names))
    for position, name in enumerate(extras):
        kind = Annotated[Any, BeforeValidator(customer_id)] if name in cleaner.id_keys else Any
        definitions[f"x{position}"] = (kind, Field(None, alias=name))
    model = create_model("CustomerRecord", __config__=ConfigDict(extra="forbid"), **definitions)
    adapter = TypeAdapter(list[model])
    slots = [f"f{position}" for position in range(len(schema.names))]
    id_slot = f"x{extras.index(CUSTOMER_ID)}" if CUSTOMER_ID in extras else None

    def columns_of(records: list[Any]) -> tuple[list[Any], dict[str, list[Any]]]:
        ids = [getattr(record, id_slot) for record in records] if id_slot else [None] * len(records)
        return ids, {
            name: [getattr(record, slot) for record in records] for name, slot in zip(schema.names, slots, strict=True)
        }

    def clean(body: bytes) -> Cleaned:
        try:
            records = adapter.validate_json(body)
        except ValidationError as exc:
            return partial(body, exc)
        ids, columns = columns_of(records)
        return CleanBatch(list(range(len(records))), ids, columns), []

    def partial(body: bytes, exc: ValidationError) -> Cleaned:
        """Partial success: the bad records' errors, and the others validated again on their own."""
        raw = orjson.loads(body)
        bad: dict[int, list[Any]] = {}
        for error in exc.errors(include_url=False):
            bad.setdefault(error["loc"][0], []).append(error)
        good = [index for index in range(len(raw)) if index not in bad]
        ids, columns = columns_of(adapter.validate_python([raw[index] for index in good]))
        errors = [RecordError(index, None, found) for index, found in sorted(bad.items())]
        return CleanBatch(good, ids, columns), errors

    return clean


def _timed(paths: dict[str, Callable[[bytes], Cleaned]], body: bytes, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {label: [] for label in paths}
    gc.collect()
    for _ in range(repeats):  # interleaved, so a busy moment hits every path alike
        for label, clean in paths.items():
            started = time.process_time()
            clean(body)
            times[label].append(time.process_time() - started)
    return {label: statistics.median(values) for label, values in times.items()}


def _check_agree(paths: dict[str, Callable[[bytes], Cleaned]], body: bytes) -> None:
    """Every path gives the same cleaned columns and refuses the same records."""
    results = {label: clean(body) for label, clean in paths.items()}
    (reference_label, (reference, reference_errors)), *others = results.items()
    for label, (batch, errors) in others:
        same_columns = {name: list(values) for name, values in batch.columns.items()} == reference.columns
        same_errors = [error.index for error in errors] == [error.index for error in reference_errors]
        if not (same_columns and same_errors and batch.indices == reference.indices):
            raise SystemExit(f"{label} and {reference_label} disagree on these records")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a directory with a current bundle")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="IBM Telco CSV")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per path (10,000 records)")
    args = parser.parse_args()
    if not args.data.exists():
        print(f"skipped: {args.data} is absent (pass --data)")
        return
    from bench.loadgen import telco_records

    schema = verify_bundle(current_bundle_dir(args.model_dir.resolve())).schema
    cleaner = RecordCleaner(schema)
    paths = {
        "orjson + column cleaning": orjson_path(cleaner),
        "msgspec Struct + column cleaning": msgspec_path(schema, cleaner),
        "pydantic TypeAdapter, validator per feature": pydantic_path(schema, cleaner),
    }
    records = telco_records(args.data, 10_000, id_column=None)
    for record in records:
        record.pop("customerID", None)
    many = orjson.dumps(records)
    one = orjson.dumps(records[:1])
    _check_agree(paths, many)
    bad = list(records)
    bad[5] = {**bad[5], "tenure": "twelve"}
    bad_many = orjson.dumps(bad)
    _check_agree(paths, bad_many)
    single = _timed(paths, one, 2000)
    batch = _timed(paths, many, args.repeats)
    with_errors = _timed(paths, bad_many, max(3, args.repeats // 3))
    print("| path | 1 record | 10,000 records | 10,000 records, one invalid |")
    print("|---|---:|---:|---:|")
    for label in paths:
        figures = f"{single[label] * 1e6:.0f} µs | {batch[label] * 1e3:.1f} ms | {with_errors[label] * 1e3:.1f} ms"
        print(f"| {label} | {figures} |")


if __name__ == "__main__":
    main()
