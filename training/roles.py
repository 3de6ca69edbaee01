"""Deciding what each column is: the target, the customer id, a feature of some kind, or dropped.

Every decision carries a reason a person can read, and the whole set goes into the training
report and the bundle manifest. Feature kinds are inferred on the training split only.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from bundle.features import (
    MAX_ENCODED_CATEGORIES,
    DroppedColumn,
    FeatureKind,
    FeatureValueError,
    category_min_count,
    clean_boolean,
    clean_category,
    clean_numeric,
)
from training.data import TrainingDataError, require_column

TARGET_NAMES = ("churn", "churned", "exited", "attrition", "attrited", "left", "target", "label", "churnflag")
POSITIVE_TOKENS = frozenset({"yes", "y", "true", "t", "1", "churn", "churned", "exited", "left", "attrited", "lost"})
NEGATIVE_TOKENS = frozenset({"no", "n", "false", "f", "0", "stayed", "retained", "active", "existing", "current"})
# Words that make a column name a likely target even inside longer names ("is_churn", "Churn Label",
# "Attrition_Flag"), when no column is named exactly like one of TARGET_NAMES.
TARGET_WORDS = frozenset({"churn", "churned", "churner", "attrition", "attrited", "exited"})
WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
ID_NAMES = frozenset({"id", "customerid", "userid", "clientid", "accountid", "memberid", "subscriberid", "customerno"})
SEQUENCE_NAMES = re.compile(r"(^|_)(row|index|rownumber|rownum|unnamed|serial|seq)", re.IGNORECASE)
# Words that make unique whole numbers a reference rather than a measurement: account_number, PhoneNo.
ID_WORDS = frozenset({"number", "no", "num", "nr", "code", "ref", "reference", "key", "uuid", "guid", "msisdn", "imei"})
ID_SUFFIX = re.compile(r"((^|[_\-\s.])id|[a-z]I[dD])$")
DATE_TEXT = re.compile(
    r"^(\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{4})([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?"
)

NUMERIC_SHARE = 0.95  # text columns become numeric when this share of present values reads as a number
UNIQUE_SHARE = 0.95  # a column this unique (and large enough) identifies rows rather than describing them
MIN_ROWS_FOR_IDENTIFIER = 20
HIGH_CARDINALITY_COVERAGE = 0.25  # categories common enough to learn from must cover this share of rows


@dataclass
class TargetInfo:
    column: str
    positive_label: str  # canonical text of the churn value, as clean_category writes it
    negative_label: str
    reason: str


@dataclass
class ColumnRole:
    name: str
    role: str  # "id" | "feature" | "dropped"
    reason: str
    kind: FeatureKind | None = None
    drop_reason: str | None = None  # short code stored in the schema for dropped columns
    true_label: Any = None
    false_label: Any = None


@dataclass
class RoleSet:
    target: TargetInfo
    id_column: str | None
    columns: list[ColumnRole] = field(default_factory=list)

    @property
    def features(self) -> list[ColumnRole]:
        return [column for column in self.columns if column.role == "feature"]

    @property
    def dropped(self) -> list[DroppedColumn]:
        return [DroppedColumn(c.name, c.drop_reason or "dropped") for c in self.columns if c.role == "dropped"]

    def report(self) -> dict[str, dict[str, str]]:
        """Column -> role and reason, for the training report and the manifest."""
        out = {self.target.column: {"role": "target", "reason": self.target.reason}}
        for column in self.columns:
            role = column.kind if column.role == "feature" else column.role
            if column.role == "dropped":
                role = f"dropped ({column.drop_reason})"
            out[column.name] = {"role": str(role), "reason": column.reason}
        return out


# ---- target ---------------------------------------------------------------------------------
def normalise_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def distinct_labels(values: pd.Series) -> list[str]:
    """Distinct labels of the present values, most common first.

    Texts that differ only in case are one label ('Yes', 'yes', 'YES'), written as its most
    common spelling: exports merged from several systems spell the same answer differently.
    """
    counts = Counter(text for text in (clean_category(v) for v in values) if text is not None)
    groups: dict[str, Counter[str]] = {}
    for text, count in counts.items():
        groups.setdefault(text.casefold(), Counter())[text] = count
    totals = Counter({spellings.most_common(1)[0][0]: spellings.total() for spellings in groups.values()})
    return [label for label, _ in totals.most_common()]


def infer_target(frame: pd.DataFrame, target: str | None, positive_label: str | None) -> TargetInfo:
    """Find the target column and its churn value; TrainingDataError when that cannot be decided."""
    columns = list(frame.columns)
    if target is not None:
        require_column(target, columns)
        reason = "given with --target"
    else:
        target, reason = guess_target(frame)
    labels = distinct_labels(frame[target])
    if not labels:
        raise TrainingDataError(f"target column {target!r} has no values")
    if len(labels) == 1:
        raise TrainingDataError(
            f"target column {target!r} has one class only ({labels[0]!r}): "
            "training needs churned and retained customers"
        )
    if len(labels) > 2:
        shown = ", ".join(repr(label) for label in labels[:8])
        raise TrainingDataError(
            f"target column {target!r} has {len(labels)} values ({shown}); a churn target needs two"
        )
    positive, label_reason = choose_positive_label(target, labels, positive_label)
    negative = labels[1] if labels[0] == positive else labels[0]
    return TargetInfo(
        column=target, positive_label=positive, negative_label=negative, reason=f"{reason}; {label_reason}"
    )


def name_words(name: str) -> set[str]:
    """The lower-case words of a column name: 'Attrition_Flag', 'isChurn', 'Churn Label'."""
    return {word.lower() for word in WORDS.findall(str(name))}


def label_words(label: str) -> set[str]:
    return {word.lower() for word in WORDS.findall(label)}


def guess_target(frame: pd.DataFrame) -> tuple[str, str]:
    named = [name for name in frame.columns if normalise_name(name) in TARGET_NAMES]
    if not named:
        named = [name for name in frame.columns if name_words(name) & TARGET_WORDS]
    two_valued = [name for name in named if len(distinct_labels(frame[name])) == 2]
    if len(two_valued) == 1:
        return two_valued[0], "inferred from its name and its two values"
    if len(named) == 1:
        return named[0], "inferred from its name"  # its values are checked next, with a precise error
    if not named:
        raise TrainingDataError(
            f"cannot tell which column is the churn target; pass --target (columns are: {', '.join(frame.columns)})"
        )
    raise TrainingDataError(f"several columns could be the target ({', '.join(two_valued or named)}); pass --target")


def choose_positive_label(target: str, labels: list[str], given: str | None) -> tuple[str, str]:
    if given is not None:
        wanted = str(clean_category(given))
        for label in labels:
            if label == wanted or label.lower() == wanted.lower():
                return label, f"churn value {label!r} given with --positive-label"
        raise TrainingDataError(
            f"--positive-label {given!r} is not a value of {target!r} (its values are {labels[0]!r} and {labels[1]!r})"
        )
    positive = [label for label in labels if label.strip().lower() in POSITIVE_TOKENS]
    negative = [label for label in labels if label.strip().lower() in NEGATIVE_TOKENS]
    if not positive and not negative:  # labels of several words: "Attrited Customer" / "Existing Customer"
        positive = [label for label in labels if label_words(label) & POSITIVE_TOKENS]
        negative = [label for label in labels if label_words(label) & NEGATIVE_TOKENS]
    if len(positive) == 1 and len(negative) == 1 and positive != negative:
        return positive[0], f"churn value {positive[0]!r} inferred (the other value is {negative[0]!r})"
    raise TrainingDataError(
        f"cannot tell which value of {target!r} means churn ({labels[0]!r} or {labels[1]!r}); pass --positive-label"
    )


def target_vector(values: pd.Series, target: TargetInfo) -> np.ndarray:
    """1 for churn, 0 otherwise (rows without a target were dropped by cleaning)."""
    positive = target.positive_label.casefold()  # any spelling of the label (see distinct_labels)
    return np.fromiter(
        (str(clean_category(v)).casefold() == positive for v in values), dtype=np.int64, count=len(values)
    )


# ---- feature columns ------------------------------------------------------------------------
@dataclass
class ColumnProfile:
    """What one column's present values look like."""

    n_rows: int
    n_present: int
    counts: Counter  # canonical text -> count
    raw_for_text: dict[str, Any]  # canonical text -> first raw value seen (the table's own label)
    numbers: np.ndarray  # every present value that reads as a number (repeats included)
    unreadable_numbers: int
    date_like: int
    text_values: int

    @property
    def n_distinct(self) -> int:
        return len(self.counts)

    @property
    def numeric_share(self) -> float:
        return self.numbers.size / self.n_present if self.n_present else 0.0

    @property
    def all_unique(self) -> bool:
        return self.n_present >= MIN_ROWS_FOR_IDENTIFIER and self.n_distinct >= UNIQUE_SHARE * self.n_present


