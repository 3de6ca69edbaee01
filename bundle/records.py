"""The record cleaner: parsed JSON records -> the valid ones by column, plus each other one's field errors.

Records are cleaned a column at a time: each feature's values go through its :class:`ValueRule`
(the rules training uses), each distinct value once, numbers in one numpy pass. One record is a
column of length one, so a single prediction and a batch take the same path. Errors follow
FastAPI's shape (``type``, ``loc``, ``msg``, ``input``), relative to the record.

What a record may hold: the schema's features; ``customer_id`` (or the training table's id column),
echoed back; the target and the columns training deliberately dropped, accepted and ignored, so a
row copied from the training table is valid. Anything else is an unknown field. A missing feature
(absent, null, blank or a missing marker) is imputed by the encoder, unless its spec is ``required``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from bundle.rules import FeatureValueError, ValueRule

if TYPE_CHECKING:
    from bundle.features import FeatureSchema, FeatureSpec

CUSTOMER_ID = "customer_id"
# The longest text a feature value or a customer id may be: far beyond any category or number
# written as text, and within the prediction log's columns. Longer text is an invalid value.
MAX_TEXT_LENGTH = 256
# Distinct raw values remembered per feature: categories repeat, so a large batch is mostly
# dictionary hits. With the text limit, a feature's cache holds at most about 1 MB.
CLEAN_CACHE_SIZE = 4096
# Problems listed per record: the rest are counted in one last entry, so an error answer stays
# about the size of the request that caused it.
MAX_ERRORS_PER_RECORD = 10
# How much of an offending input an error echoes back.
EXCERPT_LENGTH = 64
_NULL = type(None)
_NUMBER_TYPES = frozenset({bool, int, float})
_JSON_SCALARS = frozenset({str, bool, int, float, _NULL})
_NUMBERS_OR_NULL = frozenset({bool, int, float, _NULL})
_TEXT_OR_NULL = frozenset({str, _NULL})


@dataclass(slots=True)
class FieldError:
    """One problem with one input field; ``loc`` is relative to the record."""

    loc: tuple[str | int, ...]
    msg: str
    type: str
    input: Any = None

    def to_dict(self, prefix: tuple[str | int, ...] = ()) -> dict[str, Any]:
        loc = [*prefix, *(excerpt(part) for part in self.loc)]
        return {"type": self.type, "loc": loc, "msg": self.msg, "input": excerpt(self.input)}


def excerpt(value: Any) -> Any:
    """``value`` as an error may echo it: short text and scalars whole, anything longer cut short."""
    if value.__class__ is str:
        return value if len(value) <= EXCERPT_LENGTH else f"{value[:EXCERPT_LENGTH]}... ({len(value)} characters)"
    if isinstance(value, (list, dict)):
        if len(value) <= 4 and len(repr(value)) <= EXCERPT_LENGTH:
            return value
        return f"({type(value).__name__} of {len(value)} items)"
    return value


@dataclass(slots=True)
class RecordError:
    """A record that could not be scored, with every problem found in it."""

    index: int
    customer_id: str | None
    errors: list[FieldError]

    def to_dict(self, prefix: tuple[str | int, ...] = ()) -> dict[str, Any]:
        return {
            "index": self.index,
            "customer_id": self.customer_id,
            "errors": [error.to_dict((*prefix, self.index)) for error in self.listed_errors()],
        }

    def listed_errors(self) -> list[FieldError]:
        """The first :data:`MAX_ERRORS_PER_RECORD` problems, and one entry counting the rest."""
        if len(self.errors) <= MAX_ERRORS_PER_RECORD:
            return self.errors
        more = len(self.errors) - MAX_ERRORS_PER_RECORD + 1
        return [
            *self.errors[: MAX_ERRORS_PER_RECORD - 1],
            FieldError((), f"and {more} more problems", "too_many_errors"),
        ]


@dataclass(slots=True)
class CleanBatch:
    """The valid records of one call, by column: all that encoding, scoring and monitoring need."""

    indices: list[int]  # each valid record's position in the request
    customer_ids: list[str | None]
    columns: dict[str, list[Any]]  # every feature in schema order -> cleaned values (None = missing)

    def __len__(self) -> int:
        return len(self.indices)


class InvalidValue:
    """A cleaning failure, cached like a cleaning so a repeated bad value is not parsed again."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class ColumnCleaner:
    """One feature's :class:`ValueRule` applied to a column, with a bounded cache of distinct values."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.rule = ValueRule(spec)
        self.numeric = spec.kind == "numeric"
        self.lower_bound = spec.lower_bound
        self._cache: dict[tuple[type, Any], Any] = {}

    def clean(self, raw: Sequence[Any]) -> tuple[list[Any], dict[int, str], bool]:
        """The cleaned values (None = missing or invalid), position -> reason for the invalid ones, and
        whether some valid value is missing."""
        if len(raw) == 1:
            cleaned = self.clean_one(raw[0])
            if cleaned.__class__ is InvalidValue:
                return [None], {0: cleaned.message}, False
            return [cleaned], {}, cleaned is None
        try:
            distinct = set(raw)
        except TypeError:  # an unhashable value (a list or object)
            distinct = None
        # Text never equals a number, so the types of the distinct values settle a column of text;
        # numbers need every value's type (True == 1 == 1.0 collapse in a set).
        kinds = set(map(type, distinct)) if distinct is not None else {list}
        if not kinds <= _TEXT_OR_NULL:
            kinds = set(map(type, raw))
        if self.numeric and kinds <= _NUMBERS_OR_NULL:
            numbers = self._numbers(raw)
            if numbers is not None:
                return numbers
        if distinct is not None and (
            kinds <= _TEXT_OR_NULL or (kinds <= _JSON_SCALARS and len(kinds & _NUMBER_TYPES) <= 1)
        ):
            # No two distinct values compare equal (True == 1 == 1.0 is excluded): values key exactly.
            mapping = {value: self.clean_one(value) for value in distinct}
            cleaned = list(map(mapping.__getitem__, raw))
            if not any(value.__class__ is InvalidValue for value in mapping.values()):
                return cleaned, {}, None in mapping.values()
        else:
            cleaned = list(map(self.clean_one, raw))
        invalid = {position: value.message for position, value in enumerate(cleaned) if value.__class__ is InvalidValue}
        missing = any(value is None for value in cleaned)
        for position in invalid:
            cleaned[position] = None
        return cleaned, invalid, missing

    def clean_one(self, raw: Any) -> Any:
        """The cleaning of one value, or InvalidValue with the reason."""
        if raw.__class__ is str and len(raw) > MAX_TEXT_LENGTH:  # refused before it can reach the cache
            return InvalidValue(f"text of {len(raw)} characters is over the limit of {MAX_TEXT_LENGTH}")
        try:
            key = (raw.__class__, raw)  # the type too: True == 1 == 1.0 but they may clean differently
            cleaned = self._cache.get(key, self)
        except TypeError:  # unhashable (a list or object): cleaned without remembering
            return self._clean_uncached(raw)
        if cleaned is self:
            cleaned = self._clean_uncached(raw)
            if len(self._cache) >= CLEAN_CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = cleaned
        return cleaned

    def _clean_uncached(self, raw: Any) -> Any:
        try:
            return self.rule.clean(raw)
        except FeatureValueError as exc:
            return InvalidValue(str(exc))

    def _numbers(self, raw: Sequence[Any]) -> tuple[list[Any], dict[int, str], bool] | None:
        """JSON numbers and nulls checked with numpy, as ``clean_numeric`` reads them; None to go value by value."""
        try:
            numbers = np.array(raw, dtype=np.float64)  # None becomes NaN
        except (OverflowError, ValueError, TypeError):
            return None  # an integer too large for a float: the rules word it
        missing = np.isnan(numbers)
        if np.isinf(numbers).any():
            return None
        cleaned = numbers.tolist()
        gaps = np.flatnonzero(missing).tolist()
        for position in gaps:
            cleaned[position] = None
        below = [] if self.lower_bound is None else np.flatnonzero(numbers < self.lower_bound).tolist()
        if not below:
            return cleaned, {}, bool(gaps)
        message = self.clean_one(raw[below[0]]).message
        for position in below:
            cleaned[position] = None
        return cleaned, dict.fromkeys(below, message), bool(gaps)


class RecordCleaner:
    """Validates parsed records against a schema: ``clean(records)`` -> (valid records by column, errors)."""

    def __init__(self, schema: FeatureSchema) -> None:
        self.names = schema.names
        self.columns = [ColumnCleaner(spec) for spec in schema.features]
        self.required = frozenset(spec.name for spec in schema.features if spec.required)
        table_id = schema.id_column if schema.id_column not in (None, CUSTOMER_ID) else None
        self.id_keys = [CUSTOMER_ID, *([table_id] if table_id else [])]
        ignored = frozenset({schema.target, *schema.dropped_names}) - frozenset(self.id_keys)
        self.allowed = frozenset(self.names) | frozenset(self.id_keys) | ignored
        self._transpose = itemgetter(*self.names) if len(self.names) > 1 else None

    def clean(self, records: Sequence[Any]) -> tuple[CleanBatch, list[RecordError]]:
        """The valid records by column and the others' errors, both in input order."""
        if len(records) == 1:
            valid = self._valid_record(records[0])
            if valid is not None:
                return valid, []
        problems: dict[int, list[tuple[tuple[int, int], FieldError]]] = {}
        if set(map(type, records)) == {dict}:
            rows, positions = records, None
        else:
            positions = [index for index, record in enumerate(records) if record.__class__ is dict]
            rows = [records[index] for index in positions]
            for index, record in enumerate(records):
                if record.__class__ is not dict:
                    error = FieldError((), "Input should be an object of the customer's fields", "dict_type", record)
                    problems[index] = [((0, 0), error)]
        index_of = (lambda row: row) if positions is None else positions.__getitem__
        columns = self._clean_columns(rows, index_of, problems)
        ids = self._customer_ids(rows, index_of, problems)
        if not set().union(*rows) <= self.allowed:
            self._unknown_fields(rows, index_of, problems)
        if not problems:
            return CleanBatch(list(range(len(records))), ids, columns), []
        return self._split(records, rows, index_of, columns, ids, problems)

    def _valid_record(self, record: Any) -> CleanBatch | None:
        """One record by the same value rules, value by value; None at the first problem, which the
        column path then words (a single prediction is mostly a valid record)."""
        if record.__class__ is not dict or not record.keys() <= self.allowed:
            return None
        columns: dict[str, list[Any]] = {}
        for name, cleaner in zip(self.names, self.columns, strict=True):
            value = cleaner.clean_one(record.get(name))
            if value.__class__ is InvalidValue or (value is None and name in self.required):
                return None
            columns[name] = [value]
        customer_id = None
        for key in self.id_keys:  # the preferred key first
            value = record.get(key)
            if value is None:
                continue
            if _id_problem(value) is not None:
                return None
            customer_id = str(value) if customer_id is None else customer_id
        return CleanBatch([0], [customer_id], columns)

    def _clean_columns(self, rows: Sequence[dict[str, Any]], index_of: Any, problems: dict) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = {}
        for position, (name, cleaner, raw) in enumerate(zip(self.names, self.columns, self._raw(rows), strict=True)):
            cleaned, invalid, missing = cleaner.clean(raw)
            for row, message in invalid.items():
                error = FieldError((name,), message, "value_error", raw[row])
                problems.setdefault(index_of(row), []).append(((0, _key_order(rows[row], name)), error))
            if missing and name in self.required:
                for row, value in enumerate(cleaned):
                    if value is None and row not in invalid:
                        error = _missing_required(rows[row], name)
                        problems.setdefault(index_of(row), []).append(((1, position), error))
            columns[name] = cleaned
        return columns

    def _raw(self, rows: Sequence[dict[str, Any]]) -> list[Sequence[Any]]:
        """Each feature's raw values (None where absent), in schema order."""
        if self._transpose is not None and rows:
            try:
                return list(zip(*map(self._transpose, rows), strict=True))  # every record has every feature
            except KeyError:
                pass
        return [list(map(dict.get, rows, repeat(name))) for name in self.names]

    def _customer_ids(self, rows: Sequence[dict[str, Any]], index_of: Any, problems: dict) -> list[str | None]:
        """Each record's id as text (``customer_id`` first, then the table's id column), or None."""
        ids: list[Any] = [None] * len(rows)
        for key in reversed(self.id_keys):  # the preferred key is applied last
            column = list(map(dict.get, rows, repeat(key)))
            kinds = set(map(type, column))
            if kinds == {_NULL}:
                continue
            if kinds <= _TEXT_OR_NULL and max(map(len, filter(None, column)), default=0) <= MAX_TEXT_LENGTH:
                ids = [value if value is not None else current for value, current in zip(column, ids, strict=True)]
                continue
            for row, value in enumerate(column):
                if value is None:
                    continue
                problem = _id_problem(value)
                if problem is None:
                    ids[row] = str(value)
                else:
                    error = FieldError((key,), problem[1], problem[0], value)
                    problems.setdefault(index_of(row), []).append(((0, _key_order(rows[row], key)), error))
        return ids

    def _unknown_fields(self, rows: Sequence[dict[str, Any]], index_of: Any, problems: dict) -> None:
        message = "Unknown field: the model's fields are listed at GET /metadata"
        for row, record in enumerate(rows):
            for key in record.keys() - self.allowed:
                error = FieldError((key,), message, "extra_forbidden", record[key])
                problems.setdefault(index_of(row), []).append(((0, _key_order(record, key)), error))

    def _split(self, records, rows, index_of, columns, ids, problems) -> tuple[CleanBatch, list[RecordError]]:
        """The records without problems by column, and a RecordError (problems in field order) for each other."""
        keep = [row for row in range(len(rows)) if index_of(row) not in problems]
        batch = CleanBatch(
            [index_of(row) for row in keep],
            [ids[row] for row in keep],
            {name: [values[row] for row in keep] for name, values in columns.items()},
        )
        id_of = {index_of(row): ids[row] for row in range(len(rows))}
        errors = [
            RecordError(index, id_of.get(index), [error for _, error in sorted(found, key=_first)])
            for index, found in sorted(problems.items())
        ]
        return batch, errors


def _id_problem(value: Any) -> tuple[str, str] | None:
    """(error type, message) when ``value`` cannot be a customer id."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return "string_type", "Input should be a string or an integer"
    if isinstance(value, str) and len(value) > MAX_TEXT_LENGTH:
        return "string_too_long", f"an id of {len(value)} characters is over the limit of {MAX_TEXT_LENGTH}"
    return None


def _first(item: tuple[tuple[int, int], FieldError]) -> tuple[int, int]:
    return item[0]


def _key_order(record: dict[str, Any], key: str) -> int:
    return list(record).index(key) if key in record else len(record)


def _missing_required(record: dict[str, Any], name: str) -> FieldError:
    if name in record:
        return FieldError((name,), "A value is required (this feature is declared required)", "missing", record[name])
    return FieldError((name,), "Field required", "missing", None)
