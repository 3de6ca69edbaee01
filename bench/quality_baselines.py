"""Untuned baselines, written the way a data scientist would in a few lines of pandas and scikit-learn.

One-hot encoding (unknown categories ignored) and median imputation; columns that are mostly numbers
are read as numbers (``pd.to_numeric(errors="coerce")``), everything else is a category. No tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

# A column is numeric when at least this share of its non-blank cells parse as numbers.
MOSTLY_NUMERIC = 0.8
THREADS = 2


def numeric_columns(frame: pd.DataFrame) -> list[str]:
    """Columns whose non-blank cells are mostly numbers."""
    chosen = []
    for column in frame.columns:
        text = frame[column].astype(str).str.strip()
        present = text[text != ""]
        if len(present) and pd.to_numeric(present, errors="coerce").notna().mean() >= MOSTLY_NUMERIC:
            chosen.append(column)
    return chosen


def features_and_target(
    frame: pd.DataFrame, target: str, positive: str, id_columns: tuple[str, ...]
) -> tuple[pd.DataFrame, np.ndarray]:
    """Features (ids and the target dropped) and the 1/0 target."""
    y = (frame[target].astype(str).str.strip() == positive).to_numpy(dtype=int)
    return frame.drop(columns=[target, *[c for c in id_columns if c in frame.columns]]), y


def typed(frame: pd.DataFrame, numeric: list[str]) -> pd.DataFrame:
    """Numbers parsed for the numeric columns (anything else becomes NaN); blanks become NaN elsewhere."""
    out = frame.copy()
    for column in out.columns:
        if column in numeric:
            out[column] = pd.to_numeric(out[column], errors="coerce")
        else:
            out[column] = out[column].astype(str).str.strip().replace("", np.nan).astype(object)
    return out


def preprocessor(numeric: list[str], categorical: list[str], scale: bool) -> ColumnTransformer:
    number_steps: list[Any] = [SimpleImputer(strategy="median")]
    if scale:
        number_steps.append(StandardScaler())
    categories = make_pipeline(
        SimpleImputer(strategy="constant", fill_value="missing"), OneHotEncoder(handle_unknown="ignore")
    )
    return ColumnTransformer([("num", make_pipeline(*number_steps), numeric), ("cat", categories, categorical)])


def _logistic() -> Any:
    return LogisticRegression(max_iter=5000)


def _xgboost() -> Any:
    from xgboost import XGBClassifier

    return XGBClassifier(
        n_estimators=400, learning_rate=0.03, max_depth=4, subsample=0.8, colsample_bytree=0.8, n_jobs=THREADS
    )


def _lightgbm() -> Any:
    from lightgbm import LGBMClassifier

    return LGBMClassifier(
        n_estimators=400,
        learning_rate=0.03,
        num_leaves=15,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.8,
        n_jobs=THREADS,
        verbose=-1,
    )


BASELINES: dict[str, tuple[Callable[[], Any], bool]] = {  # name -> (model, scale numbers first)
    "logistic_regression": (_logistic, True),
    "xgboost": (_xgboost, False),
    "lightgbm": (_lightgbm, False),
}


def baseline_aucs(
    train: pd.DataFrame, test: pd.DataFrame, target: str, positive: str, id_columns: tuple[str, ...], seed: int
) -> dict[str, float]:
    """ROC-AUC on ``test`` of each baseline fitted on ``train`` (both as exported text)."""
    x_train, y_train = features_and_target(train, target, positive, id_columns)
    x_test, y_test = features_and_target(test, target, positive, id_columns)
    numeric = numeric_columns(x_train)
    categorical = [c for c in x_train.columns if c not in numeric]
    x_train, x_test = typed(x_train, numeric), typed(x_test, numeric)
    aucs = {}
    for name, (model, scale) in BASELINES.items():
        estimator = model()
        if "random_state" in estimator.get_params():
            estimator.set_params(random_state=seed)
        pipeline = Pipeline([("prepare", preprocessor(numeric, categorical, scale)), ("model", estimator)])
        pipeline.fit(x_train, y_train)
        aucs[name] = float(roc_auc_score(y_test, pipeline.predict_proba(x_test)[:, 1]))
    return aucs