def profile_column(values: pd.Series) -> ColumnProfile:
    # Each distinct raw value is examined once and weighted by how often it occurs.
    raw_counts = Counter(v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v)))
    counts: Counter = Counter()
    raw_for_text: dict[str, Any] = {}
    numbers, repeats = [], []
    unreadable = date_like = text_values = 0
    for value, count in raw_counts.items():
        text = value.isoformat() if isinstance(value, (datetime, date)) else clean_category(value)
        counts[text] += count
        raw_for_text.setdefault(text, value.item() if isinstance(value, np.generic) else value)
        if isinstance(value, (datetime, date)) or (isinstance(value, str) and DATE_TEXT.match(value)):
            date_like += count
            continue
        text_values += count * (isinstance(value, str) and not _plain_number(value))
        try:
            number = clean_numeric(value)
        except FeatureValueError:
            unreadable += count
            continue
        if number is not None:
            numbers.append(number)
            repeats.append(count)
    present = sum(raw_counts.values())
    all_numbers = np.repeat(np.asarray(numbers, dtype=np.float64), np.asarray(repeats, dtype=np.int64))
    return ColumnProfile(len(values), present, counts, raw_for_text, all_numbers, unreadable, date_like, text_values)


def looks_like_id_name(name: str) -> bool:
    return normalise_name(name) in ID_NAMES or bool(ID_SUFFIX.search(name))


