"""The encoder: cleaned columns (None = missing) -> the model matrix and what had to be assumed per row.

Features are encoded by kind, each kind in a few numpy operations over all of its features at once,
so the work per call does not grow with the number of features. One row (every ``/predict``) takes
the same parameters through a plain loop instead, where numpy's cost per call would exceed the
work; the tests hold the two to identical results. Missing values take the training value (every
feature has one, whether or not training saw gaps), numbers are capped, log-transformed where
fitted and scaled, categories are one-hot encoded with rare and unseen ones in the "other" column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bundle.features import FeatureSchema

# Category codes besides matrix columns: a missing value and a category training never saw.
_MISSING = -2
_UNSEEN = -1


@dataclass
class EncodeResult:
    """The model matrix for a batch plus what had to be assumed for each row."""

    matrix: np.ndarray
    warnings: list[list[str]]
    imputed: list[tuple[int, str]]  # (row, feature) pairs filled with the training value
    unseen: list[tuple[int, str]]  # (row, feature) pairs with a category training never saw
    # (row, feature) pairs with a number outside the training range: capped, but the model never saw one
    out_of_range: list[tuple[int, str]] = field(default_factory=list)


class Encoder:
    """Encodes cleaned columns by a fitted schema (see :meth:`encode`)."""

    def __init__(self, schema: FeatureSchema) -> None:
        self.width = schema.n_encoded
        self.names = schema.names
        groups = dict(schema.encoded_groups())
        position = {spec.name: index for index, spec in enumerate(schema.features)}
        # Numbers and yes/no values are one group: a yes/no spec is a number (0 or 1) whose caps,
        # range, transform and scaling keep their neutral defaults.
        scalars = [spec for spec in schema.features if spec.kind != "categorical"]
        self.scalars = [spec.name for spec in scalars]
        self.scalar_at = np.array([position[name] for name in self.scalars], dtype=np.intp)
        self.scalar_columns = np.array([groups[name].start for name in self.scalars], dtype=np.intp)

        def parameter(values: list[Any], default: float) -> np.ndarray:
            return np.array([default if value is None else float(value) for value in values], dtype=np.float64)[:, None]

        self.impute = parameter([spec.impute for spec in scalars], 0.0)
        self.low = parameter([spec.cap_low for spec in scalars], -np.inf)
        self.high = parameter([spec.cap_high for spec in scalars], np.inf)
        self.minimum = parameter([spec.minimum for spec in scalars], -np.inf)
        self.maximum = parameter([spec.maximum for spec in scalars], np.inf)
        self.mean = parameter([spec.mean for spec in scalars], 0.0)
        self.std = parameter([spec.std for spec in scalars], 1.0)
        self.logged = np.array([spec.log_transform for spec in scalars], dtype=bool)
        self.any_logged = bool(self.logged.any())
        self.indicated = np.array([spec.missing_indicator for spec in scalars], dtype=bool)
        self.indicator_columns = self.scalar_columns[self.indicated] + 1
        categories = [spec for spec in schema.features if spec.kind == "categorical"]
        self.categorical = [spec.name for spec in categories]
        self.categorical_at = np.array([position[name] for name in self.categorical], dtype=np.intp)
        self.lookups: list[dict[Any, int]] = []
        impute, other = [], []
        for spec in categories:
            start = groups[spec.name].start
            other_column = start + len(spec.encoded) if spec.other_bucket else _UNSEEN
            # Rare training categories share the "other" column silently; None is the missing code.
            lookup: dict[Any, int] = {value: other_column for value in spec.categories}
            lookup.update({value: start + i for i, value in enumerate(spec.encoded)})
            lookup[None] = _MISSING
            self.lookups.append(lookup)
            impute.append(lookup.get(spec.impute, other_column))
            other.append(other_column)
        self.category_impute = np.array(impute, dtype=np.intp)[:, None]
        self.other = np.array(other, dtype=np.intp)[:, None]
        self.every_value_has_a_column = all(column >= 0 for column in other)
        self.messages = _messages(schema)
        self.row_plan = self._row_plan(schema, position)

    def _row_plan(self, schema: FeatureSchema, position: dict[str, int]) -> list[tuple[Any, ...]]:
        """Each feature's parameters as Python values, in schema order, for :meth:`encode_row`."""
        scalar_index = {name: index for index, name in enumerate(self.scalars)}
        category_index = {name: index for index, name in enumerate(self.categorical)}
        plan: list[tuple[Any, ...]] = []
        for spec in schema.features:
            if spec.name in category_index:
                i = category_index[spec.name]
                plan.append((spec.name, False, self.lookups[i], int(self.category_impute[i, 0]), int(self.other[i, 0])))
                continue
            i = scalar_index[spec.name]
            indicator = int(self.scalar_columns[i]) + 1 if self.indicated[i] else -1
            numbers = (self.impute, self.low, self.high, self.minimum, self.maximum, self.mean, self.std)
            parameters = [float(array[i, 0]) for array in numbers]
            plan.append((spec.name, True, int(self.scalar_columns[i]), *parameters, bool(self.logged[i]), indicator))
        return plan

    def encode(self, columns: Mapping[str, Sequence[Any]], n_rows: int) -> EncodeResult:
        """Encode ``columns`` (feature -> cleaned values, None = missing; an absent feature is all missing)."""
        if n_rows == 1:
            return self.encode_row(columns)
        return self.encode_columns(columns, n_rows)

    def encode_row(self, columns: Mapping[str, Sequence[Any]]) -> EncodeResult:
        """:meth:`encode_columns` of one row, by a loop over the features."""
        row = [0.0] * self.width
        imputed: list[str] = []
        unseen: list[str] = []
        outside: list[str] = []
        for name, scalar, *plan in self.row_plan:
            given = columns.get(name)
            value = None if given is None else given[0]
            if scalar:
                column, impute, low, high, minimum, maximum, mean, std, logged, indicator = plan
                if value is None or value != value:  # None, or NaN
                    value = impute
                    imputed.append(name)
                    if indicator >= 0:
                        row[indicator] = 1.0
                else:
                    value = float(value)
                    if value < minimum or value > maximum:
                        outside.append(name)
                value = min(max(value, low), high)
                if logged:
                    value = float(np.log1p(max(value, 0.0)))  # numpy's, to the last bit of the column path
                row[column] = (value - mean) / std
                continue
            lookup, impute_code, other = plan
            code = lookup.get(value, _UNSEEN)
            if code == _MISSING:
                code = impute_code
                imputed.append(name)
            if code == _UNSEEN:
                code = other
                unseen.append(name)
            if code >= 0:
                row[code] = 1.0
        matrix = np.array([row], dtype=np.float64)
        if not (imputed or unseen or outside):
            return EncodeResult(matrix=matrix, warnings=[[]], imputed=[], unseen=[])
        found = (imputed, unseen, outside)
        warnings = [messages[name] for names, messages in zip(found, self.messages, strict=True) for name in names]
        pairs = [[(0, name) for name in names] for names in found]
        return EncodeResult(
            matrix=matrix, warnings=[warnings], imputed=pairs[0], unseen=pairs[1], out_of_range=pairs[2]
        )

    def encode_columns(self, columns: Mapping[str, Sequence[Any]], n_rows: int) -> EncodeResult:
        """Encode by kind, a few numpy operations per kind over all rows."""
        matrix = np.zeros((n_rows, self.width), dtype=np.float64)
        if n_rows == 0:
            return EncodeResult(matrix=matrix, warnings=[], imputed=[], unseen=[])
        absent = [None] * n_rows

        def values(name: str) -> Sequence[Any]:
            given = columns.get(name)
            return absent if given is None else given

        imputed: list[tuple[np.ndarray, np.ndarray]] = []
        unseen: list[tuple[np.ndarray, np.ndarray]] = []
        outside: list[tuple[np.ndarray, np.ndarray]] = []
        if self.scalars:
            raw = np.array([values(name) for name in self.scalars], dtype=np.float64).reshape(-1, n_rows)
            missing = np.isnan(raw)
            beyond = (raw < self.minimum) | (raw > self.maximum)  # missing (NaN) compares False
            if beyond.any():
                outside.append(_flagged(beyond, self.scalar_at))
            if missing.any():
                np.copyto(raw, self.impute, where=missing)
                imputed.append(_flagged(missing, self.scalar_at))
            np.clip(raw, self.low, self.high, out=raw)
            if self.any_logged:
                raw[self.logged] = np.log1p(np.maximum(raw[self.logged], 0.0))
            raw -= self.mean
            raw /= self.std
            matrix[:, self.scalar_columns] = raw.T
            if self.indicator_columns.size:
                matrix[:, self.indicator_columns] = missing[self.indicated].T
        if self.categorical:
            codes = np.array(
                [
                    list(map(lookup.get, values(name), repeat(_UNSEEN)))
                    for name, lookup in zip(self.categorical, self.lookups, strict=True)
                ],
                dtype=np.intp,
            ).reshape(-1, n_rows)
            missing = codes == _MISSING
            if missing.any():
                codes = np.where(missing, self.category_impute, codes)
                imputed.append(_flagged(missing, self.categorical_at))
            new = codes == _UNSEEN
            if new.any():
                codes = np.where(new, self.other, codes)
                unseen.append(_flagged(new, self.categorical_at))
            if self.every_value_has_a_column:
                matrix[np.arange(n_rows), codes] = 1.0  # row r of each feature's codes sets a column of row r
            else:  # an unseen value of a feature without an "other" column sets none
                features, rows = np.nonzero(codes >= 0)
                matrix[rows, codes[features, rows]] = 1.0
        return self._result(matrix, n_rows, imputed, unseen, outside)

    def _result(self, matrix, n_rows, imputed, unseen, outside) -> EncodeResult:
        if not (imputed or unseen or outside):
            return EncodeResult(matrix=matrix, warnings=[[] for _ in range(n_rows)], imputed=[], unseen=[])
        pairs = [_pairs(found, self.names) for found in (imputed, unseen, outside)]
        warnings: list[list[str]] = [[] for _ in range(n_rows)]
        for found, messages in zip(pairs, self.messages, strict=True):
            for row, name in found:
                warnings[row].append(messages[name])
        return EncodeResult(matrix=matrix, warnings=warnings, imputed=pairs[0], unseen=pairs[1], out_of_range=pairs[2])


