"""Row-level cleaning of the raw table, with a report of every change.

Only rules that need no statistics run here (trimming, missing markers, duplicates, rows
without a target), so cleaning the whole table cannot leak anything from validation or test
rows. Imputation values and outlier caps are learned later, from the training split only, by
:func:`bundle.features.fit_feature`; :func:`describe_fitted_features` adds them to the report.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bundle.features import FeatureSchema, FeatureSpec, clean_category, clean_columns, is_missing


@dataclass
class CleaningReport:
    rows_in: int = 0
    rows_out: int = 0
    cells_trimmed: int = 0
    missing_markers: dict[str, int] = field(default_factory=dict)  # column -> cells read as missing
    empty_rows_dropped: int = 0
    duplicate_rows_dropped: int = 0
    rows_without_target_dropped: int = 0
    unreadable_values: dict[str, int] = field(default_factory=dict)  # column -> values that became missing
    imputed: dict[str, dict[str, Any]] = field(default_factory=dict)  # feature -> value and training rows filled
    outliers_capped: dict[str, dict[str, Any]] = field(default_factory=dict)  # feature -> fences and rows capped

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def clean_cell(value: Any) -> tuple[Any, bool]:
    """(cleaned value, whether text was trimmed); missing markers become None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple, set, dict, np.ndarray)):
        # Nested values (Parquet lists, JSON columns) are kept as their text: one category per distinct value.
        value = str(value.tolist() if isinstance(value, np.ndarray) else value)
    if is_missing(value):
        return None, False
    if isinstance(value, str):
        stripped = value.strip()
        return stripped, stripped != value
    return value, False


def clean_table(frame: pd.DataFrame) -> tuple[pd.DataFrame, CleaningReport]:
    """Trim text, read missing markers as None, drop empty and exactly repeated rows."""
    report = CleaningReport(rows_in=len(frame))
    cleaned: dict[str, list[Any]] = {}
    for name in frame.columns:
        values, missing, trimmed = [], 0, 0
        for value in frame[name].tolist():
            cell, was_trimmed = clean_cell(value)
            values.append(cell)
            missing += cell is None
            trimmed += was_trimmed
        cleaned[name] = values
        report.cells_trimmed += trimmed
        if missing:
            report.missing_markers[name] = missing
    out = pd.DataFrame(cleaned, columns=list(frame.columns), dtype=object)
    empty = out.isna().all(axis=1)
    report.empty_rows_dropped = int(empty.sum())
    out = out[~empty]
    duplicated = out.duplicated(keep="first")
    report.duplicate_rows_dropped = int(duplicated.sum())
    out = out[~duplicated].reset_index(drop=True)
    report.rows_out = len(out)
    return out, report


def drop_rows_without_target(frame: pd.DataFrame, target: str, report: CleaningReport) -> pd.DataFrame:
    has_target = frame[target].notna()
    report.rows_without_target_dropped = int((~has_target).sum())
    out = frame[has_target].reset_index(drop=True)
    report.rows_out = len(out)
    return out


def frame_columns(frame: pd.DataFrame, names: list[str]) -> dict[str, list[Any]]:
    return {name: frame[name].tolist() for name in names}


def clean_feature_columns(schema: FeatureSchema, frame: pd.DataFrame) -> dict[str, list[Any]]:
    """The serving rules, column by column: unreadable values become missing."""
    return clean_columns(schema, frame_columns(frame, [name for name in schema.names if name in frame.columns]))


def count_unreadable(raw: dict[str, list[Any]], cleaned: dict[str, list[Any]]) -> dict[str, int]:
    """Per column, present raw values that cleaning could not read (and so became missing)."""
    counts = {}
    for name, values in cleaned.items():
        lost = sum(1 for before, after in zip(raw[name], values, strict=True) if after is None and before is not None)
        if lost:
            counts[name] = lost
    return counts


def describe_fitted_features(report: CleaningReport, specs: list[FeatureSpec], train: dict[str, list[Any]]) -> None:
    """Add what fitting learned on the training split (imputation, outlier caps) to the report."""
    for spec in specs:
        values = train[spec.name]
        missing = sum(v is None for v in values)
        if missing:
            report.imputed[spec.name] = {"value": spec.example(), "training_rows": missing}
        if spec.kind == "numeric" and spec.cap_low is not None:
            numbers = np.asarray([v for v in values if v is not None], dtype=np.float64)
            low, high = int((numbers < spec.cap_low).sum()), int((numbers > spec.cap_high).sum())
            if low or high:
                report.outliers_capped[spec.name] = {
                    "low": spec.cap_low,
                    "high": spec.cap_high,
                    "training_rows_below": low,
                    "training_rows_above": high,
                }


def fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 of the cleaned table in a canonical text form (same data, same fingerprint, any source format)."""
    digest = hashlib.sha256()
    digest.update("\x1f".join(map(str, frame.columns)).encode())
    for row in frame.itertuples(index=False, name=None):
        cells = ("" if value is None else str(clean_category(value)) for value in row)
        digest.update(b"\n" + "\x1f".join(cells).encode())
    return digest.hexdigest()
