"""The cleaning rules: how one raw value becomes a feature's value, the same in training and serving.

``clean_numeric``, ``clean_boolean`` and ``clean_category`` read a value by its kind; a
:class:`ValueRule` adds what one fitted feature knows (its lower bound, the table's yes/no labels,
the training spellings of its categories). Every cleaning in the project goes through a
``ValueRule``: ``FeatureSchema.clean_value`` one value at a time, the record cleaner
(:mod:`bundle.records`) column by column with a cache of distinct values.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bundle.features import FeatureSpec

# Compared after stripping and lower-casing. These mean "no value" in the tables people export.
MISSING_MARKERS = frozenset({"", "?", "na", "n/a", "nan", "null", "none", "nil", "missing", "-", "--", "#n/a"})
TRUE_TOKENS = frozenset({"yes", "y", "true", "t", "1", "1.0"})
FALSE_TOKENS = frozenset({"no", "n", "false", "f", "0", "0.0"})
_NUMBER_CLEANUP = re.compile(r"[\s$€£%_]")
# Text that ``float`` reads as these rules do: ASCII digits only, no separators, signs of currency or
# spaces (``\d`` would admit other scripts' digits). Such text skips the separator rules.
PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


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
    if value.__class__ is str and PLAIN_NUMBER.fullmatch(value):
        number = float(value)
    elif is_missing(value):
        return None
    elif isinstance(value, bool):
        return float(value)
    elif isinstance(value, (int, float, np.integer, np.floating)):
        try:
            number = float(value)
        except OverflowError:
            raise FeatureValueError("expected a number that fits a 64-bit float") from None
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


def spellings_by_case(categories: Sequence[str]) -> dict[str, str]:
    """Case-folded category -> the category, for the categories no other one folds to."""
    folded = Counter(category.casefold() for category in categories)
    return {category.casefold(): category for category in categories if folded[category.casefold()] == 1}


class ValueRule:
    """How one fitted feature reads one raw value: ``clean(value)`` or FeatureValueError with the reason.

    Returns None for a missing value. Any other failure to read a value (an integer too large for
    a float, an object whose text cannot be taken) is a FeatureValueError too, so callers handle
    one exception.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        self.name = spec.name
        self.kind = spec.kind
        self.lower_bound = spec.lower_bound
        self.true_label, self.false_label = spec.true_label, spec.false_label
        self.accepted = frozenset(spec.categories)
        self.spellings = spellings_by_case(spec.categories)

    def clean(self, value: Any) -> Any:
        try:
            if self.kind == "numeric":
                return self._numeric(value)
            if self.kind == "boolean":
                return self._boolean(value)
            return self._category(value)
        except FeatureValueError:
            raise
        except (ValueError, TypeError, OverflowError) as exc:
            raise FeatureValueError(f"cannot read this value: {exc}") from None

    def _numeric(self, value: Any) -> float | None:
        number = clean_numeric(value)
        if number is not None and self.lower_bound is not None and number < self.lower_bound:
            raise FeatureValueError(f"must be >= {self.lower_bound:g} (training data never went below it)")
        return number

    def _boolean(self, value: Any) -> bool | None:
        if value is not None and not isinstance(value, bool) and self.true_label is not None:
            # The table's own labels first ("Yes"/"No", 1/0), then the generic tokens.
            if _same_label(value, self.true_label):
                return True
            if _same_label(value, self.false_label):
                return False
        return clean_boolean(value)

    def _category(self, value: Any) -> str | None:
        text = clean_category(value)
        if text is None or text in self.accepted:
            return text
        # A training category written in another case ('PREMIUM' for 'Premium') is that category.
        return self.spellings.get(text.casefold(), text)


def _same_label(value: Any, label: Any) -> bool:
    if isinstance(value, (dict, list, tuple, set)):
        return False
    return bool(value == label) or str(value).strip() == str(label)
