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
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np

from app.monitoring.events import PredictionEvent
from app.serving.explain import Explainer
from app.serving.risk import RiskPolicy
from app.settings import Settings
from bundle.features import FALSE_TOKENS, TRUE_TOKENS, EncodeResult, FeatureSchema, FeatureSpec, FeatureValueError
from bundle.manifest import BundleError, Manifest
from bundle.scoring import EnsembleModel, RawModel, Scorer, apply_calibration, load_raw_model
from bundle.store import current_bundle_dir, verify_bundle

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
_NULL_ONLY = {type(None)}
_EXACT_INTEGERS = 2**53
# Text that ``float`` reads exactly as ``clean_numeric`` does: no separators, signs of currency,
# spaces or underscores, and ASCII digits only (``\d`` would admit other scripts' digits).
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Batches after a failed exact decoding that go straight to the lenient decoder: a client whose
# records always carry some quirk (lower-case labels, numbers as categories) pays for the failed
# attempt once in a while, not on every batch.
_EXACT_DECODER_PAUSE = 32


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


def _plain_numbers(spec: FeatureSpec, distinct: set[Any]) -> dict[Any, float]:
    """The cleanings of a numeric feature's distinct values that ``float`` alone settles.

    JSON numbers and plain decimal text ("29.85", "-3", "1e3") that are finite and within the
    feature's lower bound; what ``clean_numeric`` would read the same way at many times the cost.
    The rest (separators, currency signs, missing markers, anything invalid) is left to the rules.
    """
    plain = [
        value
        for value in distinct
        # an integer of hundreds of digits does not fit a float: the rules word that
        if value.__class__ is float or (value.__class__ is int and value.bit_length() <= 1000)
    ]
    plain += filter(_PLAIN_NUMBER.fullmatch, [value for value in distinct if value.__class__ is str])
    low = -math.inf if spec.lower_bound is None else spec.lower_bound
    numbers = zip(plain, map(float, plain), strict=True)
    return {value: number for value, number in numbers if math.isfinite(number) and number >= low}


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
        low = first & 0xFFFF_FFFF
        if count == 1:
            return [f"{prefix}{low:08x}"]
        if low + count <= 0x1_0000_0000:  # no wrap of the 8 digits: one %-format per id, mapped in C
            return list(map(f"{prefix}%08x".__mod__, range(low, low + count)))
        return [f"{prefix}{sequence & 0xFFFF_FFFF:08x}" for sequence in range(first, first + count)]


new_prediction_ids = _PredictionIds().take


def example_record(schema: FeatureSchema) -> dict[str, Any]:
    """A typical customer as a client would send it: every feature at its training imputation value."""
    return {spec.name: spec.example() for spec in schema.features}


def _fixed_field_decoder(fields: list[str], types: list[Any] | None = None) -> msgspec.json.Decoder:
    """Decodes a JSON list of objects whose keys are all among ``fields`` (absent = None).

    With no ``types``, values keep the types JSON gives them, as with a dictionary per record: the
    cleaning rules decide what is valid, not the decoder. Field names may be any text (``rename``);
    slot ``f<i>`` holds ``fields[i]`` whatever the types.
    """
    slots = _slots(len(fields))
    record = msgspec.defstruct(
        "Record",
        [(slot, kind, None) for slot, kind in zip(slots, types or [Any] * len(fields), strict=True)],
        rename=dict(zip(slots, fields, strict=True)),
        forbid_unknown_fields=True,
        gc=False,  # holds JSON scalars only: nothing for the cyclic collector to find
    )
    return msgspec.json.Decoder(list[record])


def _slots(count: int) -> list[str]:
    return [f"f{position}" for position in range(count)]


