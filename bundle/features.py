"""The one feature definition shared by training and serving.

A :class:`FeatureSchema` is learned from a training table and saved as plain JSON in the
bundle manifest. It holds everything needed to turn raw customer values into the model's
numeric matrix: the learned imputation values, outlier caps, scaling and one-hot layouts.
The cleaning rules live in :mod:`bundle.rules` (one value) and :mod:`bundle.records` (whole
records, by column); the encoding in :mod:`bundle.encoding`. Training and serving both reach
them through this schema (:meth:`FeatureSchema.clean_value`, :func:`clean_columns`,
:meth:`FeatureSchema.encode`), so the two can never disagree, and no pickled transformer is
needed to predict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from bundle.encoding import Encoder, EncodeResult
from bundle.records import ColumnCleaner
from bundle.rules import (
    FALSE_TOKENS,
    MISSING_MARKERS,
    TRUE_TOKENS,
    FeatureValueError,
    ValueRule,
    clean_boolean,
    clean_category,
    clean_numeric,
    is_missing,
)

__all__ = [
    "FALSE_TOKENS",
    "MISSING_MARKERS",
    "TRUE_TOKENS",
    "DroppedColumn",
    "EncodeResult",
    "FeatureKind",
    "FeatureSchema",
    "FeatureSpec",
    "FeatureValueError",
    "clean_boolean",
    "clean_category",
    "clean_columns",
    "clean_numeric",
    "fit_feature",
    "is_missing",
]

FeatureKind = Literal["numeric", "boolean", "categorical"]
OTHER_CATEGORY = "__other__"


@dataclass
class FeatureSpec:
    """One input column the model uses, with what training learned about it."""

    name: str
    kind: FeatureKind
    required: bool = False  # declared by the user: a record without a value is refused instead of imputed
    impute: Any = None  # median (numeric), mode (categorical/boolean) of the training split
    missing_rate: float = 0.0
    description: str = ""
    # numeric
    integer: bool = False
    minimum: float | None = None  # observed training range
    maximum: float | None = None
    lower_bound: float | None = None  # validation floor: 0 for features that are never negative
    cap_low: float | None = None  # outlier caps (IQR fences, or the observed range)
    cap_high: float | None = None
    log_transform: bool = False  # skewed non-negative features are encoded as log1p
    mean: float = 0.0  # scaling of the (capped, transformed) value
    std: float = 1.0
    missing_indicator: bool = False
    # boolean: the labels the training table used, so rows copied from it are accepted
    true_label: Any = None
    false_label: Any = None
    # categorical
    categories: list[str] = field(default_factory=list)  # every accepted value
    encoded: list[str] = field(default_factory=list)  # values with a one-hot column of their own
    other_bucket: bool = False  # rare values (and unseen ones) share one "other" column

    def encoded_names(self) -> list[str]:
        if self.kind == "numeric":
            names = [self.name]
            if self.missing_indicator:
                names.append(f"{self.name}__missing")
            return names
        if self.kind == "boolean":
            return [self.name]
        names = [f"{self.name}={value}" for value in self.encoded]
        if self.other_bucket:
            names.append(f"{self.name}={OTHER_CATEGORY}")
        return names

    def example(self) -> Any:
        """A typical value (the imputation value), as a client would send it."""
        if self.kind == "boolean":
            label = self.true_label if self.impute else self.false_label
            return label if label is not None else bool(self.impute)
        if self.kind == "numeric" and self.integer and self.impute is not None:
            return round(self.impute)
        return self.impute


@dataclass
class DroppedColumn:
    """A column seen in training and deliberately not used, with the reason."""

    name: str
    reason: str


@dataclass
class FeatureSchema:
    """The versioned contract between a training run and the service that serves its model."""

    features: list[FeatureSpec]
    target: str
    positive_label: Any
    id_column: str | None = None
    dropped: list[DroppedColumn] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_name = {spec.name: spec for spec in self.features}
        self._rules = {spec.name: ValueRule(spec) for spec in self.features}
        self._offsets: dict[str, int] = {}
        offset = 0
        for spec in self.features:
            self._offsets[spec.name] = offset
            offset += len(spec.encoded_names())
        self.n_encoded = offset
        self._encoder: Encoder | None = None

    # ---- lookups -------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.features]

    def __getitem__(self, name: str) -> FeatureSpec:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def encoded_names(self) -> list[str]:
        return [name for spec in self.features for name in spec.encoded_names()]

    def encoded_groups(self) -> list[tuple[str, slice]]:
        """Which matrix columns belong to which input feature (for per-feature explanations)."""
        return [
            (spec.name, slice(self._offsets[spec.name], self._offsets[spec.name] + len(spec.encoded_names())))
            for spec in self.features
        ]

    @property
    def dropped_names(self) -> list[str]:
        return [column.name for column in self.dropped]

    # ---- cleaning and encoding (defined in bundle.rules, bundle.records, bundle.encoding) ---------
    def clean_value(self, name: str, value: Any) -> Any:
        """Clean one raw value by its feature's rules (None = missing); FeatureValueError with the reason."""
        return self._rules[name].clean(value)

    def encode(self, columns: Mapping[str, Sequence[Any]], n_rows: int) -> EncodeResult:
        """Encode cleaned column values (None = missing) into the model matrix, with per-row warnings.

        Missing values are imputed with the training value, numbers are capped, transformed and
        scaled, categories one-hot encoded; rare and unseen categories go to the "other" column.
        """
        if self._encoder is None:
            self._encoder = Encoder(self)
        return self._encoder.encode(columns, n_rows)

    # ---- persistence ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "positive_label": self.positive_label,
            "id_column": self.id_column,
            "features": [asdict(spec) for spec in self.features],
            "dropped": [asdict(column) for column in self.dropped],
            "encoded_names": self.encoded_names(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSchema:
        known = set(FeatureSpec.__dataclass_fields__)
        features = [FeatureSpec(**{k: v for k, v in item.items() if k in known}) for item in data["features"]]
        schema = cls(
            features=features,
            target=data["target"],
            positive_label=data.get("positive_label"),
            id_column=data.get("id_column"),
            dropped=[DroppedColumn(**item) for item in data.get("dropped", [])],
        )
        saved = data.get("encoded_names")
        if saved is not None and list(saved) != schema.encoded_names():
            raise ValueError("feature schema is inconsistent: its encoded column layout does not match its features")
        return schema


# ---- fitting (training only; lives here so the parameters are defined beside their use) -------
MAX_ENCODED_CATEGORIES = 200
MAX_LISTED_CATEGORIES = 500
# A category seen on this many training rows has enough of them to learn its own effect from,
# whatever the table's size; smaller tables ask for 0.2% of their rows (at least 5).
ROWS_TO_LEARN_A_CATEGORY = 20


def fit_feature(
    name: str,
    kind: FeatureKind,
    values: Sequence[Any],
    *,
    true_label: Any = None,
    false_label: Any = None,
    cap_outliers: bool = True,
    max_encoded: int = MAX_ENCODED_CATEGORIES,
    required: bool = False,
) -> FeatureSpec:
    """Learn one feature's encoding parameters from cleaned training values (None = missing).

    ``required`` only when the user declares it: otherwise a missing value at prediction time is
    imputed, whether or not training ever saw one missing.
    """
    n = len(values)
    missing = sum(v is None for v in values)
    spec = FeatureSpec(name=name, kind=kind, missing_rate=missing / n if n else 0.0, required=required)
    present = [v for v in values if v is not None]
    if kind == "numeric":
        _fit_numeric(spec, np.asarray(present, dtype=np.float64), missing, cap_outliers)
    elif kind == "boolean":
        spec.impute = bool(sum(bool(v) for v in present) * 2 >= len(present)) if present else False
        spec.true_label, spec.false_label = true_label, false_label
    else:
        _fit_categorical(spec, present, n, max_encoded)
    return spec


def _fit_numeric(spec: FeatureSpec, present: np.ndarray, n_missing: int, cap_outliers: bool) -> None:
    if present.size == 0:
        present = np.zeros(1)
    spec.integer = bool(np.all(np.mod(present, 1) == 0))
    spec.minimum, spec.maximum = float(present.min()), float(present.max())
    spec.lower_bound = 0.0 if spec.minimum >= 0 else None
    spec.impute = float(np.median(present))
    spec.cap_low, spec.cap_high = spec.minimum, spec.maximum
    if cap_outliers:
        # Extreme fences (3 x IQR) only: heavy but genuine tails stay, gross outliers are capped.
        q1, q3 = np.quantile(present, [0.25, 0.75])
        iqr = q3 - q1
        if iqr > 0:
            spec.cap_low = float(max(spec.minimum, q1 - 3 * iqr))
            spec.cap_high = float(min(spec.maximum, q3 + 3 * iqr))
    capped = np.clip(present, spec.cap_low, spec.cap_high)
    # Moderate skew (> 0.5, the usual rule of thumb) already bends linear and neural models; trees do not care.
    if spec.minimum >= 0 and capped.size > 2 and _skewness(capped) > 0.5:
        spec.log_transform = True
        capped = np.log1p(capped)
    spec.missing_indicator = n_missing > 0
    # Scale what encode() will actually produce: missing rows carry the (capped, transformed) median.
    filled = np.concatenate([capped, np.full(n_missing, np.median(capped))])
    spec.mean = float(filled.mean())
    spec.std = float(filled.std()) or 1.0


def _skewness(values: np.ndarray) -> float:
    std = values.std()
    return float(np.mean(((values - values.mean()) / std) ** 3)) if std > 0 else 0.0


def _one_spelling_per_case(present: list[Any]) -> list[Any]:
    """Values that differ only in case written as their most common spelling (ties: the first in order).

    Exports merged from several systems spell one category differently ('Premium', 'PREMIUM'):
    one category, one column, and serving maps any case of it back (``FeatureSchema.clean_value``).
    """
    counts = Counter(str(value) for value in present)
    best: dict[str, str] = {}
    for text in sorted(counts, key=lambda text: (-counts[text], text)):
        best.setdefault(text.casefold(), text)
    if len(best) == len(counts):
        return present
    return [best[str(value).casefold()] for value in present]


def category_min_count(n_rows: int) -> int:
    """Training rows a category needs to earn a one-hot column of its own."""
    return min(ROWS_TO_LEARN_A_CATEGORY, max(5, int(0.002 * n_rows)))


def _fit_categorical(spec: FeatureSpec, present: list[Any], n: int, max_encoded: int) -> None:
    present = _one_spelling_per_case(present)
    unique, counts = np.unique(np.asarray(present, dtype=object).astype(str), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    ranked = [(str(unique[i]), int(counts[i])) for i in order]
    spec.impute = ranked[0][0] if ranked else ""
    spec.categories = sorted(value for value, _ in ranked[:MAX_LISTED_CATEGORIES])
    min_count = category_min_count(n)
    spec.encoded = sorted(value for value, count in ranked[:max_encoded] if count >= min_count)
    # Always present: rare training values and values never seen in training share this column.
    spec.other_bucket = True
    if not spec.encoded and ranked:
        spec.encoded = [ranked[0][0]]


def clean_columns(schema: FeatureSchema, rows: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """Clean whole columns by the schema's rules; a value that cannot be read becomes missing.

    Training uses this for its frames (the same column cleaning serving uses for requests);
    serving reports unreadable values instead of treating them as missing.
    """
    cleaned: dict[str, list[Any]] = {}
    for spec in schema.features:
        column = rows.get(spec.name)
        if column is not None:
            cleaned[spec.name] = ColumnCleaner(spec).clean(list(column))[0]
    return cleaned
