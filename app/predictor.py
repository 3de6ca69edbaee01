"""The predictor: owns the verified bundle and turns raw customer records into explained predictions.

It knows nothing of HTTP. Loading goes current bundle -> checksum verification (before anything is
unpickled) -> model -> warm-up prediction; a failure at any step raises ``BundleError`` with the
reason. Prediction cleans each field with the bundle's own ``FeatureSchema.clean_value`` (the rules
training used), encodes with ``FeatureSchema.encode`` (one definition of the features), and scores
and explains in a single model call on a prepared array: no DataFrame on the hot path.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from app.explain import Explainer
from app.monitoring.events import PredictionEvent
from app.risk import RiskPolicy
from app.settings import Settings
from models.bundle import BundleError, Manifest, current_bundle_dir, verify_bundle
from models.features import EncodeResult, FeatureSchema, FeatureSpec, FeatureValueError
from models.scoring import EnsembleModel, RawModel, Scorer, apply_calibration, load_raw_model

CUSTOMER_ID = "customer_id"
# Distinct raw values remembered per feature: categories repeat, so cleaning a 10,000-record
# batch becomes mostly dictionary hits; the cap keeps free-form numbers from growing it forever.
_CLEAN_CACHE_SIZE = 4096
_MISSING = object()
# Python types orjson gives JSON scalars; numbers of one type and text never compare equal.
_NUMBER_TYPES = frozenset({bool, int, float})
_JSON_SCALARS = frozenset({str, bool, int, float, type(None)})
_JSON_NUMBER_OR_NULL = frozenset({int, float, type(None)})
_TEXT_OR_NULL = frozenset({str, type(None)})
# Up to how many rows the compiled trees beat the native library (measured on the Telco bundles:
# LightGBM's own call is cheap enough beyond one row, XGBoost's and scikit-learn's are not).
_COMPILED_MAX_ROWS = {"lightgbm": 1, "xgboost": 32, "random_forest": 64}


@dataclass(slots=True)
class FieldError:
    """One problem with one input field; ``loc`` is relative to the record."""

    loc: tuple[str | int, ...]
    msg: str
    type: str
    input: Any = None

    def to_dict(self, prefix: tuple[str | int, ...] = ()) -> dict[str, Any]:
        return {"type": self.type, "loc": [*prefix, *self.loc], "msg": self.msg, "input": self.input}


@dataclass(slots=True)
class RecordError:
    """A record that could not be scored, with every problem found in it."""

    index: int
    customer_id: str | None
    errors: list[FieldError]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "customer_id": self.customer_id,
            "errors": [error.to_dict((self.index,)) for error in self.errors],
        }


@dataclass(slots=True)
class CleanRecord:
    index: int
    customer_id: str | None
    values: dict[str, Any]  # every feature in schema order -> cleaned value (None = missing)


@dataclass(slots=True)
class CleanBatch:
    """The valid records of one call, by column: all that encoding, scoring and monitoring need.

    Kept by column so a 10,000-record batch never builds a dictionary per record.
    """

    indices: list[int]  # each valid record's position in the request
    customer_ids: list[str | None]
    columns: dict[str, Sequence[Any]]  # every feature in schema order -> cleaned values (None = missing)

    @classmethod
    def of_one(cls, record: CleanRecord) -> CleanBatch:
        # One-element tuples, not lists: monitoring keeps a /predict's columns until its next drain,
        # and tuples of plain values drop out of the cyclic garbage collector's scans; lists never do.
        return cls([record.index], [record.customer_id], {name: (value,) for name, value in record.values.items()})

    def __len__(self) -> int:
        return len(self.indices)

    def row_values(self, row: int) -> dict[str, Any]:
        return {name: values[row] for name, values in self.columns.items()}


@dataclass(slots=True)
class ScoredRecords:
    """The predictions of one call's valid records, by column, in input order."""

    indices: list[int]
    customer_ids: list[str | None]
    prediction_ids: list[str]
    probabilities: list[float]
    decisions: list[bool]
    risk_bands: list[str]
    actions: list[list[str]]
    warnings: list[list[str]]
    reasons: list[list[dict[str, Any]]] | None  # None when not requested
    model_version: str

    def dicts(self) -> list[dict[str, Any]]:
        """Each prediction as the API returns it (``PredictionOut``)."""
        version = self.model_version
        columns = (
            self.customer_ids,
            self.prediction_ids,
            self.probabilities,
            self.decisions,
            self.risk_bands,
            self.actions,
            self.warnings,
        )
        rows = [
            {
                "customer_id": customer,
                "prediction_id": prediction,
                "churn_probability": probability,
                "predicted_churn": decision,
                "risk_category": band,
                "recommended_actions": actions,
                "warnings": warnings,
                "model_version": version,
            }
            for customer, prediction, probability, decision, band, actions, warnings in zip(*columns, strict=True)
        ]
        if self.reasons is not None:
            for row, reasons in zip(rows, self.reasons, strict=True):
                row["top_reasons"] = reasons
        return rows


@dataclass(slots=True)
class PredictionOutcome:
    """The scored records, the records that could not be scored, and the event for monitoring."""

    scored: ScoredRecords | None
    errors: list[RecordError]
    event: PredictionEvent | None
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.errors) + (len(self.scored.indices) if self.scored is not None else 0)

    def result_dicts(self, error_dict: Callable[[RecordError], dict[str, Any]]) -> list[dict[str, Any]]:
        """One result per input record, in input order: a prediction or ``error_dict`` of its error."""
        predictions = self.scored.dicts() if self.scored is not None else []
        if not self.errors:
            return predictions
        results: list[Any] = [None] * self.count
        for error in self.errors:
            results[error.index] = error_dict(error)
        for index, prediction in zip(self.scored.indices if self.scored else [], predictions, strict=True):
            results[index] = prediction
        return results