def _exact_type(spec: FeatureSpec) -> Any:
    """The JSON values of a feature that the exact batch decoder takes; anything else fails it.

    Categories and yes/no labels are literals: msgspec matches them against the request's bytes and
    hands back one shared string object per spelling, so no string is allocated per record and the
    columns' hashing and lookups are pointer comparisons. Numbers arrive as floats; numbers written
    as text are left to the cleaning rules. What is outside these types (an unseen category, other
    case or spacing, an integer category) fails the whole decoding, and the lenient decoder, which
    takes any JSON value, decodes the batch instead: the cleaning rules then decide as always.
    """
    if spec.kind == "numeric":
        return float | str | None
    if spec.kind == "boolean":
        labels = [label for label in (spec.true_label, spec.false_label) if label is not None]
        texts = {*TRUE_TOKENS, *FALSE_TOKENS, *(label for label in labels if isinstance(label, str))}
        whole = {0, 1, *(label for label in labels if isinstance(label, int) and not isinstance(label, bool))}
        return Literal[(*sorted(texts), *sorted(whole))] | bool | None  # type: ignore[valid-type]
    texts = sorted({category for category in spec.categories if isinstance(category, str)})
    return Literal[tuple(texts)] | None if texts else Any  # type: ignore[valid-type]


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
        # Per feature: text value -> its cleaning, for texts that cleaned validly (batches look
        # whole columns up here in one pass). Text never equals a number, so the text is the key.
        self._known_texts: dict[str, dict[str, Any]] = {name: {} for name in schema.names}
        self._batch_fields = [*self.names, *sorted(self.allowed - frozenset(self.names))]
        self._lenient_decoder = _fixed_field_decoder(self._batch_fields)
        exact_types = [_exact_type(schema[name]) for name in self.names]
        exact_types += [Any] * (len(self._batch_fields) - len(self.names))
        self._exact_decoder = _fixed_field_decoder(self._batch_fields, exact_types)
        self._exact_paused = 0

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

    def clean_json_batch(self, body: bytes, max_records: int) -> CleanBatch | None:
        """A JSON list of 1 to ``max_records`` valid records, cleaned straight from the request's bytes.

        The records are decoded into objects with a fixed slot per known field instead of one
        dictionary each: half the parsing time, and the columns come out of one transposition.
        The exact decoder (see :func:`_exact_type`) is tried first and the lenient one when it
        fails. Anything else (invalid JSON, not a list of objects, an unknown field, too many
        records, any record with a problem) gives None: the caller then takes the general path,
        which words each problem.
        """
        records = None
        exact_failed = False
        # A plain counter shared by the worker's threads: a lost update only shifts the pause.
        if self._exact_paused > 0:
            self._exact_paused -= 1
        else:
            try:
                records = self._exact_decoder.decode(body)
            except msgspec.ValidationError:
                exact_failed = True
            except msgspec.MsgspecError:
                return None  # not JSON at all
        if records is None:
            try:
                records = self._lenient_decoder.decode(body)
            except msgspec.MsgspecError:
                return None  # not a list of records with known fields: no reason to pause
            if exact_failed:
                self._exact_paused = _EXACT_DECODER_PAUSE  # a quirk of spelling: likely to come again
        if not 0 < len(records) <= max_records:
            return None
        # Every record has every slot, so the transposition is exact (and, in C, faster than a
        # getter per field).
        transposed = zip(*map(msgspec.structs.astuple, records), strict=True)
        raw_columns = dict(zip(self._batch_fields, transposed, strict=True))
        columns: dict[str, list[Any]] = {}
        for name in self.names:
            columns[name], bad = self._clean_column(name, raw_columns[name])
            if bad:
                return None
        ids = self._customer_ids(raw_columns.__getitem__, len(records))
        if _MISSING in ids:
            return None
        return CleanBatch(list(range(len(records))), ids, columns)

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
        ids = self._customer_ids(lambda key: list(map(dict.get, rows, repeat(key))), len(rows))
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
        if set(map(type, records)) == {dict} and set().union(*records) <= self.allowed:
            return list(range(len(records))), set()  # the usual batch: settled in two passes in C
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

    def _customer_ids(self, column_of: Callable[[str], Sequence[Any]], size: int) -> list[Any]:
        """Each record's id as text, None without one, or _MISSING when it is not a string or integer.

        ``column_of(key)`` gives the records' raw values of the field ``key`` (None where absent).
        ``customer_id`` wins over the training table's id column, as in :meth:`clean`.
        """
        ids: list[Any] = [None] * size
        keys = [key for key in (CUSTOMER_ID, self.schema.id_column) if key]
        first = True
        for key in reversed(keys):  # the preferred key is applied last
            column = column_of(key)
            kinds = set(map(type, column))
            if kinds == _NULL_ONLY:
                continue  # no record uses this key (the usual case for one of the two)
            if not kinds <= _TEXT_OR_NULL:
                column = [_id_text(value) if value is not None else None for value in column]
            if first:
                ids = list(column)
            else:
                ids = [value if value is not None else current for value, current in zip(column, ids, strict=True)]
            first = False
        return ids

    def _clean_column(self, name: str, raw: Sequence[Any]) -> tuple[list[Any], list[int]]:
        """Cleaned values of one feature and the positions that are invalid or missing but required."""
        spec = self.schema[name]
        required = name in self.required_set
        if spec.kind == "numeric":
            kinds = set(map(type, raw))
            if kinds and kinds <= _JSON_NUMBER_OR_NULL:
                numbers = self._clean_numbers(spec, raw, required)
                if numbers is not None:
                    return numbers
        distinct = _distinct(raw)
        known = self._known_texts[name]
        if known and distinct is not None and distinct <= known.keys():
            # Text values cleaned before (categories, yes/no labels): one pass of lookups. Known
            # keys are all text, which never equals a number or null, so the test above is exact.
            cleaned = list(map(known.__getitem__, raw))
            if required and any(known[value] is None for value in distinct):
                return cleaned, [i for i, value in enumerate(cleaned) if value is None]
            return cleaned, []
        if distinct is not None and _values_key_exactly(raw, distinct):
            # Each distinct value is cleaned once.
            cache = self._caches[name]
            mapping = _plain_numbers(spec, distinct) if spec.kind == "numeric" else {}
            for value in distinct.difference(mapping) if mapping else distinct:
                mapping[value] = self._clean_cached(cache, name, value)
            self._remember_texts(name, mapping)
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
    def _clean_numbers(spec: FeatureSpec, raw: Sequence[Any], required: bool) -> tuple[list[Any], list[int]] | None:
        """A column of JSON numbers and nulls, checked with numpy (null is missing, like in ``clean_value``).

        None when some number does not fit a float (an integer of hundreds of digits): the value
        by value path then reports it.
        """
        try:
            numbers = np.array(raw, dtype=np.float64)  # None becomes NaN
        except (OverflowError, ValueError, TypeError):
            return None
        if np.isinf(numbers).any():
            return None
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

    def _remember_texts(self, name: str, mapping: dict[Any, Any]) -> None:
        """Keep the valid cleanings of text values for the one-pass lookup of later batches."""
        known = self._known_texts[name]
        if len(known) >= _CLEAN_CACHE_SIZE or self.schema[name].kind == "numeric":
            return  # numbers sent as text are too varied to be worth remembering
        for value, cleaned in mapping.items():
            if value.__class__ is str and cleaned.__class__ is not _Invalid:
                known[value] = cleaned

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
            elif rule.minimum is not None and not rule.minimum <= value <= rule.maximum:
                return None  # outside the training range: the full encoder warns about it
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
                if spec.minimum is not None and spec.maximum is not None:
                    needs_schema |= (raw < spec.minimum) | (raw > spec.maximum)  # warned about there
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
            result.out_of_range = [(special[position], name) for position, name in exact.out_of_range]
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