def infer_feature_roles(frame: pd.DataFrame, target: TargetInfo, id_column: str | None = None) -> RoleSet:
    """Decide every non-target column's role from the (training) rows in ``frame``."""
    columns = [name for name in frame.columns if name != target.column]
    if id_column is not None:
        require_column(id_column, list(frame.columns), what="id")
        if id_column == target.column:
            raise TrainingDataError(f"--id-column {id_column!r} is the target column")
    profiles = {name: profile_column(frame[name]) for name in columns}
    chosen_id = id_column or guess_id_column(profiles)
    roles = []
    for name in columns:
        if name == chosen_id:
            how = "given with --id-column" if id_column else "inferred: its name and unique values mark a customer id"
            roles.append(ColumnRole(name, "id", f"customer id ({how}); kept for logging, never a feature"))
        else:
            roles.append(decide_column(name, profiles[name]))
    return RoleSet(target=target, id_column=chosen_id, columns=roles)


def guess_id_column(profiles: dict[str, ColumnProfile]) -> str | None:
    """A unique column named like an id; failing that, the first unique text column."""
    for name, profile in profiles.items():
        if looks_like_id_name(name) and profile.all_unique:
            return name
    for name, profile in profiles.items():
        if profile.all_unique and profile.numeric_share < NUMERIC_SHARE and not profile.date_like:
            return name
    return None