class _Invalid:
    """A cached cleaning failure, so a repeated bad value is reported without re-parsing it."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _distinct(raw: Sequence[Any]) -> set[Any] | None:
    """The distinct values of a column, or None when some value cannot be hashed (a list or object)."""
    try:
        return set(raw)
    except TypeError:
        return None


def _values_key_exactly(raw: Sequence[Any], distinct: set[Any]) -> bool:
    """Whether the values alone, without their types, can key the cleaning of a column.

    Not when two kinds of value compare equal (True == 1 == 1.0) but clean differently. Text never
    equals a number, so distinct values that are all text (or null) settle it without a pass over
    the whole column.
    """
    if set(map(type, distinct)) <= _TEXT_OR_NULL:
        return True
    kinds = set(map(type, raw))
    return kinds <= _JSON_SCALARS and len(kinds & _NUMBER_TYPES) <= 1


def _id_text(raw: Any) -> Any:
    """A customer id as text, or _MISSING when it is neither a string nor an integer."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        return _MISSING
    return str(raw)


class _PredictionIds:
    """Unique, time-ordered ids of 32 hex digits: milliseconds since the epoch (12), a random tag of
    this process (12) and a per-process sequence number (8).

    Time-ordered like UUIDv7, so the prediction log's primary-key index grows at its end instead of
    at random places (cheaper inserts); unique across workers through the tag, within one through
    the sequence; no random number and no system call per prediction.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._tag = ""
        self._next = 0

    def take(self, count: int) -> list[str]:
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not reuse its parent's tag
                self._pid, self._tag, self._next = os.getpid(), secrets.token_hex(6), 0
            first, self._next = self._next, self._next + count
        prefix = f"{int(time.time() * 1000) & 0xFFFF_FFFF_FFFF:012x}{self._tag}"
        if count == 1:
            return [f"{prefix}{first & 0xFFFF_FFFF:08x}"]
        return [f"{prefix}{sequence & 0xFFFF_FFFF:08x}" for sequence in range(first, first + count)]


new_prediction_ids = _PredictionIds().take


def example_record(schema: FeatureSchema) -> dict[str, Any]:
    """A typical customer as a client would send it: every feature at its training imputation value."""
    return {spec.name: spec.example() for spec in schema.features}


class RecordCleaner:
    """Validates raw records field by field with the schema's cleaning rules.

    Feature fields are cleaned by ``FeatureSchema.clean_value``; ``customer_id`` (or the training
    table's id column) is echoed back; the target and the columns training deliberately dropped are
    accepted and ignored, so a row copied from the training table is valid; anything else is an
    unknown field. Required features (never missing in training) must have a value; the others may
    be omitted or blank and are imputed like in training.
    """

    def __init__(self, schema: FeatureSchema) -> None:
        self.schema = schema
        self.names = schema.names
        self.required = [spec.name for spec in schema.features if spec.required]
        self.id_fields = frozenset({CUSTOMER_ID, *([schema.id_column] if schema.id_column else [])})
        self.ignored = frozenset({schema.target, *schema.dropped_names}) - self.id_fields
        self.allowed = frozenset(schema.names) | self.id_fields | self.ignored
        self.required_set = frozenset(self.required)
        self._caches: dict[str, dict[tuple[type, Any], Any]] = {name: {} for name in schema.names}

    def clean(self, record: Any, index: int = 0) -> CleanRecord | RecordError:
        if not isinstance(record, dict):
            error = FieldError((), "Input should be an object of the customer's fields", "dict_type", record)
            return RecordError(index, None, [error])
        # Every feature present, in schema order (None = missing): batches transpose these cheaply.
        values: dict[str, Any] = dict.fromkeys(self.names)
        errors: list[FieldError] = []
        customer_id: str | None = None
        for key, raw in record.items():
            cache = self._caches.get(key)
            if cache is not None:
                cleaned = self._clean_cached(cache, key, raw)
                if cleaned.__class__ is _Invalid:
                    errors.append(FieldError((key,), cleaned.message, "value_error", raw))
                else:
                    values[key] = cleaned
            elif key in self.id_fields:
                if raw is None:
                    continue
                if isinstance(raw, bool) or not isinstance(raw, (str, int)):
                    errors.append(FieldError((key,), "Input should be a string or an integer", "string_type", raw))
                elif key == CUSTOMER_ID or customer_id is None:
                    customer_id = str(raw)
            elif key not in self.ignored:
                errors.append(
                    FieldError(
                        (key,), "Unknown field: the model's fields are listed at GET /metadata", "extra_forbidden", raw
                    )
                )
        for name in self.required:
            if values.get(name) is None and name not in {error.loc[0] for error in errors if error.loc}:
                if name in record:
                    errors.append(
                        FieldError(
                            (name,), "A value is required (training data always had one)", "missing", record[name]
                        )
                    )
                else:
                    errors.append(FieldError((name,), "Field required", "missing", None))
        if errors:
            return RecordError(index, customer_id, errors)
        return CleanRecord(index, customer_id, values)

    def clean_many(self, records: Sequence[Any]) -> tuple[list[RecordError], CleanBatch]:
        """``clean`` for a batch, column by column: the same rules at a fraction of the cost.

        Records with only known fields are cleaned a column at a time (each distinct category text
        is cleaned once; all-number columns are checked with numpy). Any record with a problem is
        then cleaned again on its own by :meth:`clean`, which words its errors. Returns the errors
        (in input order) and the valid records by column.
        """
        simple, troubled = self._simple_records(records)
        rows = records if len(simple) == len(records) else [records[index] for index in simple]
        columns: dict[str, list[Any]] = {}
        for name, raw in zip(self.names, self._raw_columns(rows), strict=True):
            columns[name], bad = self._clean_column(name, raw)
            troubled.update(simple[position] for position in bad)
        ids = self._customer_ids(rows)
        if _MISSING in ids:
            troubled.update(simple[position] for position, value in enumerate(ids) if value is _MISSING)
        if not troubled:
            return [], CleanBatch(simple, ids, columns)
        return self._split_troubled(records, simple, ids, columns, troubled)

    def _split_troubled(
        self,
        records: Sequence[Any],
        simple: list[int],
        ids: list[Any],
        columns: dict[str, list[Any]],
        troubled: set[int],
    ) -> tuple[list[RecordError], CleanBatch]:
        """Words the errors of the troubled records and keeps the others' columns."""
        errors: list[RecordError] = []
        rescued: list[CleanRecord] = []  # rejected by the column pass, valid on their own (defensive)
        for index in sorted(troubled):
            result = self.clean(records[index], index)
            if result.__class__ is RecordError:
                errors.append(result)  # type: ignore[arg-type]
            else:
                rescued.append(result)  # type: ignore[arg-type]
        keep = [position for position, index in enumerate(simple) if index not in troubled]
        indices = [simple[position] for position in keep]
        kept_ids = [ids[position] for position in keep]
        kept = {name: [values[position] for position in keep] for name, values in columns.items()}
        if rescued:
            rows = sorted(
                [
                    (index, customer, [kept[name][row] for name in self.names])
                    for row, (index, customer) in enumerate(zip(indices, kept_ids, strict=True))
                ]
                + [
                    (record.index, record.customer_id, [record.values[name] for name in self.names])
                    for record in rescued
                ]
            )
            indices, kept_ids = [row[0] for row in rows], [row[1] for row in rows]
            kept = {name: [row[2][position] for row in rows] for position, name in enumerate(self.names)}
        return errors, CleanBatch(indices, kept_ids, kept)

    def _simple_records(self, records: Sequence[Any]) -> tuple[list[int], set[int]]:
        """Positions of the records that are objects with only known fields, and of the others."""
        simple: list[int] = []
        troubled: set[int] = set()
        for index, record in enumerate(records):
            if record.__class__ is dict and record.keys() <= self.allowed:
                simple.append(index)
            else:
                troubled.add(index)
        return simple, troubled

    def _raw_columns(self, rows: list[dict[str, Any]]) -> list[Sequence[Any]]:
        """Each feature's raw values (None where absent), in schema order.

        Records that carry every feature (the usual case) are transposed in C, twice as fast as
        one dictionary lookup per feature per record.
        """
        names = self.names
        if len(names) > 1 and rows:
            try:
                return list(zip(*map(itemgetter(*names), rows), strict=True))
            except KeyError:
                pass  # some record omits an optional feature: look each one up
        return [list(map(dict.get, rows, repeat(name))) for name in names]

    def _customer_ids(self, rows: list[dict[str, Any]]) -> list[Any]:
        """Each record's id as text, None without one, or _MISSING when it is not a string or integer.

        ``customer_id`` wins over the training table's id column, as in :meth:`clean`.
        """
        ids: list[Any] = [None] * len(rows)
        keys = [key for key in (CUSTOMER_ID, self.schema.id_column) if key]
        for key in reversed(keys):  # the preferred key is applied last
            column = list(map(dict.get, rows, repeat(key)))
            if set(map(type, column)) <= {str, type(None)}:
                ids = [value if value is not None else current for value, current in zip(column, ids, strict=True)]
            else:
                ids = [
                    _id_text(value) if value is not None else current
                    for value, current in zip(column, ids, strict=True)
                ]
        return ids

    def _clean_column(self, name: str, raw: list[Any]) -> tuple[list[Any], list[int]]:
        """Cleaned values of one feature and the positions that are invalid or missing but required."""
        spec = self.schema[name]
        required = name in self.required_set
        if spec.kind == "numeric":
            kinds = set(map(type, raw))
            if kinds and kinds <= _JSON_NUMBER_OR_NULL:
                return self._clean_numbers(spec, raw, required)
        distinct = _distinct(raw)
        if distinct is not None and _values_key_exactly(raw, distinct):
            # Each distinct value is cleaned once.
            cache = self._caches[name]
            mapping = {value: self._clean_cached(cache, name, value) for value in distinct}
            cleaned = list(map(mapping.__getitem__, raw))
            if not any(value.__class__ is _Invalid or (required and value is None) for value in mapping.values()):
                return cleaned, []
        else:
            cache = self._caches[name]
            cleaned = [self._clean_cached(cache, name, value) for value in raw]
        bad = [i for i, value in enumerate(cleaned) if value.__class__ is _Invalid or (required and value is None)]
        for position in bad:
            cleaned[position] = None
        return cleaned, bad

    @staticmethod
    def _clean_numbers(spec: FeatureSpec, raw: list[Any], required: bool) -> tuple[list[Any], list[int]]:
        """A column of JSON numbers and nulls, checked with numpy (null is missing, like in ``clean_value``)."""
        numbers = np.array(raw, dtype=np.float64)  # None becomes NaN
        missing = np.isnan(numbers)
        cleaned = numbers.tolist()
        bad = np.flatnonzero(numbers < spec.lower_bound).tolist() if spec.lower_bound is not None else []
        if missing.any():
            positions = np.flatnonzero(missing).tolist()
            for position in positions:
                cleaned[position] = None
            if required:
                bad = sorted({*bad, *positions})
        return cleaned, bad

    def _clean_cached(self, cache: dict[tuple[type, Any], Any], name: str, raw: Any) -> Any:
        # The type is part of the key because True == 1 == 1.0 in Python but they clean differently.
        try:
            key = (raw.__class__, raw)
            cleaned = cache.get(key, _MISSING)
        except TypeError:  # unhashable (a list or object): clean without remembering
            return self._clean_uncached(name, raw)
        if cleaned is _MISSING:
            cleaned = self._clean_uncached(name, raw)
            if len(cache) < _CLEAN_CACHE_SIZE:
                cache[key] = cleaned
        return cleaned

    def _clean_uncached(self, name: str, raw: Any) -> Any:
        try:
            return self.schema.clean_value(name, raw)
        except FeatureValueError as exc:
            return _Invalid(str(exc))
        except (OverflowError, ValueError, TypeError) as exc:  # e.g. an integer too large for a float
            return _Invalid(f"cannot read this value: {exc}")


class RowEncoder:
    """The single-record fast path of ``FeatureSchema.encode``, for rows that need no assumptions.

    ``FeatureSchema.encode`` is vectorised for batches; for one row its per-feature numpy calls cost
    more than the model. This encoder does the same arithmetic in plain Python, but only for rows
    with every value present and every category known: anything that needs imputation or the
    "other" bucket returns None and goes through ``FeatureSchema.encode``, which also words the
    warnings, so the rules and messages keep one definition. Tests check both paths agree.
    """

    def __init__(self, schema: FeatureSchema) -> None:
        self.width = schema.n_encoded
        self._steps: list[tuple[str, int, Any]] = []
        for name, columns in schema.encoded_groups():
            spec = schema[name]
            if spec.kind == "categorical":
                index = {value: columns.start + i for i, value in enumerate(spec.encoded)}
                other = columns.start + len(spec.encoded) if spec.other_bucket else None
                self._steps.append((name, columns.start, (index, frozenset(spec.categories), other)))
            else:
                self._steps.append((name, columns.start, spec))

    def encode(self, values: dict[str, Any]) -> np.ndarray | None:
        row = [0.0] * self.width
        for name, column, rule in self._steps:
            value = values.get(name)
            if value is None:
                return None
            if rule.__class__ is tuple:
                index, accepted, other = rule
                position = index.get(value)
                if position is not None:
                    row[position] = 1.0
                elif value in accepted and other is not None:
                    row[other] = 1.0  # a rare training category: shares the "other" column
                else:
                    return None  # unseen (or no column for it): the full encoder warns about it
            elif rule.kind == "boolean":
                row[column] = 1.0 if value else 0.0
            else:
                row[column] = _scaled(rule, value)
        return np.array([row])


class ColumnEncoder:
    """The batch fast path of ``FeatureSchema.encode``: whole columns with numpy and dictionary maps.

    ``FeatureSchema.encode`` walks categorical and boolean columns row by row. This encoder maps
    each column in one pass and scales numbers with the same numpy operations, for the rows that
    need no assumptions; rows with a missing value or an unseen category are re-encoded by
    ``FeatureSchema.encode`` itself (which also words their warnings) and copied in.
    """

    def __init__(self, schema: FeatureSchema) -> None:
        self.schema = schema
        self._steps: list[tuple[FeatureSpec, int, dict[Any, int] | None]] = []
        for name, columns in schema.encoded_groups():
            spec = schema[name]
            lookup = None
            if spec.kind == "categorical":
                lookup = {value: columns.start + i for i, value in enumerate(spec.encoded)}
                if spec.other_bucket:  # rare training categories share the "other" column, silently
                    other = columns.start + len(spec.encoded)
                    lookup.update({value: other for value in spec.categories if value not in lookup})
            self._steps.append((spec, columns.start, lookup))

    def encode(self, columns: dict[str, list[Any]], n_rows: int) -> EncodeResult:
        matrix = np.zeros((n_rows, self.schema.n_encoded))
        needs_schema = np.zeros(n_rows, dtype=bool)
        rows = np.arange(n_rows)
        for spec, column, lookup in self._steps:
            values = columns[spec.name]
            if lookup is not None:
                positions = np.fromiter(map(lookup.get, values, repeat(-1)), dtype=np.intp, count=n_rows)
                known = positions >= 0
                needs_schema |= ~known
                matrix[rows[known], positions[known]] = 1.0
            elif spec.kind == "boolean":
                # Cleaned booleans are True, False or None: one dictionary lookup each, in C.
                bits = np.fromiter(map(_BOOLEAN_BITS.get, values, repeat(-1)), dtype=np.int8, count=n_rows)
                needs_schema |= bits < 0
                matrix[:, column] = np.maximum(bits, 0)
            else:
                raw = np.array(values, dtype=np.float64)  # None (missing) becomes NaN
                missing = np.isnan(raw)
                needs_schema |= missing
                if spec.cap_low is not None:
                    np.clip(raw, spec.cap_low, spec.cap_high, out=raw)
                if spec.log_transform:
                    raw = np.log1p(np.maximum(raw, 0.0))
                matrix[:, column] = (raw - spec.mean) / spec.std
        warnings: list[list[str]] = [[] for _ in range(n_rows)]
        result = EncodeResult(matrix=matrix, warnings=warnings, imputed=[], unseen=[])
        special = np.flatnonzero(needs_schema).tolist()
        if special:
            subset = {name: [values[row] for row in special] for name, values in columns.items()}
            exact = self.schema.encode(subset, len(special))
            matrix[special] = exact.matrix
            for position, row in enumerate(special):
                warnings[row] = exact.warnings[position]
            result.imputed = [(special[position], name) for position, name in exact.imputed]
            result.unseen = [(special[position], name) for position, name in exact.unseen]
        return result


# A cleaned boolean's matrix value; a missing one (None) is absent and goes to the schema encoder.
_BOOLEAN_BITS = {True: 1, False: 0}


def _scaled(spec: Any, value: float) -> float:
    """A present numeric value capped, transformed and scaled exactly as ``FeatureSchema.encode`` does."""
    if spec.cap_low is not None:
        value = max(value, spec.cap_low)
        if spec.cap_high is not None:
            value = min(value, spec.cap_high)
    if spec.log_transform:
        value = float(np.log1p(max(value, 0.0)))
    return (value - spec.mean) / spec.std


class CompiledTrees:
    """A tree ensemble flattened into numpy arrays, evaluated for all trees and rows at once.

    For a handful of rows the native libraries spend far longer in their Python wrappers (array
    interfaces, config, ctypes) than in the trees; this evaluator walks every tree level by level
    with a few vectorised gathers instead. Larger matrices (batches) go to the native library.
    Built only when :func:`compile_trees` can express the model exactly, and used only after it
    matched the native predictions on a probe set at load time.
    """

    def __init__(self, native: RawModel, nodes: dict[str, np.ndarray], roots: list[int], depth: int, **rule: Any):
        self.native = native
        self.feature = nodes["feature"]
        self.threshold = nodes["threshold"]
        self.left, self.right, self.value = nodes["left"], nodes["right"], nodes["value"]
        self.roots = np.asarray(roots, dtype=np.intp)
        # Each tree's nodes are contiguous and start at its root (trees are added one after another).
        self.tree_of_node = np.searchsorted(self.roots, np.arange(self.feature.size), side="right") - 1
        self.depth = depth
        self.strict_less: bool = rule["strict_less"]  # XGBoost splits on x < t, the others on x <= t
        self.float32: bool = rule["float32"]  # XGBoost and scikit-learn compare in float32
        self.average: bool = rule["average"]  # random forest averages, boosting sums margins
        self.offset: float = rule.get("offset", 0.0)
        self.max_rows: int = rule.get("max_rows", 1 << 30)

    def raw_proba(self, matrix: np.ndarray) -> np.ndarray:
        if matrix.shape[0] > self.max_rows:
            return self.native.raw_proba(matrix)
        return self._probability(self._leaves(matrix).sum(axis=1))

    def _leaves(self, matrix: np.ndarray) -> np.ndarray:
        """Leaf value each row reaches in each tree, (rows, trees)."""
        offsets = (np.arange(matrix.shape[0], dtype=np.intp) * matrix.shape[1])[:, None]
        return self._walk(self._flat(matrix), offsets, np.broadcast_to(self.roots, (matrix.shape[0], self.roots.size)))

    def _flat(self, matrix: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(matrix, dtype=np.float32 if self.float32 else np.float64).ravel()

    def _walk(self, values: np.ndarray, offsets: np.ndarray, node: np.ndarray) -> np.ndarray:
        for _ in range(self.depth):
            feature_values = values[offsets + self.feature[node]]
            thresholds = self.threshold[node]
            go_left = feature_values < thresholds if self.strict_less else feature_values <= thresholds
            node = np.where(go_left, self.left[node], self.right[node])
        return self.value[node]

    def _probability(self, leaf_sum: np.ndarray) -> np.ndarray:
        if self.average:
            return leaf_sum / self.roots.size
        return 1.0 / (1.0 + np.exp(-(leaf_sum + self.offset)))

    def probability_of(self, leaf_sum: float) -> float:
        """``_probability`` for one row, in plain floats (a numpy call costs more than the arithmetic)."""
        if self.average:
            return leaf_sum / self.roots.size
        # Capped so a huge negative margin gives ~0 rather than an OverflowError.
        return 1.0 / (1.0 + math.exp(min(-(leaf_sum + self.offset), 700.0)))

    def trees_using(self, columns: slice) -> np.ndarray:
        """Indices of the trees with a split on any of ``columns``; only they can see those columns change."""
        internal = self.left != np.arange(self.left.size)
        uses = internal & (self.feature >= columns.start) & (self.feature < columns.stop)
        return np.unique(self.tree_of_node[uses])

    def row_occlusion(self, groups: list[slice], reference: np.ndarray) -> RowOcclusion | None:
        """The load-time plan that explains one row per feature group (see :class:`RowOcclusion`)."""
        return RowOcclusion(self, groups, reference) if RowOcclusion.fits(self, groups) else None

    def occlusion(
        self, matrix: np.ndarray, occluded: np.ndarray, pair_rows: np.ndarray, pair_trees: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities of ``matrix`` and of each occluded row, re-walking only the trees that can change.

        ``occluded[k]`` is ``matrix[pair_rows[k]]`` with one feature set to its reference value and
        ``pair_trees[k]`` the trees that split on that feature; every other tree keeps its leaf.
        """
        n_rows, n_trees, width = matrix.shape[0], self.roots.size, matrix.shape[1]
        counts = np.fromiter((trees.size for trees in pair_trees), dtype=np.intp, count=len(pair_trees))
        pair = np.repeat(np.arange(len(pair_trees), dtype=np.intp), counts)
        trees = np.concatenate(pair_trees) if pair_trees else np.zeros(0, dtype=np.intp)
        # One walk for both: every tree for the rows as sent, then the affected trees of each occluded row.
        base_rows = np.repeat(np.arange(n_rows, dtype=np.intp), n_trees)
        offsets = np.concatenate([base_rows, n_rows + pair]) * width
        nodes = np.concatenate([np.tile(self.roots, n_rows), self.roots[trees]])
        walked = self._walk(self._flat(np.concatenate([matrix, occluded])), offsets, nodes)
        leaves = walked[: n_rows * n_trees].reshape(n_rows, n_trees)
        leaf_sum = leaves.sum(axis=1)
        change = np.bincount(
            pair, weights=walked[n_rows * n_trees :] - leaves[pair_rows[pair], trees], minlength=len(pair_trees)
        )
        return self._probability(leaf_sum), self._probability(leaf_sum[pair_rows] + change)


# Above this many planned node copies a row is explained the general way (memory stays bounded).
_ROW_PLAN_MAX_NODES = 1_000_000


class RowOcclusion:
    """Explains one row of a compiled tree ensemble in a single walk, without building occluded rows.

    The walk has one lane per tree as the row was sent, then one per (feature, tree that splits on
    that feature) pair of the model. Each lane walks its own copy of its tree, planned at load
    time: in a pair's copy, the nodes that split on the pair's feature read the reference
    customer's comparison instead of the row's, so the lane ends in the leaf that tree reaches with
    that one feature occluded; trees that do not split on a feature keep their leaf. A feature at
    its reference value reaches the same leaves, so its change is exactly 0. Per request this is
    one comparison per node and four small numpy calls per tree level.
    """

    def __init__(self, trees: CompiledTrees, groups: list[slice], reference: np.ndarray) -> None:
        self.trees = trees
        self.n_groups = len(groups)
        self.n_trees = n_trees = trees.roots.size
        n_nodes = trees.feature.size
        column_group = np.full(max(reference.size, int(trees.feature.max(initial=0)) + 1), -1, dtype=np.intp)
        for group, columns in enumerate(groups):
            column_group[columns] = group
        per_group = [trees.trees_using(columns) for columns in groups]
        self.pair_group = np.repeat(np.arange(self.n_groups, dtype=np.intp), [t.size for t in per_group])
        self.pair_tree = np.concatenate(per_group) if per_group else np.zeros(0, dtype=np.intp)
        lane_tree = np.concatenate([np.arange(n_trees, dtype=np.intp), self.pair_tree])
        lane_group = np.concatenate([np.full(n_trees, -2, dtype=np.intp), self.pair_group])
        tree_start = trees.roots
        tree_size = np.diff(np.append(tree_start, n_nodes))
        # Copies of each lane's tree, laid out one after another: copy c stands for node original[c].
        sizes = tree_size[lane_tree]
        lane_base = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        lane_of_copy = np.repeat(np.arange(lane_tree.size, dtype=np.intp), sizes)
        original = tree_start[lane_tree][lane_of_copy] + (
            np.arange(sizes.sum(), dtype=np.intp) - lane_base[lane_of_copy]
        )
        shift = lane_base[lane_of_copy] - tree_start[lane_tree][lane_of_copy]  # original node -> copy id
        occluded = column_group[trees.feature[original]] == lane_group[lane_of_copy]
        # Copy ids are carried doubled, so "next node" is one lookup: next[2c + went_left].
        self.compare_at = np.repeat(original + n_nodes * occluded, 2)
        self.next = np.empty(2 * original.size, dtype=np.intp)
        self.next[0::2] = 2 * (trees.right[original] + shift)
        self.next[1::2] = 2 * (trees.left[original] + shift)
        self.leaf_value = np.repeat(trees.value[original], 2)
        self.start = 2 * lane_base
        self.dtype = np.float32 if trees.float32 else np.float64
        self.reference_goes_left = self._goes_left(reference)

    @staticmethod
    def fits(trees: CompiledTrees, groups: list[slice]) -> bool:
        """Whether the planned copies stay within memory bounds for this model."""
        tree_size = np.diff(np.append(trees.roots, trees.feature.size))
        copies = tree_size.sum() + sum(int(tree_size[trees.trees_using(columns)].sum()) for columns in groups)
        return copies <= _ROW_PLAN_MAX_NODES

    def _goes_left(self, row: np.ndarray) -> np.ndarray:
        trees = self.trees
        values = np.asarray(row, dtype=self.dtype)[trees.feature]
        return values < trees.threshold if trees.strict_less else values <= trees.threshold

    def explain(self, row: np.ndarray) -> tuple[float, np.ndarray]:
        """The row's raw probability and, per feature group, its raw probability with that group occluded."""
        # As integers: each level adds them to a position (no bool-to-int conversion per level).
        goes_left = np.concatenate([self._goes_left(row), self.reference_goes_left], dtype=np.intp)
        compare_at, following = self.compare_at, self.next
        position = self.start
        for _ in range(self.trees.depth):
            position = following[position + goes_left[compare_at[position]]]
        leaves = self.leaf_value[position]
        base = leaves[: self.n_trees]
        leaf_sum = base.sum()
        change = np.bincount(
            self.pair_group, weights=leaves[self.n_trees :] - base[self.pair_tree], minlength=self.n_groups
        )
        return self.trees.probability_of(float(leaf_sum)), self.trees._probability(leaf_sum + change)


class _TreeBuilder:
    """Collects nodes of many trees into flat arrays (leaves point to themselves)."""

    def __init__(self) -> None:
        self.feature: list[int] = []
        self.threshold: list[float] = []
        self.left: list[int] = []
        self.right: list[int] = []
        self.value: list[float] = []
        self.depth = 0

    def add(self, feature: int, threshold: float, value: float) -> int:
        self.feature.append(feature)
        self.threshold.append(threshold)
        self.left.append(len(self.left))
        self.right.append(len(self.right))
        self.value.append(value)
        return len(self.feature) - 1

    def arrays(self, float32: bool) -> dict[str, np.ndarray]:
        return {
            "feature": np.asarray(self.feature, dtype=np.intp),
            "threshold": np.asarray(self.threshold, dtype=np.float32 if float32 else np.float64),
            "left": np.asarray(self.left, dtype=np.intp),
            "right": np.asarray(self.right, dtype=np.intp),
            "value": np.asarray(self.value, dtype=np.float64),
        }


def _lightgbm_trees(model: Any) -> CompiledTrees | None:
    dump = model.booster.dump_model()
    if not str(dump.get("objective", "")).startswith("binary"):
        return None
    builder = _TreeBuilder()

    def walk(node: dict[str, Any], depth: int) -> int | None:
        builder.depth = max(builder.depth, depth)
        if "leaf_value" in node:
            return builder.add(0, 0.0, float(node["leaf_value"]))
        if node.get("decision_type") != "<=" or node.get("missing_type") not in ("None", "NaN"):
            return None  # categorical or zero-as-missing splits: leave them to LightGBM
        index = builder.add(int(node["split_feature"]), float(node["threshold"]), 0.0)
        left, right = walk(node["left_child"], depth + 1), walk(node["right_child"], depth + 1)
        if left is None or right is None:
            return None
        builder.left[index], builder.right[index] = left, right
        return index

    roots = [walk(tree["tree_structure"], 0) for tree in dump["tree_info"]]
    if any(root is None for root in roots):
        return None
    return CompiledTrees(
        model, builder.arrays(False), roots, builder.depth, strict_less=False, float32=False, average=False
    )


def _xgboost_trees(model: Any) -> CompiledTrees | None:
    import json

    booster = model.booster
    if json.loads(booster.save_config())["learner"]["objective"]["name"] != "binary:logistic":
        return None
    names = booster.feature_names
    builder = _TreeBuilder()

    def column(split: str) -> int:
        return names.index(split) if names else int(split.lstrip("f"))

    def walk(node: dict[str, Any], depth: int) -> int:
        builder.depth = max(builder.depth, depth)
        if "leaf" in node:
            return builder.add(0, 0.0, float(node["leaf"]))
        index = builder.add(column(node["split"]), float(node["split_condition"]), 0.0)
        children = {child["nodeid"]: walk(child, depth + 1) for child in node["children"]}
        builder.left[index], builder.right[index] = children[node["yes"]], children[node["no"]]
        return index

    roots = [walk(json.loads(tree), 0) for tree in booster.get_dump(dump_format="json")]
    # The base score's margin is not in the dump; the probe check below measures and verifies it.
    nodes = builder.arrays(True)
    return CompiledTrees(model, nodes, roots, builder.depth, strict_less=True, float32=True, average=False)


def _forest_trees(model: Any) -> CompiledTrees | None:
    forest = model.estimator
    if not hasattr(forest, "estimators_") or list(forest.classes_) != [0, 1]:
        return None
    builder = _TreeBuilder()
    roots = []
    for estimator in forest.estimators_:
        tree = estimator.tree_
        base = len(builder.feature)
        counts = tree.value[:, 0, :]
        positive = counts[:, 1] / np.maximum(counts.sum(axis=1), 1e-300)
        for node in range(tree.node_count):
            leaf = tree.children_left[node] < 0
            builder.add(0 if leaf else int(tree.feature[node]), float(tree.threshold[node]), float(positive[node]))
            if not leaf:
                builder.left[-1] = base + int(tree.children_left[node])
                builder.right[-1] = base + int(tree.children_right[node])
        builder.depth = max(builder.depth, int(tree.max_depth))
        roots.append(base)
    nodes = builder.arrays(False)
    return CompiledTrees(model, nodes, roots, builder.depth, strict_less=False, float32=True, average=True)


def compile_trees(family: str, model: RawModel, width: int) -> RawModel:
    """``model`` with a compiled small-batch path when it reproduces the native scores, else ``model``.

    A soft-vote ensemble keeps its members and weights; each tree member is compiled under its own
    family's rules, so a single record never reaches a native library's per-call overhead.
    """
    if isinstance(model, EnsembleModel):
        return EnsembleModel(
            [(member, compile_trees(member, raw, width), weight) for member, raw, weight in model.members]
        )
    builders = {"lightgbm": _lightgbm_trees, "xgboost": _xgboost_trees, "random_forest": _forest_trees}
    if family not in builders:
        return model
    try:
        compiled = builders[family](model)
    except Exception:  # an unfamiliar dump layout: the native library still works
        return model
    if compiled is None:
        return model
    probe = np.random.default_rng(0).normal(size=(64, width)) * (np.arange(64) % 2)[:, None]
    probe[::3] = np.round(probe[::3])  # one-hot-like 0/1 columns too
    native = model.raw_proba(probe)
    if family == "xgboost":
        compiled.offset = float(np.median(_margin(native) - _margin(compiled.raw_proba(probe))))
    if not np.allclose(compiled.raw_proba(probe), native, rtol=0.0, atol=1e-6):
        return model
    compiled.max_rows = _COMPILED_MAX_ROWS[family]  # only now: the check above must run the compiled path
    return compiled


def _margin(probability: np.ndarray) -> np.ndarray:
    return np.log(probability / (1.0 - probability))


class Predictor:
    """A loaded, verified, warmed-up bundle. Immutable once built, so it can be swapped atomically."""

    def __init__(
        self, bundle_dir: Path, manifest: Manifest, scorer: Scorer, risk: RiskPolicy, top_reasons: int = 3
    ) -> None:
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.schema = manifest.schema
        self.version = manifest.version
        self.threshold = manifest.threshold
        self.scorer = scorer
        self.risk = risk
        self.top_reasons = top_reasons
        self.cleaner = RecordCleaner(self.schema)
        self.row_encoder = RowEncoder(self.schema)
        self.column_encoder = ColumnEncoder(self.schema)
        self.explainer = Explainer(self.schema, scorer.model)
        self.loaded_at = time.time()
        self.load_seconds = 0.0

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: Path, risk: RiskPolicy, top_reasons: int = 3, version: str | None = None) -> Predictor:
        """Load the bundle ``model_dir/current`` names (or exactly ``version``); BundleError with the reason."""
        started = time.perf_counter()
        try:
            bundle_dir = current_bundle_dir(model_dir) if version is None else model_dir / version
            manifest = verify_bundle(bundle_dir)  # every SHA-256 checked before anything is unpickled
            native = load_raw_model(bundle_dir, manifest)
            model = compile_trees(manifest.model_family, native, manifest.schema.n_encoded)
            scorer = Scorer(model, manifest.calibration)
            predictor = cls(bundle_dir, manifest, scorer, risk, top_reasons)
            predictor.warm_up()
        except BundleError:
            raise
        except Exception as exc:  # an unusable bundle must never take the process down
            raise BundleError(f"cannot load the bundle: {type(exc).__name__}: {exc}") from exc
        predictor.load_seconds = time.perf_counter() - started
        return predictor

    def warm_up(self) -> None:
        """Run both prediction paths once so the first real request pays no first-call costs."""
        example = example_record(self.schema)
        outcome = self.predict_records([example, example], explain=True)
        self.predict_records([example], explain=False)
        if outcome.errors:
            reason = outcome.errors[0].errors[0].msg
            raise BundleError(f"warm-up prediction rejected the schema's own example: {reason}")
        for probability in outcome.scored.probabilities if outcome.scored is not None else []:
            if not math.isfinite(probability) or not 0.0 <= probability <= 1.0:
                raise BundleError(f"warm-up prediction returned {probability!r}, not a probability")

    # ---- prediction -------------------------------------------------------------------------
    def predict_records(self, records: Sequence[Any], explain: bool = True) -> PredictionOutcome:
        """Clean, encode, score and explain ``records``; results keep the input order."""
        started = time.perf_counter()
        errors, batch, values = self._clean(records)
        cleaned_at = time.perf_counter()
        if batch is None:
            return PredictionOutcome(None, errors, None, {"validation": cleaned_at - started})

        encoded = self._encode(batch, values)
        encoded_at = time.perf_counter()

        if explain and self.top_reasons > 0:
            raw, contributions = self.explainer.score_and_explain(encoded.matrix)
        else:
            raw, contributions = self.explainer.score(encoded.matrix), None
        scores = np.clip(apply_calibration(self.scorer.calibration, raw), 0.0, 1.0)
        scored_at = time.perf_counter()

        decisions = scores >= self.threshold
        bands = self.risk.bands_of(scores)
        prediction_ids = new_prediction_ids(len(batch))
        scored = ScoredRecords(
            indices=batch.indices,
            customer_ids=batch.customer_ids,
            prediction_ids=prediction_ids,
            probabilities=scores.tolist(),
            decisions=decisions.tolist(),
            risk_bands=bands,
            actions=list(map(self.risk.actions, bands)),
            warnings=encoded.warnings,
            reasons=None if contributions is None else self._all_reasons(contributions, batch.columns),
            model_version=self.version,
        )
        finished = time.perf_counter()
        stages = {
            "validation": cleaned_at - started,
            "features": encoded_at - cleaned_at,
            "inference": scored_at - encoded_at,
            "explanation": finished - scored_at,
        }
        event = PredictionEvent(
            timestamp=time.time(),
            model_version=self.version,
            prediction_ids=prediction_ids,
            customer_ids=batch.customer_ids,
            columns=batch.columns,
            scores=scores,
            decisions=decisions,
            risk_bands=bands,
            imputed=encoded.imputed,
            unseen=encoded.unseen,
            stage_seconds=stages,
        )
        return PredictionOutcome(scored, errors, event, stages)

    def _clean(self, records: Sequence[Any]) -> tuple[list[RecordError], CleanBatch | None, dict[str, Any] | None]:
        """The errors, the valid records by column (None if there are none) and a single record's values."""
        if len(records) != 1:
            errors, batch = self.cleaner.clean_many(records)
            return errors, batch if len(batch) else None, None
        result = self.cleaner.clean(records[0], 0)
        if isinstance(result, RecordError):
            return [result], None, None
        return [], CleanBatch.of_one(result), result.values

    def _encode(self, batch: CleanBatch, values: dict[str, Any] | None) -> EncodeResult:
        if values is not None:
            matrix = self.row_encoder.encode(values)
            if matrix is not None:
                return EncodeResult(matrix=matrix, warnings=[[]], imputed=[], unseen=[])
            return self.schema.encode(batch.columns, 1)
        return self.column_encoder.encode(batch.columns, len(batch))

    def _all_reasons(self, contributions: np.ndarray, columns: dict[str, list[Any]]) -> list[list[dict[str, Any]]]:
        return [self._reasons(row_contributions, columns, row) for row, row_contributions in enumerate(contributions)]

    def _reasons(self, contributions: np.ndarray, columns: dict[str, list[Any]], row: int) -> list[dict[str, Any]]:
        names = self.explainer.feature_names
        return [
            {
                "feature": names[position],
                "value": self.display_value(names[position], columns[names[position]][row]),
                "contribution": round(contribution, 6),
            }
            for position, contribution in self.explainer.top_features(contributions, self.top_reasons)
        ]

    def display_value(self, name: str, cleaned: Any) -> Any:
        """A value as the customer table writes it: imputed values filled in, booleans as their labels."""
        spec = self.schema[name]
        if cleaned is None:
            return spec.example()
        if spec.kind == "boolean" and spec.true_label is not None:
            return spec.true_label if cleaned else spec.false_label
        if spec.integer and isinstance(cleaned, float) and cleaned.is_integer():
            return int(cleaned)
        return cleaned


def build_predictor(settings: Settings, version: str | None = None) -> Predictor:
    """The predictor for ``settings.model_dir/current`` (or ``version``) with the configured bands and playbook."""
    risk = RiskPolicy(settings.risk_bands, settings.playbook)
    return Predictor.load(settings.model_dir, risk, settings.top_reasons, version=version)