TREE_FAMILIES = frozenset({"lightgbm", "xgboost", "random_forest"})


def compiled(family: str, native: RawModel, width: int) -> RawModel:
    """The model with its tree ensembles compiled (see ``app.serving.trees``); others as they are.

    The compiler (numba) is imported only for a bundle with trees, like torch only for an MLP.
    """
    members = [member for member, _, _ in native.members] if isinstance(native, EnsembleModel) else [family]
    if not TREE_FAMILIES.intersection(members):
        return native
    from app.serving.trees import compile_trees

    return compile_trees(family, native, width)


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
            model = compiled(manifest.model_family, native, manifest.schema.n_encoded)
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
        return self._predict_clean(errors, batch, values, started, explain)

    def predict_json_batch(self, body: bytes, max_records: int, explain: bool = True) -> PredictionOutcome | None:
        """``predict_records`` of a JSON list of 1 to ``max_records`` valid records, from its bytes.

        None when the body is anything else (invalid JSON, not a list, too many records, a record
        with a problem): decode it and call :meth:`predict_records`, which reports each problem.
        """
        started = time.perf_counter()
        batch = self.cleaner.clean_json_batch(body, max_records)
        if batch is None:
            return None
        return self._predict_clean([], batch, None, started, explain)

    def _predict_clean(
        self,
        errors: list[RecordError],
        batch: CleanBatch | None,
        values: dict[str, Any] | None,
        started: float,
        explain: bool,
    ) -> PredictionOutcome:
        cleaned_at = time.perf_counter()
        if batch is None:
            return PredictionOutcome(None, errors, None, {"validation": cleaned_at - started})

        encoded = self._encode(batch, values)
        encoded_at = time.perf_counter()

        if explain and self.top_reasons > 0:
            raw, contributions = self.explainer.score_and_explain(encoded.matrix)
        else:
            raw, contributions = self.explainer.score(encoded.matrix), None
        # np.minimum/np.maximum, not np.clip: the same values at a fraction of the cost on one row.
        scores = np.minimum(np.maximum(apply_calibration(self.scorer.calibration, raw), 0.0), 1.0)
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
            out_of_range=encoded.out_of_range,
            stage_seconds=stages,
            row=None if values is None else tuple(values.values()),
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
        if len(contributions) == 1:  # /predict: plain Python beats numpy's per-call cost on one row
            return [self._reasons(self.explainer.top_features(contributions[0], self.top_reasons), columns, 0)]
        ranked = self.explainer.top_features_many(contributions, self.top_reasons)
        return [self._reasons(top, columns, row) for row, top in enumerate(ranked)]

    def _reasons(self, top: list[tuple[int, float]], columns: dict[str, list[Any]], row: int) -> list[dict[str, Any]]:
        names = self.explainer.feature_names
        return [
            {
                "feature": names[position],
                "value": self.display_value(names[position], columns[names[position]][row]),
                "contribution": round(contribution, 6),
            }
            for position, contribution in top
        ]

    def display_value(self, name: str, cleaned: Any) -> Any:
        """A value as the customer table writes it: imputed values filled in, booleans as their labels."""
        spec = self.schema[name]
        if cleaned is None:
            return spec.example()
        if spec.kind == "boolean" and spec.true_label is not None:
            return spec.true_label if cleaned else spec.false_label
        if spec.integer and isinstance(cleaned, float) and cleaned.is_integer() and abs(cleaned) <= _EXACT_INTEGERS:
            return int(cleaned)  # beyond 2**53 a float is no longer an exact whole number: keep it a float
        return cleaned


def build_predictor(settings: Settings, version: str | None = None) -> Predictor:
    """The predictor for ``settings.model_dir/current`` (or ``version``) with the configured bands and playbook."""
    risk = RiskPolicy(settings.risk_bands, settings.playbook)
    return Predictor.load(settings.model_dir, risk, settings.top_reasons, version=version)
