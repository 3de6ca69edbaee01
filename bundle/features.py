"""The one feature definition shared by training and serving.

A :class:`FeatureSchema` is learned from a training table and saved as plain JSON in the
bundle manifest. It holds everything needed to turn raw customer values into the model's
numeric matrix: the cleaning rules (``clean_*``), the learned imputation values, outlier
caps, scaling and one-hot layouts. Training encodes its frames and serving encodes its
requests through the same :meth:`FeatureSchema.encode`, so the two can never disagree, and
no pickled transformer is needed to predict.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

FeatureKind = Literal["numeric", "boolean", "categorical"]

# Compared after stripping and lower-casing. These mean "no value" in the tables people export.
MISSING_MARKERS = frozenset({"", "?", "na", "n/a", "nan", "null", "none", "nil", "missing", "-", "--", "#n/a"})
TRUE_TOKENS = frozenset({"yes", "y", "true", "t", "1", "1.0"})
FALSE_TOKENS = frozenset({"no", "n", "false", "f", "0", "0.0"})
OTHER_CATEGORY = "__other__"
_NUMBER_CLEANUP = re.compile(r"[\s$€£%_]")


class FeatureValueError(ValueError):
    """A value that cannot be read as its feature's type (the message names the problem)."""


def is_missing(value: Any) -> bool:
    """True for None, NaN and the common textual missing markers."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str):
        return value.strip().lower() in MISSING_MARKERS
    return False


def clean_numeric(value: Any) -> float | None:
    """Read a number; text such as ' 1,234.5 ' or '$29.85' counts. Missing markers give None."""
    if is_missing(value):
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(_with_decimal_point(_NUMBER_CLEANUP.sub("", value)))
        except ValueError:
            raise FeatureValueError(f"expected a number, got {value!r}") from None
    else:
        raise FeatureValueError(f"expected a number, got {type(value).__name__}")
    if math.isnan(number):
        return None
    if math.isinf(number):
        raise FeatureValueError("expected a finite number")
    return number


def _with_decimal_point(text: str) -> str:
    """A number written with thousands separators or a decimal comma, as Python reads it.

    '1,234.5' and '1.234,5' are both 1234.5; '12,50' is 12.5 (a decimal comma); '1,234' and
    '1.234.567' group thousands. When both marks appear, the last one is the decimal mark; a lone
    ',' is one unless every group after it has three digits. Anything else ('1,2,3') is returned
    as it is, for ``float`` to refuse.
    """
    if "," not in text and text.count(".") <= 1:
        return text
    sign, digits = (text[0], text[1:]) if text[:1] in "+-" else ("", text)
    if "," in digits and "." in digits:
        decimal = "," if digits.rfind(",") > digits.rfind(".") else "."
    elif "," in digits:
        decimal = "" if all(len(group) == 3 for group in digits.split(",")[1:]) else ","
    else:
        decimal = ""  # several dots: thousands groups
    thousands = "." if decimal == "," else ","
    whole, fraction = digits.rsplit(decimal, 1) if decimal else (digits, "")
    if not decimal:
        thousands = "," if "," in whole else "."
    groups = whole.split(thousands)
    if len(groups) > 1 and not (1 <= len(groups[0]) <= 3 and all(len(group) == 3 for group in groups[1:])):
        return text
    return f"{sign}{''.join(groups)}.{fraction}" if decimal else f"{sign}{''.join(groups)}"


def clean_category(value: Any) -> str | None:
    """Canonical text of a category: stripped; whole floats lose their '.0' so 3 and 3.0 agree."""
    if is_missing(value):
        return None
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (dict, list, tuple, set)):
        raise FeatureValueError(f"expected a single category, got {type(value).__name__}")
    return str(value).strip()


def clean_boolean(value: Any) -> bool | None:
    """Read yes/no, true/false, 1/0 (any case). Missing markers give None."""
    if is_missing(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float, np.integer, np.floating)) and float(value) in (0.0, 1.0):
        return bool(value)
    token = str(value).strip().lower()
    if token in TRUE_TOKENS:
        return True
    if token in FALSE_TOKENS:
        return False
    raise FeatureValueError(f"expected yes/no, true/false or 1/0, got {value!r}")


@dataclass
class FeatureSpec:
    """One input column the model uses, with what training learned about it."""

    name: str
    kind: FeatureKind
    required: bool = True  # False when training data had gaps: the value may be omitted and is imputed
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
class EncodeResult:
    """The model matrix for a batch plus what had to be assumed for each row."""

    matrix: np.ndarray
    warnings: list[list[str]]
    imputed: list[tuple[int, str]]  # (row, feature) pairs filled with the training value
    unseen: list[tuple[int, str]]  # (row, feature) pairs with a category training never saw
    # (row, feature) pairs with a number outside the training range: capped, but the model never saw one
    out_of_range: list[tuple[int, str]] = field(default_factory=list)


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
        self._category_index = {
            spec.name: {value: i for i, value in enumerate(spec.encoded)}
            for spec in self.features
            if spec.kind == "categorical"
        }
        self._accepted = {spec.name: frozenset(spec.categories) for spec in self.features if spec.kind == "categorical"}
        self._spellings = {
            spec.name: _spellings_by_case(spec.categories) for spec in self.features if spec.kind == "categorical"
        }
        self._offsets: dict[str, int] = {}
        offset = 0
        for spec in self.features:
            self._offsets[spec.name] = offset
            offset += len(spec.encoded_names())
        self.n_encoded = offset

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

    # ---- cleaning ------------------------------------------------------------------------
    def clean_value(self, name: str, value: Any) -> Any:
        """Clean one raw value by its feature's rules; raises FeatureValueError with the reason.

        Returns None for a missing value. Serving calls this per field, training per column,
        so a value means the same thing in both.
        """
        spec = self._by_name[name]
        if spec.kind == "numeric":
            number = clean_numeric(value)
            if number is not None and spec.lower_bound is not None and number < spec.lower_bound:
                raise FeatureValueError(f"must be >= {spec.lower_bound:g} (training data never went below it)")
            return number
        if spec.kind == "boolean":
            if value is not None and not isinstance(value, bool) and spec.true_label is not None:
                # The table's own labels first ("Yes"/"No", 1/0), then the generic tokens.
                if value == spec.true_label or str(value).strip() == str(spec.true_label):
                    return True
                if value == spec.false_label or str(value).strip() == str(spec.false_label):
                    return False
            return clean_boolean(value)
        text = clean_category(value)
        if text is None or text in self._accepted[name]:
            return text
        # A training category written in another case ('PREMIUM' for 'Premium') is that category.
        return self._spellings[name].get(text.casefold(), text)

    # ---- encoding ------------------------------------------------------------------------
    def encode(self, columns: Mapping[str, Sequence[Any]], n_rows: int) -> EncodeResult:
        """Encode cleaned column values (None = missing) into the model matrix.

        ``columns`` maps feature name -> values already passed through :meth:`clean_value`
        (or the equivalent vectorised cleaning of a training frame). Missing values are
        imputed with the training value, numbers are capped, transformed and scaled,
        categories one-hot encoded; rare and unseen categories go to the "other" column.
        """
        matrix = np.zeros((n_rows, self.n_encoded), dtype=np.float64)
        imputed: list[tuple[int, str]] = []
        unseen: list[tuple[int, str]] = []
        outside: list[tuple[int, str]] = []
        for spec in self.features:
            values = columns.get(spec.name)
            if values is None:
                values = [None] * n_rows
            offset = self._offsets[spec.name]
            if spec.kind == "numeric":
                self._encode_numeric(spec, values, matrix, offset, imputed, outside)
            elif spec.kind == "boolean":
                self._encode_boolean(spec, values, matrix, offset, imputed)
            else:
                self._encode_categorical(spec, values, matrix, offset, imputed, unseen)
        warnings: list[list[str]] = [[] for _ in range(n_rows)]
        for row, name in imputed:
            warnings[row].append(f"{name}: missing, imputed with the training value {self[name].example()!r}")
        for row, name in unseen:
            warnings[row].append(f"{name}: category not seen in training, treated as 'other'")
        for row, name in outside:
            spec = self[name]
            warnings[row].append(
                f"{name}: outside the training range ({spec.minimum:g} to {spec.maximum:g}); "
                "the model has seen no such value"
            )
        return EncodeResult(matrix=matrix, warnings=warnings, imputed=imputed, unseen=unseen, out_of_range=outside)

    def _encode_numeric(self, spec, values, matrix, offset, imputed, outside) -> None:
        raw = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        missing = np.isnan(raw)
        if spec.minimum is not None and spec.maximum is not None:
            beyond = (raw < spec.minimum) | (raw > spec.maximum)  # missing (NaN) compares False
            outside.extend((int(row), spec.name) for row in np.flatnonzero(beyond))
        if missing.any():
            imputed.extend((int(row), spec.name) for row in np.flatnonzero(missing))
            raw[missing] = spec.impute
        if spec.cap_low is not None:
            np.clip(raw, spec.cap_low, spec.cap_high, out=raw)
        if spec.log_transform:
            raw = np.log1p(np.maximum(raw, 0.0))
        matrix[:, offset] = (raw - spec.mean) / spec.std
        if spec.missing_indicator:
            matrix[:, offset + 1] = missing

    def _encode_boolean(self, spec, values, matrix, offset, imputed) -> None:
        column = matrix[:, offset]
        for row, value in enumerate(values):
            if value is None:
                imputed.append((row, spec.name))
                value = spec.impute
            column[row] = 1.0 if value else 0.0

    def _encode_categorical(self, spec, values, matrix, offset, imputed, unseen) -> None:
        index = self._category_index[spec.name]
        accepted = self._accepted[spec.name]
        other = offset + len(spec.encoded)
        for row, value in enumerate(values):
            if value is None:
                imputed.append((row, spec.name))
                value = spec.impute
            position = index.get(value)
            if position is not None:
                matrix[row, offset + position] = 1.0
                continue
            if value not in accepted:
                unseen.append((row, spec.name))
            if spec.other_bucket:
                matrix[row, other] = 1.0

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
MAX_ENCODED_CATEGORIES = 30
MAX_LISTED_CATEGORIES = 500


def fit_feature(
    name: str,
    kind: FeatureKind,
    values: Sequence[Any],
    *,
    true_label: Any = None,
    false_label: Any = None,
    cap_outliers: bool = True,
    max_encoded: int = MAX_ENCODED_CATEGORIES,
) -> FeatureSpec:
    """Learn one feature's encoding parameters from cleaned training values (None = missing)."""
    n = len(values)
    missing = sum(v is None for v in values)
    spec = FeatureSpec(name=name, kind=kind, missing_rate=missing / n if n else 0.0, required=missing == 0)
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


