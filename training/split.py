"""Which labelled rows serve which purpose.

A stratified test split is kept aside for honest reporting; every other row (the development
rows) is used to choose the model family, its settings, the calibration and the threshold by
cross-validation. The published model is refitted on every labelled row, test rows included.
Small tables are cross-validated with repeated folds, whose mean is steadier than one split's;
very large tables are searched on a stratified subsample (the final fits still use every row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold, train_test_split

from training.data import TrainingDataError

TEST_SHARE = 0.20
MIN_CLASS_PER_HOLDOUT = 5  # each class needs this many rows in the test split
MIN_ROWS = 100
FOLDS = 5
# Below this many development rows one 5-fold split is too noisy to tell candidates apart: repeat it.
REPEAT_BELOW_ROWS = 5_000
SMALL_TABLE_REPEATS = 3
# Beyond this many development rows, the search runs on a stratified subsample of them: more rows
# sharpen the estimate of each candidate's score far less than they slow every fit down.
SEARCH_ROWS = 20_000


@dataclass
class HoldoutSplit:
    development: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"development": len(self.development), "test": len(self.test)}


@dataclass
class Folds:
    """Cross-validation folds over a set of rows (positions into that set), possibly repeated."""

    splits: list[tuple[np.ndarray, np.ndarray]]
    n_folds: int
    repeats: int

    def repeat(self, index: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return self.splits[index * self.n_folds : (index + 1) * self.n_folds]

    def describe(self) -> dict[str, Any]:
        return {"folds": self.n_folds, "repeats": self.repeats, "fits": len(self.splits)}


def min_rows_per_class() -> int:
    """Rows each class needs so that the test split gets MIN_CLASS_PER_HOLDOUT of it."""
    return math.ceil(MIN_CLASS_PER_HOLDOUT / TEST_SHARE)


def check_splittable(y: np.ndarray) -> None:
    n_rows, positives = len(y), int(np.sum(y))
    negatives = n_rows - positives
    if n_rows < MIN_ROWS:
        raise TrainingDataError(f"too few rows to train: {n_rows} usable rows, need at least {MIN_ROWS}")
    needed = min_rows_per_class()
    if positives < needed:
        raise TrainingDataError(f"too few churned customers to keep a test split: {positives}, need at least {needed}")
    if negatives < needed:
        raise TrainingDataError(f"too few retained customers to keep a test split: {negatives}, need at least {needed}")


def holdout_split(y: np.ndarray, seed: int) -> HoldoutSplit:
    """Row indices of a seeded stratified development / test split; both keep the churn rate."""
    check_splittable(y)
    rows = np.arange(len(y))
    development, test = train_test_split(rows, test_size=TEST_SHARE, stratify=y, random_state=seed)
    return HoldoutSplit(development=np.sort(development), test=np.sort(test))


def search_sample(y: np.ndarray, seed: int, limit: int = SEARCH_ROWS) -> np.ndarray:
    """Positions of the rows the search uses: all of them, or a stratified sample of ``limit``."""
    rows = np.arange(len(y))
    if len(y) <= limit:
        return rows
    sample, _ = train_test_split(rows, train_size=limit, stratify=y, random_state=seed)
    return np.sort(sample)


def cross_validation_folds(y: np.ndarray, seed: int, n_folds: int = FOLDS) -> Folds:
    """Stratified folds, repeated on small tables; fewer folds when a class is too rare for ``n_folds``."""
    minority = int(min(np.bincount(y, minlength=2)))
    if minority < 2:
        raise TrainingDataError("cross-validation needs at least two rows of each class")
    n_folds = min(n_folds, minority)
    repeats = SMALL_TABLE_REPEATS if len(y) < REPEAT_BELOW_ROWS else 1
    splitter = RepeatedStratifiedKFold(n_splits=n_folds, n_repeats=repeats, random_state=seed)
    return Folds(splits=list(splitter.split(np.zeros(len(y)), y)), n_folds=n_folds, repeats=repeats)
