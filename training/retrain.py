"""Retraining from what the service saw: train on the labelled prediction log, compare with the champion.

The training table is the log's labelled predictions known at the cut-off (:mod:`training.log_table`),
optionally appended to the original table (the log's rows win for a customer found in both). The most
recent labelled customers of the log are held out: the new model never sees them, and both it and the
champion score them through the service's own predictor. The new bundle is published as the
challenger; it becomes the champion only when asked to and when the paired bootstrap calls it
better on ROC-AUC (the interval of the difference lies above zero).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bundle.features import FeatureSchema
from bundle.registry import ModelRegistry
from bundle.store import read_manifest
from training.config import TrainingConfig
from training.data import TrainingDataError, load_table
from training.log_table import CUSTOMER_KEY, PREDICTED_AT, LogTable, read_log_table
from training.pipeline import run_training
from training.retrain_lock import exclusive_retrain, require_due
from training.retrain_report import write_report
from training.tracking import mirror_stage

SECONDS_PER_DAY = 86_400
DEFAULT_HOLDOUT_SHARE = 0.2
DEFAULT_MIN_LABELS = 200
REPORTS_DIR = "retrain-reports"
PROMOTED, CHALLENGER = "promoted to champion", "published as challenger"


class RetrainRefused(TrainingDataError):
    """Retraining cannot start with this log or these options; the message says why in one line."""


@dataclass
class RetrainConfig:
    """One retraining run. ``training`` carries the options passed on to the training run itself."""

    database_url: str
    model_dir: Path = Path("models")
    data: str | None = None  # the original table, appended
    cutoff: float | None = None  # UNIX seconds; None: now
    holdout_days: float | None = None  # the last N days of labelled predictions; None: holdout_share
    holdout_share: float = DEFAULT_HOLDOUT_SHARE
    min_labels: int = DEFAULT_MIN_LABELS
    promote_if_better: bool = False
    cool_down_hours: float | None = None  # skip when the last retraining is more recent than this
    training: TrainingConfig = field(default_factory=TrainingConfig)


@dataclass
class RetrainResult:
    version: str
    bundle_dir: Path
    champion: str
    action: str
    comparison: dict[str, Any]
    report: dict[str, Any]
    report_path: Path


def run_retrain(config: RetrainConfig) -> RetrainResult:
    """Build the table, train, compare on the holdout, publish; RetrainRefused / TrainingDataError on bad
    input, RetrainSkipped when another retraining runs or the cool-down has not passed."""
    with exclusive_retrain(config.model_dir):
        if config.cool_down_hours is not None:
            require_due(config.model_dir / REPORTS_DIR, config.cool_down_hours)
        return retrain_now(config)


def retrain_now(config: RetrainConfig) -> RetrainResult:
    cutoff = time.time() if config.cutoff is None else config.cutoff
    registry = ModelRegistry(config.model_dir)
    champion = registry.champion()
    if champion is None:
        raise RetrainRefused(f"no champion in {config.model_dir}: train and publish one first (python -m training)")
    schema = read_manifest(config.model_dir / champion).schema
    log = read_log_table(config.database_url, schema, cutoff)
    check_labels(log, schema, config.min_labels)
    training_rows, holdout = split_holdout(log.frame, cutoff, config)
    table, sources = training_table(training_rows, log.frame, schema, config)
    training = replace(
        config.training,
        data=table,
        target=schema.target,
        positive_label=str(schema.positive_label),
        id_column=schema.id_column,
        model_dir=config.model_dir,
        make_current=False,
        as_challenger=True,
    )
    trained = run_training(training)
    version = trained.manifest.version
    head_to_head = compare_on_holdout(holdout, schema, config.model_dir, champion, version, training.seed)
    verdict = head_to_head["verdict"]
    action = CHALLENGER
    if config.promote_if_better and verdict == "better":
        mirror_stage(registry.promote(version, promotion_reason(head_to_head, champion)))
        action = PROMOTED
    report = {
        "version": version,
        "champion_before": champion,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": data_section(log, training_rows, sources, cutoff, schema),
        "holdout": holdout_section(holdout, schema, config),
        "comparison": head_to_head,
        "promote_if_better": config.promote_if_better,
        "promotion_rule": PROMOTION_RULE,
        "action": action,
    }
    path = write_report(config.model_dir / REPORTS_DIR, version, report)
    return RetrainResult(version, trained.bundle_dir, champion, action, head_to_head, report, path)


PROMOTION_RULE = (
    "promoted only with --promote-if-better and when the paired bootstrap interval of the ROC-AUC "
    "difference (new - champion) on the holdout lies above zero (verdict 'better')"
)


def check_labels(log: LogTable, schema: FeatureSchema, min_labels: int) -> None:
    labels = len(log.frame)
    if labels == 0:
        raise RetrainRefused("the prediction log holds no labelled predictions before the cut-off")
    churned = int((log.frame[schema.target] == str(schema.positive_label)).sum())
    if labels < min_labels:
        raise RetrainRefused(
            f"only {labels} labelled customers in the log before the cut-off; --min-labels is {min_labels}"
        )
    if churned in (0, labels):
        raise RetrainRefused(f"the {labels} labelled customers in the log are all of one class: both are needed")
    logged = set(log.frame.columns) - {schema.target, CUSTOMER_KEY, PREDICTED_AT}
    if not logged & set(schema.names):
        raise RetrainRefused(
            f"the logged inputs share no feature with the champion's schema ({', '.join(schema.names[:5])}, ...)"
        )


def split_holdout(frame: pd.DataFrame, cutoff: float, config: RetrainConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, holdout): the most recent labelled customers, by the time of their prediction."""
    ordered = frame.sort_values(PREDICTED_AT, kind="stable", ignore_index=True)
    if config.holdout_days is not None:
        recent = ordered[PREDICTED_AT] >= cutoff - config.holdout_days * SECONDS_PER_DAY
        training, holdout = ordered[~recent], ordered[recent]
    else:
        size = math.ceil(len(ordered) * config.holdout_share)
        training, holdout = ordered.iloc[: len(ordered) - size], ordered.iloc[len(ordered) - size :]
    if holdout.empty or training.empty:
        raise RetrainRefused(
            f"the holdout takes {len(holdout)} of {len(ordered)} labelled customers: "
            "both it and the training part need rows (change --holdout-days or --holdout-share)"
        )
    return training.reset_index(drop=True), holdout.reset_index(drop=True)