def _spellings_by_case(categories: Sequence[str]) -> dict[str, str]:
    """Case-folded category -> the category, for the categories no other one folds to."""
    folded = Counter(category.casefold() for category in categories)
    return {category.casefold(): category for category in categories if folded[category.casefold()] == 1}


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


def _fit_categorical(spec: FeatureSpec, present: list[Any], n: int, max_encoded: int) -> None:
    present = _one_spelling_per_case(present)
    unique, counts = np.unique(np.asarray(present, dtype=object).astype(str), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    ranked = [(str(unique[i]), int(counts[i])) for i in order]
    spec.impute = ranked[0][0] if ranked else ""
    spec.categories = sorted(value for value, _ in ranked[:MAX_LISTED_CATEGORIES])
    # A category earns its own column when it is common enough to learn from.
    min_count = max(5, int(0.005 * n))
    spec.encoded = sorted(value for value, count in ranked[:max_encoded] if count >= min_count)
    # Always present: rare training values and values never seen in training share this column.
    spec.other_bucket = True
    if not spec.encoded and ranked:
        spec.encoded = [ranked[0][0]]


def clean_columns(schema: FeatureSchema, rows: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """Clean whole columns by the schema's rules; a value that cannot be read becomes missing.

    Training uses this for validation/test/cross-validation frames; serving validates strictly
    per field instead, reporting unreadable values rather than treating them as missing.
    """
    cleaned: dict[str, list[Any]] = {}
    for spec in schema.features:
        column = rows.get(spec.name)
        if column is None:
            continue
        out = []
        for value in column:
            try:
                out.append(schema.clean_value(spec.name, value))
            except FeatureValueError:
                out.append(None)
        cleaned[spec.name] = out
    return cleaned