def _flagged(flags: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(schema positions, rows) of the flagged cells of a (features, rows) array."""
    features, rows = np.nonzero(flags)
    return at[features], rows


def _pairs(found: list[tuple[np.ndarray, np.ndarray]], names: list[str]) -> list[tuple[int, str]]:
    """(row, feature) pairs ordered by feature in schema order, then row."""
    found = [(positions, rows) for positions, rows in found if rows.size]
    if not found:
        return []
    positions = np.concatenate([positions for positions, _ in found])
    rows = np.concatenate([rows for _, rows in found])
    order = np.lexsort((rows, positions))
    ordered = zip(rows[order].tolist(), positions[order].tolist(), strict=True)
    return [(row, names[position]) for row, position in ordered]


def _messages(schema: FeatureSchema) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Each feature's warning when imputed, when its category is unseen, when outside the training range."""
    imputed = {
        spec.name: f"{spec.name}: missing, imputed with the training value {spec.example()!r}"
        for spec in schema.features
    }
    unseen = {spec.name: f"{spec.name}: category not seen in training, treated as 'other'" for spec in schema.features}
    outside = {
        spec.name: f"{spec.name}: outside the training range ({spec.minimum:g} to {spec.maximum:g}); "
        "the model has seen no such value"
        for spec in schema.features
        if spec.kind == "numeric" and spec.minimum is not None and spec.maximum is not None
    }
    return imputed, unseen, outside