def training_table(
    rows: pd.DataFrame, log_frame: pd.DataFrame, schema: FeatureSchema, config: RetrainConfig
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The log's training rows as a customer table, with the original table appended when given."""
    table = rows.drop(columns=[PREDICTED_AT])
    if schema.id_column:
        table = table.rename(columns={CUSTOMER_KEY: schema.id_column})
    else:
        table = table.drop(columns=[CUSTOMER_KEY])
    sources = {"log": len(table)}
    if config.data is None:
        return table, sources
    original = load_table(config.data, table=config.training.table, query=config.training.query).frame
    if schema.target not in original.columns:
        raise RetrainRefused(f"--data has no {schema.target!r} column, the champion's target")
    if schema.id_column and schema.id_column in original.columns:
        # Every customer the log labelled, holdout included: the holdout must stay unseen.
        logged = set(log_frame[CUSTOMER_KEY].dropna().astype(str))
        in_log = original[schema.id_column].astype(str).isin(logged)
        sources["original_replaced_by_log"] = int(in_log.sum())
        original = original[~in_log]
    else:  # nothing to match customers by: a held-out customer may also be in the original table
        sources["original_without_customer_ids"] = len(original)
    sources["original"] = len(original)
    return pd.concat([table, original], ignore_index=True), sources


def compare_on_holdout(
    holdout: pd.DataFrame, schema: FeatureSchema, model_dir: Path, champion: str, version: str, seed: int
) -> dict[str, Any]:
    """Both bundles score the holdout as the service does; the paired comparison on the rows both scored."""
    from app.monitoring.compare import ModelScores, compare_models

    rows = holdout.drop(columns=[schema.target, CUSTOMER_KEY, PREDICTED_AT]).to_dict("records")
    outcomes = (holdout[schema.target] == str(schema.positive_label)).to_numpy(dtype=float)
    scored = {name: score_records(model_dir, name, rows) for name in (champion, version)}
    both = sorted(set(scored[champion][0]) & set(scored[version][0]))
    scores = [ModelScores(np.array([probs[i] for i in both]), threshold) for probs, threshold in scored.values()]
    y = outcomes[both]
    result = compare_models(scores[0], scores[1], y, seed=seed).to_dict()
    sides = ("champion", "challenger")
    result["f1"] = {
        side: f1_at(y, model.probabilities, model.threshold) for side, model in zip(sides, scores, strict=True)
    }
    result["thresholds"] = {side: model.threshold for side, model in zip(sides, scores, strict=True)}
    result["unscored"] = {side: len(rows) - len(scored[name][0]) for side, name in zip(sides, scored, strict=True)}
    return result


def score_records(model_dir: Path, version: str, rows: list[dict[str, Any]]) -> tuple[dict[int, float], float]:
    """{row: probability} for the rows the bundle accepts, and its threshold."""
    from app.serving.predictor import Predictor
    from app.serving.risk import RiskPolicy

    predictor = Predictor.load(model_dir, RiskPolicy({"all": 0.0}, {}), top_reasons=0, version=version)
    names = predictor.schema.names
    records = [{name: row[name] for name in names if row.get(name) is not None} for row in rows]
    outcome = predictor.predict_records(records, explain=False)
    if outcome.scored is None:
        return {}, predictor.threshold
    return dict(zip(outcome.scored.indices, outcome.scored.probabilities, strict=True)), predictor.threshold


def f1_at(y: np.ndarray, probabilities: Any, threshold: float) -> float | None:
    from sklearn.metrics import f1_score

    if y.size == 0:
        return None
    return float(f1_score(y.astype(int), (np.asarray(probabilities) >= threshold).astype(int), zero_division=0))


def promotion_reason(comparison: dict[str, Any], champion: str) -> str:
    auc = comparison["metrics"]["roc_auc"]
    return (
        f"retrain: ROC-AUC {auc['challenger']:.4f} vs {auc['champion']:.4f} ({champion}) on "
        f"{comparison['labelled']} held-out customers, difference {auc['difference']:+.4f} "
        f"[{auc['ci_low']:+.4f}, {auc['ci_high']:+.4f}]"
    )


def data_section(
    log: LogTable, rows: pd.DataFrame, sources: dict[str, int], cutoff: float, schema: FeatureSchema
) -> dict[str, Any]:
    churned = int((rows[schema.target] == str(schema.positive_label)).sum())
    return {
        "cutoff": iso(cutoff),
        "sources": sources,
        "training_rows": sum(v for k, v in sources.items() if k in ("log", "original")),
        "log": {
            "labelled_predictions": log.labelled,
            "older_predictions_of_a_customer_dropped": log.duplicates,
            "outcomes_after_cutoff_left_out": log.late_outcomes,
            "labelled_customers": len(log.frame),
            "model_versions": log.versions,
        },
        "log_training_rows": {
            "rows": len(rows),
            "churned": churned,
            "churn_rate": round(churned / len(rows), 6),
            "from": iso(float(rows[PREDICTED_AT].min())),
            "to": iso(float(rows[PREDICTED_AT].max())),
        },
    }


def holdout_section(holdout: pd.DataFrame, schema: FeatureSchema, config: RetrainConfig) -> dict[str, Any]:
    churned = int((holdout[schema.target] == str(schema.positive_label)).sum())
    rule = (
        f"last {config.holdout_days:g} days" if config.holdout_days is not None else f"last {config.holdout_share:.0%}"
    )
    return {
        "rule": rule,
        "rows": len(holdout),
        "churned": churned,
        "churn_rate": round(churned / len(holdout), 6),
        "from": iso(float(holdout[PREDICTED_AT].min())),
        "to": iso(float(holdout[PREDICTED_AT].max())),
    }


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
