"""What a training run writes into the bundle besides the model: the decision rule fitted out of
fold, the drift reference, and the manifest's account of which rows each figure comes from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bundle.drift_reference import DriftReference, FeatureReference, categorical_reference, numeric_reference
from bundle.features import FeatureSchema
from bundle.manifest import Calibration
from bundle.redaction import redact_text
from training.calibration import calibrate, calibration_summary, fit_calibration
from training.cleaning import fingerprint
from training.config import TrainingConfig
from training.evaluation import evaluate
from training.threshold import choose_threshold

OUT_OF_FOLD = "out-of-fold scores of the chosen configuration (first repeat of the folds)"


@dataclass
class Decision:
    """Calibration and threshold, both fitted on out-of-fold scores, with how they did there."""

    calibration: Calibration
    threshold: dict[str, Any]
    summary: dict[str, Any]  # calibration summary
    metrics: dict[str, Any]  # the calibrated out-of-fold scores at the threshold


def out_of_fold_decision(config: TrainingConfig, oof: np.ndarray, y: np.ndarray) -> Decision:
    """Fit calibration and threshold on the first repeat's out-of-fold raw scores (one score per row)."""
    raw = oof[0]
    calibration = fit_calibration(raw, y, seed=config.seed)
    scores = calibrate(calibration, raw)
    threshold = choose_threshold(
        y, scores, strategy=config.threshold_strategy, offer_cost=config.offer_cost, saved_value=config.saved_value
    )
    threshold["fitted_on"] = OUT_OF_FOLD
    summary = calibration_summary(raw, y, calibration, seed=config.seed)
    summary["fitted_on"] = OUT_OF_FOLD
    return Decision(calibration, threshold, summary, evaluate(y, scores, threshold["threshold"]))


def empty_drift_reference() -> DriftReference:
    return DriftReference(features=[], score=FeatureReference("score", "score", [], [], [1.0], 0))


def drift_reference(schema: FeatureSchema, columns: dict[str, list[Any]], scores: np.ndarray) -> DriftReference:
    """Frozen bins of every feature (all labelled rows' cleaned values) and of out-of-sample scores."""
    features = []
    for spec in schema.features:
        values = columns[spec.name]
        if spec.kind == "numeric":
            numbers = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            features.append(numeric_reference(spec.name, numbers))
        else:
            # Booleans are binned as the text clean_category gives them: "True" / "False".
            features.append(categorical_reference(spec.name, values))
    return DriftReference(features=features, score=numeric_reference("score", scores, kind="score"))


def data_summary(data: Any) -> dict[str, Any]:
    positives = int(data.y.sum())
    return {
        "source": redact_text(data.source),  # the manifest is served by GET /metadata
        "rows": len(data.table),
        "columns": len(data.table.columns),
        "fingerprint": fingerprint(data.table),
        "target": data.roles.target.column,
        "positive_label": data.roles.target.positive_label,
        "positives": positives,
        "negatives": len(data.y) - positives,
        "churn_rate": round(positives / len(data.y), 6),
        "split": data.split.sizes(),
    }


def row_purposes(data: Any, search_rows: np.ndarray, folds: Any) -> dict[str, Any]:
    """How many labelled rows served each purpose."""
    development, test = len(data.split.development), len(data.split.test)
    return {
        "total": len(data.y),
        "development": development,
        "test": test,
        "search": len(search_rows),
        "search_sampled": len(search_rows) < development,
        "calibration_and_threshold": len(search_rows),
        "test_metrics_model": development,
        "published_model": len(data.y),
        "cross_validation": folds.describe(),
    }


def training_info(
    config: TrainingConfig,
    data: Any,
    selection: Any,
    decision: Decision,
    importance: dict[str, float],
    search_rows: np.ndarray,
    folds: Any,
    watch: Any,
) -> dict[str, Any]:
    timings = dict(watch.timings)
    timings["total"] = watch.total()
    winner = selection.winner
    return {
        "data": data_summary(data),
        "rows": row_purposes(data, search_rows, folds),
        "seed": config.seed,
        "models": list(config.models),
        "budget": selection.budgets,
        "winner": {
            "family": winner.family,
            "params": winner.params,
            "stage": winner.stage,
            "cv_roc_auc": winner.cv_roc_auc,
            "cv_roc_auc_std": winner.cross_validated.roc_auc_std,
            "cv_fold_roc_auc": winner.cross_validated.fold_roc_auc,
            "reason": selection.reason,
        },
        "out_of_fold_metrics": decision.metrics,
        "metrics_rows": "metrics: the test split, scored once by the winner refitted on the development rows only",
        "published_model_rows": "every labelled row (development and test), with the winner's settings",
        "threshold": decision.threshold,
        "calibration": decision.summary,
        "drift_reference_rows": (
            "features: cleaned values of every labelled row; score: calibrated out-of-fold scores of the "
            "search rows plus the test rows' scores from the model fitted without them"
        ),
        "required_features": [spec.name for spec in data.schema.features if spec.name in config.required],
        "importance": importance,
        "importance_rows": "test split (a stratified sample beyond 20,000 rows), model fitted without it",
        "cleaning": data.cleaning.to_dict(),
        "roles": data.roles.report(),
        "timings": timings,
    }