def decide_column(name: str, profile: ColumnProfile) -> ColumnRole:
    if profile.n_present == 0:
        return dropped(name, "all_missing", "every value is missing")
    if profile.n_distinct == 1:
        value = next(iter(profile.counts))
        return dropped(name, "constant", f"one value only ({value!r}): nothing to learn from")
    boolean = boolean_labels(profile)
    if boolean is not None:
        true_label, false_label = boolean
        return ColumnRole(
            name,
            "feature",
            f"boolean: two values, {true_label!r} read as true and {false_label!r} as false",
            kind="boolean",
            true_label=true_label,
            false_label=false_label,
        )
    if profile.date_like >= NUMERIC_SHARE * profile.n_present:
        return dropped(name, "datetime", "dates: dropped, since a model would tie churn to calendar time")
    if profile.numeric_share >= NUMERIC_SHARE:
        return numeric_role(name, profile)
    return categorical_role(name, profile)


def dropped(name: str, code: str, why: str) -> ColumnRole:
    return ColumnRole(name, "dropped", why, drop_reason=code)


def boolean_labels(profile: ColumnProfile) -> tuple[Any, Any] | None:
    """(true label, false label) as the table writes them, if the column is a yes/no flag."""
    if profile.n_distinct != 2:
        return None
    readings = {}
    for text in profile.counts:
        try:
            readings[text] = clean_boolean(text)
        except FeatureValueError:
            return None
    if set(readings.values()) != {True, False}:
        return None
    true_text = next(text for text, flag in readings.items() if flag)
    false_text = next(text for text, flag in readings.items() if not flag)
    return profile.raw_for_text[true_text], profile.raw_for_text[false_text]


def _plain_number(text: str) -> bool:
    """Whether text is a number as written by any export (CSV holds every number as text)."""
    try:
        float(text)
    except ValueError:
        return not text.strip()  # blank: missing, not a number written oddly
    return "_" not in text  # float() reads '1_000'; a table does not


def numeric_role(name: str, profile: ColumnProfile) -> ColumnRole:
    if is_sequence_identifier(name, profile, profile.numbers):
        return dropped(name, "identifier", "unique whole numbers like a row number or an id: they identify rows")
    reason = "numeric"
    if profile.text_values:
        reason = "numeric written as text (currency signs, separators, units are read past)"
    if profile.unreadable_numbers:
        reason += f"; {profile.unreadable_numbers} values that are not numbers are treated as missing"
    return ColumnRole(name, "feature", reason, kind="numeric")


def is_sequence_identifier(name: str, profile: ColumnProfile, numbers: np.ndarray) -> bool:
    if not profile.all_unique or numbers.size == 0 or not np.all(np.mod(numbers, 1) == 0):
        return False
    if looks_like_id_name(name) or SEQUENCE_NAMES.search(name) or name_words(name) & ID_WORDS:
        return True
    # Densely packed unique integers are a counter, not a measurement.
    span = numbers.max() - numbers.min() + 1
    return numbers.size / span >= 0.5


def categorical_role(name: str, profile: ColumnProfile) -> ColumnRole:
    if profile.all_unique:
        return dropped(name, "identifier", "a different value on (almost) every row: identifies rows, predicts nothing")
    min_count = category_min_count(profile.n_rows)
    ranked = profile.counts.most_common(MAX_ENCODED_CATEGORIES)
    covered = sum(count for _, count in ranked if count >= min_count) / profile.n_present
    if covered < HIGH_CARDINALITY_COVERAGE:
        return dropped(
            name,
            "high_cardinality",
            f"{profile.n_distinct} values, mostly rare: the common ones cover only {covered:.0%} of rows",
        )
    reason = f"categorical: {profile.n_distinct} values"
    if profile.n_distinct > MAX_ENCODED_CATEGORIES or covered < 1.0:
        reason += f"; common values cover {covered:.0%} of rows, the rest share an 'other' column"
    return ColumnRole(name, "feature", reason, kind="categorical")
