"""The stratified train / validation / test split.

Training fits models and the feature schema; validation picks the winner, the calibration and
the threshold; test is scored once, at the end, by the published model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from training.data import TrainingDataError

TRAIN_SHARE, VALIDATION_SHARE, TEST_SHARE = 0.70, 0.15, 0.15
MIN_CLASS_PER_HOLDOUT = 5  # each class needs this many rows in validation and in test
MIN_ROWS = 100


@dataclass
class SplitIndices:
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def min_rows_per_class() -> int:
    """Rows each class needs so that validation and test each get MIN_CLASS_PER_HOLDOUT of it."""
    return math.ceil(MIN_CLASS_PER_HOLDOUT / min(VALIDATION_SHARE, TEST_SHARE))


def check_splittable(y: np.ndarray) -> None:
    n_rows, positives = len(y), int(np.sum(y))
    negatives = n_rows - positives
    if n_rows < MIN_ROWS:
        raise TrainingDataError(f"too few rows to train: {n_rows} usable rows, need at least {MIN_ROWS}")
    needed = min_rows_per_class()
    if positives < needed:
        raise TrainingDataError(f"too few churned customers for a 70/15/15 split: {positives}, need at least {needed}")
    if negatives < needed:
        raise TrainingDataError(f"too few retained customers for a 70/15/15 split: {negatives}, need at least {needed}")


def stratified_split(y: np.ndarray, seed: int) -> SplitIndices:
    """Row indices of a seeded stratified 70/15/15 split; every part keeps the churn rate."""
    check_splittable(y)
    rows = np.arange(len(y))
    train, holdout = train_test_split(rows, test_size=VALIDATION_SHARE + TEST_SHARE, stratify=y, random_state=seed)
    validation, test = train_test_split(
        holdout, test_size=TEST_SHARE / (VALIDATION_SHARE + TEST_SHARE), stratify=y[holdout], random_state=seed
    )
    return SplitIndices(train=np.sort(train), validation=np.sort(validation), test=np.sort(test))
