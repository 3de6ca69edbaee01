"""The training run, end to end: data in, verified bundle out.

load -> clean -> target -> split -> roles and feature schema (training split only) -> encode ->
tune each model family -> pick the winner on validation -> save the artifact and load it back
as serving does -> calibrate and choose the threshold on validation -> score test once ->
importance, drift reference, report -> publish atomically.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

from bundle.drift_reference import DriftReference, FeatureReference, categorical_reference, numeric_reference
from bundle.features import FeatureSchema, FeatureSpec, fit_feature
from bundle.manifest import Calibration, Manifest, library_versions, new_version, utc_now_iso
from bundle.scoring import Scorer, load_raw_model
from bundle.store import discard_staging, publish, staging_dir
from training.cleaning import (
    CleaningReport,
    clean_feature_columns,
    clean_table,
    count_unreadable,
    describe_fitted_features,
    drop_rows_without_target,
    fingerprint,
    frame_columns,
)
from training.config import SYNTHETIC_DEFAULT_ROWS, SYNTHETIC_DEFAULT_SEED, TrainingConfig
from training.data import LoadedTable, TrainingDataError, as_raw_objects, load_table
from training.roles import RoleSet, infer_feature_roles, infer_target, target_vector
from training.split import SplitIndices, stratified_split

MIN_BUDGET_SHARE = 0.25  # a family behind schedule still gets this share of its nominal tuning time


class TrainingError(Exception):
    """Training could not produce a model (the data was fine); the message says why."""


@dataclass
class TrainingResult:
    bundle_dir: Path
    manifest: Manifest
    report_path: Path | None
    leaderboard: list[dict[str, Any]]


@dataclass
class PreparedData:
    """The cleaned table, split, with the schema fitted on training rows and every split encoded."""

    source: str
    table: pd.DataFrame
    cleaning: CleaningReport
    roles: RoleSet
    split: SplitIndices
    schema: FeatureSchema
    y: np.ndarray
    matrices: dict[str, np.ndarray]  # split name -> encoded matrix
    columns: dict[str, dict[str, list[Any]]]  # split name -> cleaned feature values
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)  # family -> tuning budget it was given

    def labels(self, part: str) -> np.ndarray:
        return self.y[getattr(self.split, part)]


class Stopwatch:
    """Times each step; with progress on, prints one line per step with the elapsed time."""

    def __init__(self, progress: bool) -> None:
        self.progress = progress
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}

    def say(self, message: str) -> None:
        if self.progress:
            print(f"[{time.perf_counter() - self.started:7.1f}s] {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def step(self, name: str, message: str) -> Iterator[None]:
        self.say(message)
        begun = time.perf_counter()
        yield
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - begun, 3)

    def total(self) -> float:
        return round(time.perf_counter() - self.started, 3)


# ---- data ----------------------------------------------------------------------------------
def load_source(config: TrainingConfig) -> LoadedTable:
    if isinstance(config.data, pd.DataFrame):
        if config.data.empty:
            raise TrainingDataError("the given table has no rows")
        return LoadedTable(frame=as_raw_objects(config.data), source=f"in-memory table ({len(config.data)} rows)")
    if config.data is None:
        from training.synthetic import generate_customers

        frame = generate_customers(SYNTHETIC_DEFAULT_ROWS, SYNTHETIC_DEFAULT_SEED)
        source = f"synthetic telco table ({SYNTHETIC_DEFAULT_ROWS} rows, seed {SYNTHETIC_DEFAULT_SEED})"
        return LoadedTable(frame=as_raw_objects(frame), source=source)
    return load_table(config.data, table=config.table, query=config.query)


def prepare_data(config: TrainingConfig, watch: Stopwatch) -> PreparedData:
    with watch.step("load", "reading data"):
        loaded = load_source(config)
    with watch.step("prepare", f"cleaning {len(loaded.frame)} rows x {loaded.frame.shape[1]} columns"):
        table, cleaning = clean_table(loaded.frame)
        target = infer_target(table, config.target, config.positive_label)
        table = drop_rows_without_target(table, target.column, cleaning)
        y = target_vector(table[target.column], target)
        split = stratified_split(y, config.seed)
        train = table.iloc[split.train]
        roles = infer_feature_roles(train, target, config.id_column)
        if not roles.features:
            raise TrainingDataError(f"no usable feature columns: {describe_unused(roles)}")
        schema = fit_schema(roles, train, cleaning)
        columns, matrices = {}, {}
        for part in ("train", "validation", "test"):
            rows = table.iloc[getattr(split, part)]
            columns[part] = clean_feature_columns(schema, rows)
            matrices[part] = schema.encode(columns[part], len(rows)).matrix
    watch.say(
        f"{len(table)} rows, churn rate {y.mean():.1%}, {len(schema.features)} features "
        f"({schema.n_encoded} encoded), {len(roles.dropped)} columns dropped"
    )
    return PreparedData(loaded.source, table, cleaning, roles, split, schema, y, matrices, columns)


def describe_unused(roles: RoleSet) -> str:
    """Why no column can be a feature, e.g. "customerID is the id; x dropped (identifier)"."""
    parts = [f"{roles.id_column} is the id"] if roles.id_column else []
    parts += [f"{column.name} dropped ({column.reason})" for column in roles.dropped]
    return "; ".join(parts) if parts else f"the table has no column besides the target {roles.target.column!r}"


def fit_schema(roles: RoleSet, train: pd.DataFrame, cleaning: CleaningReport | None = None) -> FeatureSchema:
    """Fit every feature on the training rows only, reading values by the rules serving uses."""
    provisional = FeatureSchema(
        features=[
            FeatureSpec(name=c.name, kind=c.kind, true_label=c.true_label, false_label=c.false_label)
            for c in roles.features
        ],
        target=roles.target.column,
        positive_label=roles.target.positive_label,
    )
    raw = frame_columns(train, provisional.names)
    cleaned = clean_feature_columns(provisional, train)
    specs = [
        fit_feature(c.name, c.kind, cleaned[c.name], true_label=c.true_label, false_label=c.false_label)
        for c in roles.features
    ]
    for spec, role in zip(specs, roles.features, strict=True):
        spec.description = role.reason
    if cleaning is not None:
        cleaning.unreadable_values = count_unreadable(raw, cleaned)
        describe_fitted_features(cleaning, specs, cleaned)
    return FeatureSchema(
        features=specs,
        target=roles.target.column,
        positive_label=roles.target.positive_label,
        id_column=roles.id_column,
        dropped=roles.dropped,
    )


# ---- models ---------------------------------------------------------------------------------
def family_budgets(config: TrainingConfig) -> dict[str, Any]:
    """Each family's tuning budget; a total time budget is shared in the candidates' proportions."""
    from training.candidates import BUDGET_SHARES, Budget, default_budget

    if config.trials is None and config.time_budget is None:
        defaults = default_budget(None, None)
        return {family: defaults[family] for family in config.models}
    share_total = sum(BUDGET_SHARES[family] for family in config.models)
    return {
        family: Budget(
            trials=config.trials,
            seconds=None if config.time_budget is None else config.time_budget * BUDGET_SHARES[family] / share_total,
        )
        for family in config.models
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)


def train_families(config: TrainingConfig, data: PreparedData, watch: Stopwatch) -> tuple[list[Any], list[dict]]:
    """Tune every requested family; one family's failure is recorded, not fatal."""
    from training.candidates import train_candidate

    nominal = family_budgets(config)
    results, leaderboard = [], []
    y_train, y_val = data.labels("train"), data.labels("validation")
    total_seconds = sum(b.seconds for b in nominal.values()) if all(b.seconds for b in nominal.values()) else None
    tuning_started = time.perf_counter()
    for position, family in enumerate(config.models):
        budget = nominal[family]
        if total_seconds is not None:
            seconds_left = total_seconds - (time.perf_counter() - tuning_started)
            budget = share_remaining_time(nominal, family, config.models[position:], seconds_left)
        data.budgets[family] = {"trials": budget.trials, "seconds": budget.seconds}
        with watch.step(f"tune_{family}", f"tuning {family} (budget: {describe_budget(budget)})"):
            try:
                seed_everything(config.seed)
                result = train_candidate(
                    family,
                    data.matrices["train"],
                    y_train,
                    data.matrices["validation"],
                    y_val,
                    budget=budget,
                    seed=config.seed,
                    progress=config.progress,
                )
            except Exception as exc:  # any library failure in one family must not sink the others
                leaderboard.append({"family": family, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
                watch.say(f"{family} failed: {type(exc).__name__}: {exc}")
                continue
        results.append(result)
        leaderboard.append(leaderboard_entry(result, y_val))
        watch.say(f"{family}: CV ROC-AUC {result.cv_roc_auc:.4f}, validation {leaderboard[-1]['val_roc_auc']:.4f}")
    if not results:
        errors = "; ".join(f"{row['family']}: {row['error']}" for row in leaderboard)
        raise TrainingError(f"every model family failed ({errors})")
    return results, leaderboard


def add_soft_vote(
    config: TrainingConfig, data: PreparedData, results: list[Any], leaderboard: list[dict], watch: Stopwatch
) -> None:
    """Add the soft-vote ensemble of the trained families as one more candidate; its failure is not fatal."""
    from training.candidates import SOFT_VOTE, build_soft_vote

    y_val = data.labels("validation")
    with watch.step(f"tune_{SOFT_VOTE}", "building the soft-vote ensemble"):
        try:
            X_train, y_train = data.matrices["train"], data.labels("train")
            ensemble = build_soft_vote(results, X_train, y_train, data.matrices["validation"], y_val, seed=config.seed)
        except Exception as exc:  # the families' own results stay usable
            leaderboard.append({"family": SOFT_VOTE, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
            watch.say(f"{SOFT_VOTE} failed: {type(exc).__name__}: {exc}")
            return
    if ensemble is None:
        watch.say(f"{SOFT_VOTE}: skipped (needs logistic regression and a boosted tree)")
        return
    results.append(ensemble)
    leaderboard.append(leaderboard_entry(ensemble, y_val))
    watch.say(f"{SOFT_VOTE}: CV ROC-AUC {ensemble.cv_roc_auc:.4f}, validation {leaderboard[-1]['val_roc_auc']:.4f}")


def share_remaining_time(nominal: dict[str, Any], family: str, pending: tuple[str, ...], seconds_left: float) -> Any:
    """``family``'s proportional share of the tuning time still left.

    A total time budget is a promise about the whole run: a family that overran (a slow default
    trial, the final refit) shortens the families after it, and one that finished early lends
    them its time. A family never drops below MIN_BUDGET_SHARE of its nominal time.
    """
    from training.candidates import Budget

    share = nominal[family].seconds / sum(nominal[name].seconds for name in pending)
    seconds = max(seconds_left * share, MIN_BUDGET_SHARE * nominal[family].seconds)
    return Budget(trials=nominal[family].trials, seconds=round(seconds, 1))


def describe_budget(budget: Any) -> str:
    parts = []
    if budget.trials is not None:
        parts.append(f"{budget.trials} trials")
    if budget.seconds is not None:
        parts.append(f"{budget.seconds:.0f} s")
    return " or ".join(parts) if parts else "unlimited"


def leaderboard_entry(result: Any, y_val: np.ndarray) -> dict[str, Any]:
    raw = np.clip(np.asarray(result.val_raw, dtype=np.float64), 1e-7, 1 - 1e-7)
    return {
        "family": result.family,
        "status": "ok",
        "cv_roc_auc": float(result.cv_roc_auc),
        "cv_roc_auc_std": float(result.cv_roc_auc_std),
        "val_roc_auc": float(roc_auc_score(y_val, raw)),
        "val_log_loss": float(log_loss(y_val, raw, labels=[0, 1])),
        "fit_seconds": round(float(result.fit_seconds), 3),
        "trials": int(result.trials),
        "params": result.params,
    }


def pick_winner(
    results: list[Any], leaderboard: list[dict[str, Any]], y_val: np.ndarray, *, seed: int, resamples: int = 200
) -> tuple[Any, str]:
    """Validation decides, unless its verdict is within its own noise; then cross-validation breaks the tie.

    A 15% validation split of a few thousand customers cannot separate candidates a few thousandths of
    ROC-AUC apart. Every candidate whose validation ROC-AUC is within one paired-bootstrap standard error
    of the best (same resampled validation rows for both) counts as tied with it; among the tied, the
    higher cross-validated ROC-AUC on the (much larger) training split wins, then the lower validation
    log loss. Returns the winner and a sentence saying why, for the report.
    """
    rows = {row["family"]: row for row in leaderboard if row["status"] == "ok"}
    best = max(results, key=lambda r: (rows[r.family]["val_roc_auc"], -rows[r.family]["val_log_loss"]))
    tied = [r for r in results if r is best or _within_validation_noise(best, r, y_val, seed, resamples)]
    winner = max(tied, key=lambda r: (rows[r.family]["cv_roc_auc"], -rows[r.family]["val_log_loss"]))
    if len(tied) == 1:
        return winner, "highest validation ROC-AUC, ahead of the others by more than the validation noise"
    others = ", ".join(r.family for r in tied if r is not winner)
    return winner, (
        f"validation ROC-AUC within one paired-bootstrap standard error of the best ({others} tied with it); "
        "highest cross-validated ROC-AUC among the tied"
    )


def _within_validation_noise(best: Any, other: Any, y_val: np.ndarray, seed: int, resamples: int) -> bool:
    """Is ``other``'s validation ROC-AUC gap to ``best`` smaller than its paired-bootstrap standard error?"""
    rng = np.random.default_rng(seed)
    best_raw, other_raw = np.asarray(best.val_raw), np.asarray(other.val_raw)
    gap = roc_auc_score(y_val, best_raw) - roc_auc_score(y_val, other_raw)
    gaps = []
    for _ in range(resamples):
        index = rng.integers(0, len(y_val), len(y_val))
        if y_val[index].min() == y_val[index].max():
            continue
        gaps.append(roc_auc_score(y_val[index], best_raw[index]) - roc_auc_score(y_val[index], other_raw[index]))
    return len(gaps) > 1 and gap <= float(np.std(gaps, ddof=1))


# ---- bundle ---------------------------------------------------------------------------------
def empty_drift_reference() -> DriftReference:
    return DriftReference(features=[], score=FeatureReference("score", "score", [], [], [1.0], 0))


def drift_reference(schema: FeatureSchema, train: dict[str, list[Any]], scores: np.ndarray) -> DriftReference:
    """Frozen bins of every feature (training split) and of the served model's validation scores."""
    features = []
    for spec in schema.features:
        values = train[spec.name]
        if spec.kind == "numeric":
            numbers = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            features.append(numeric_reference(spec.name, numbers))
        else:
            # Booleans are binned as the text clean_category gives them: "True" / "False".
            features.append(categorical_reference(spec.name, values))
    return DriftReference(features=features, score=numeric_reference("score", scores, kind="score"))


def require_writable(model_dir: Path) -> None:
    """Fail before any work if bundles could not be published."""
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingDataError(f"cannot create model directory {model_dir}: {exc.strerror or exc}") from None
    if not os.access(model_dir, os.W_OK | os.X_OK):
        raise TrainingDataError(f"model directory {model_dir} is not writable")


def run_training(config: TrainingConfig) -> TrainingResult:
    """Train, evaluate and publish one bundle; TrainingDataError/TrainingError explain failures."""
    try:
        config.validate()
    except ValueError as exc:
        raise TrainingDataError(str(exc)) from None
    model_dir = Path(config.model_dir)
    require_writable(model_dir)
    watch = Stopwatch(config.progress)
    discard_staging(model_dir)
    seed_everything(config.seed)
    data = prepare_data(config, watch)
    results, leaderboard = train_families(config, data, watch)
    add_soft_vote(config, data, results, leaderboard, watch)
    winner, winner_reason = pick_winner(results, leaderboard, data.labels("validation"), seed=config.seed)
    watch.say(f"winner: {winner.family} ({winner_reason})")
    version = new_version()
    stage = staging_dir(model_dir, version)
    try:
        return finish_bundle(config, data, winner, winner_reason, leaderboard, version, stage, watch)
    except BaseException:
        import shutil

        shutil.rmtree(stage, ignore_errors=True)
        raise


def finish_bundle(
    config: TrainingConfig,
    data: PreparedData,
    winner: Any,
    winner_reason: str,
    leaderboard: list[dict[str, Any]],
    version: str,
    stage: Path,
    watch: Stopwatch,
) -> TrainingResult:
    from training.calibration import calibration_summary, fit_calibration
    from training.candidates import save_artifact
    from training.evaluation import evaluate
    from training.importance import permutation_importance_by_feature
    from training.threshold import choose_threshold

    y_val, y_test = data.labels("validation"), data.labels("test")
    with watch.step("calibrate", "saving the winner, loading it back as serving does, calibrating"):
        artifact, artifact_format = save_artifact(winner.family, winner.estimator, stage)
        manifest = Manifest(
            version=version,
            created_at=utc_now_iso(),
            model_family=winner.family,
            artifact=artifact,
            artifact_format=artifact_format,
            schema=data.schema,
            drift_reference=empty_drift_reference(),
            threshold=0.5,
        )
        served = load_raw_model(stage, manifest)
        raw_val = served.raw_proba(data.matrices["validation"])
        calibration: Calibration = fit_calibration(raw_val, y_val, seed=config.seed)
        scorer = Scorer(served, calibration)
        p_val = scorer.predict_proba(data.matrices["validation"])
        threshold = choose_threshold(
            y_val,
            p_val,
            strategy=config.threshold_strategy,
            offer_cost=config.offer_cost,
            saved_value=config.saved_value,
        )
    with watch.step("evaluate", "scoring the test split (once)"):
        p_test = scorer.predict_proba(data.matrices["test"])
        test_metrics = evaluate(y_test, p_test, threshold["threshold"])
    with watch.step("importance", "permutation importance on validation"):
        importance = permutation_importance_by_feature(
            scorer.predict_proba, data.schema, data.columns["validation"], y_val, seed=config.seed
        )
    calibration_info = calibration_summary(raw_val, y_val, calibration, seed=config.seed)
    manifest.calibration = calibration
    manifest.threshold = float(threshold["threshold"])
    manifest.threshold_strategy = config.threshold_strategy
    manifest.metrics = test_metrics
    manifest.leaderboard = leaderboard
    manifest.drift_reference = drift_reference(data.schema, data.columns["train"], p_val)
    manifest.libraries = library_versions()
    report_path = None
    if config.report:
        with watch.step("report", "writing the report"):
            from training.report import write_report

            context = report_context(version, data, leaderboard, winner, winner_reason, threshold, calibration_info)
            context.update(test_metrics=test_metrics, y_test=y_test, p_test=p_test, importance=importance)
            context["timings"] = dict(watch.timings)
            written = write_report(stage / "report", context)
            report_path = Path(written)
    manifest.training = training_info(
        config, data, winner, winner_reason, threshold, calibration_info, importance, watch
    )
    with watch.step("publish", "publishing the bundle"):
        bundle_dir = publish(stage, manifest, Path(config.model_dir), make_current=config.make_current)
    if report_path is not None:
        report_path = bundle_dir / report_path.relative_to(stage)
    watch.say(f"done in {watch.total():.1f}s: {bundle_dir}")
    return TrainingResult(bundle_dir=bundle_dir, manifest=manifest, report_path=report_path, leaderboard=leaderboard)


def data_summary(data: PreparedData) -> dict[str, Any]:
    positives = int(data.y.sum())
    return {
        "source": data.source,
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


def report_context(
    version: str,
    data: PreparedData,
    leaderboard: list[dict[str, Any]],
    winner: Any,
    winner_reason: str,
    threshold: dict[str, Any],
    calibration_info: dict[str, Any],
) -> dict[str, Any]:
    return {
        "version": version,
        "data": data_summary(data),
        "cleaning": data.cleaning.to_dict(),
        "roles": data.roles.report(),
        "leaderboard": leaderboard,
        "winner": winner.family,
        "winner_reason": winner_reason,
        "threshold": threshold,
        "calibration": calibration_info,
    }


def training_info(
    config: TrainingConfig,
    data: PreparedData,
    winner: Any,
    winner_reason: str,
    threshold: dict[str, Any],
    calibration_info: dict[str, Any],
    importance: dict[str, float],
    watch: Stopwatch,
) -> dict[str, Any]:
    timings = dict(watch.timings)
    timings["total"] = watch.total()
    return {
        "data": data_summary(data),
        "seed": config.seed,
        "models": list(config.models),
        "budget": dict(data.budgets),
        "winner": {
            "family": winner.family,
            "params": winner.params,
            "cv_roc_auc": winner.cv_roc_auc,
            "reason": winner_reason,
        },
        "threshold": threshold,
        "calibration": calibration_info,
        "importance": importance,
        "cleaning": data.cleaning.to_dict(),
        "roles": data.roles.report(),
        "timings": timings,
    }
