"""The training run, end to end: data in, verified bundle out.

load -> clean -> target -> stratified development / test split -> roles and feature schema
(development rows) -> choose the family, its settings and a possible blend by cross-validation
on the development rows (a stratified sample of them on very large tables) -> calibration and
threshold fitted on the chosen configuration's out-of-fold scores -> the configuration refitted on
the development rows and scored on the test split once (the reported metrics) -> schema and model
refitted on every labelled row -> importance, drift reference, report -> publish atomically.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bundle.features import FeatureSchema, FeatureSpec, fit_feature
from bundle.manifest import Manifest, library_versions, new_version, utc_now_iso
from bundle.performance_estimate import reference_figures
from bundle.registry import ModelRegistry
from bundle.scoring import load_raw_model
from bundle.store import discard_staging, publish, staging
from training.cleaning import (
    CleaningReport,
    clean_feature_columns,
    clean_table,
    count_unreadable,
    describe_fitted_features,
    drop_rows_without_target,
    frame_columns,
)
from training.config import SYNTHETIC_DEFAULT_ROWS, SYNTHETIC_DEFAULT_SEED, TrainingConfig
from training.data import LoadedTable, TrainingDataError, as_raw_objects, load_table
from training.roles import RoleSet, infer_feature_roles, infer_target, target_vector
from training.split import HoldoutSplit, cross_validation_folds, holdout_split, search_sample
from training.tracking import tracking_enabled

IMPORTANCE_ROWS = 20_000


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
    """The cleaned table, split, with the schema fitted on the development rows and both parts encoded."""

    source: str
    table: pd.DataFrame
    cleaning: CleaningReport
    roles: RoleSet
    split: HoldoutSplit
    schema: FeatureSchema
    y: np.ndarray
    matrices: dict[str, np.ndarray]  # "development" / "test" -> encoded matrix
    test_columns: dict[str, list[Any]]  # cleaned feature values of the test rows

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
        source = loaded.source
        del loaded  # the raw frame is as large as the cleaned one: free it before encoding
        target = infer_target(table, config.target, config.positive_label)
        table = drop_rows_without_target(table, target.column, cleaning)
        y = target_vector(table[target.column], target)
        split = holdout_split(y, config.seed)
        development = table.iloc[split.development]
        roles = infer_feature_roles(development, target, config.id_column)
        if not roles.features:
            raise TrainingDataError(f"no usable feature columns: {describe_unused(roles)}")
        check_required(config.required, roles, table)
        schema = fit_schema(roles, development, cleaning)
        matrices = {"development": encode_rows(schema, development)}
        test_rows = table.iloc[split.test]
        test_columns = clean_feature_columns(schema, test_rows)
        matrices["test"] = schema.encode(test_columns, len(test_rows)).matrix
    watch.say(
        f"{len(table)} rows, churn rate {y.mean():.1%}, {len(schema.features)} features "
        f"({schema.n_encoded} encoded), {len(roles.dropped)} columns dropped"
    )
    return PreparedData(source, table, cleaning, roles, split, schema, y, matrices, test_columns)


def encode_rows(schema: FeatureSchema, rows: pd.DataFrame) -> np.ndarray:
    return schema.encode(clean_feature_columns(schema, rows), len(rows)).matrix


def check_required(required: tuple[str, ...], roles: RoleSet, table: pd.DataFrame) -> None:
    """Every --required name must be a feature; anything else is a one-line data error."""
    features = {column.name for column in roles.features}
    for name in required:
        if name in features:
            continue
        if name not in table.columns:
            raise TrainingDataError(f"--required names {name!r}, which is not a column of the table")
        dropped = {column.name: column.reason for column in roles.dropped}
        why = f"dropped: {dropped[name]}" if name in dropped else "it is the target or the customer id"
        raise TrainingDataError(f"--required names {name!r}, which is not a model feature ({why})")


def mark_required(schema: FeatureSchema, required: tuple[str, ...]) -> None:
    """Only the named features are refused when missing; the service imputes (and warns about) the rest."""
    for spec in schema.features:
        spec.required = spec.name in required


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
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)


def tuning_seconds(config: TrainingConfig) -> float | None:
    """The total tuning time: the given budget, else the default (none when only trials were given)."""
    from training.candidates import DEFAULT_TOTAL_SECONDS

    if config.time_budget is not None:
        return config.time_budget
    return DEFAULT_TOTAL_SECONDS if config.trials is None else None


def family_trials(config: TrainingConfig, family: str) -> int | None:
    from training.candidates import DEFAULT_TRIAL_CAPS

    if config.trials is not None:
        return config.trials
    return DEFAULT_TRIAL_CAPS[family] if config.time_budget is None else None


def choose_model(config: TrainingConfig, data: PreparedData, watch: Stopwatch) -> tuple[Any, np.ndarray, Any]:
    """Cross-validate on the development rows (sampled when many): the selection, its rows and folds."""
    from training.selection import select_model

    y_dev = data.labels("development")
    rows = search_sample(y_dev, config.seed)
    folds = cross_validation_folds(y_dev[rows], config.seed)
    plan = folds.describe()
    with watch.step("select", f"cross-validating on {len(rows)} rows ({plan['folds']} folds x {plan['repeats']})"):
        seed_everything(config.seed)
        selection = select_model(
            config.models,
            data.matrices["development"][rows],
            y_dev[rows],
            folds,
            seed=config.seed,
            total_seconds=tuning_seconds(config),
            trials={family: family_trials(config, family) for family in config.models},
            say=watch.say,
            progress=config.progress,
        )
    if selection.winner is None:
        errors = "; ".join(f"{row['family']}: {row['error']}" for row in selection.leaderboard)
        raise TrainingError(f"every model family failed ({errors})")
    watch.say(f"winner: {selection.winner.family} ({selection.reason})")
    return selection, rows, folds


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
    selection, search_rows, folds = choose_model(config, data, watch)
    version = new_version()
    with staging(model_dir, version) as stage:
        return finish_bundle(config, data, selection, search_rows, folds, version, stage, watch)


def finish_bundle(
    config: TrainingConfig,
    data: PreparedData,
    selection: Any,
    search_rows: np.ndarray,
    folds: Any,
    version: str,
    stage: Path,
    watch: Stopwatch,
) -> TrainingResult:
    from training.bundling import drift_reference, empty_drift_reference, out_of_fold_decision, training_info
    from training.calibration import calibrate
    from training.candidates import fit_with_params, predict_raw, save_artifact
    from training.evaluation import evaluate
    from training.importance import permutation_importance_by_feature

    winner = selection.winner
    y_search = data.labels("development")[search_rows]
    with watch.step("calibrate", "calibrating and choosing the threshold on out-of-fold scores"):
        decision = out_of_fold_decision(config, winner.cross_validated.oof, y_search)
        calibration = decision.calibration
    with watch.step("evaluate", "refitting without the test rows and scoring the test split (once)"):
        held_out_model = fit_with_params(
            winner.family, winner.params, data.matrices["development"], data.labels("development"), seed=config.seed
        )
        y_test = data.labels("test")

        def held_out_scores(X: np.ndarray) -> np.ndarray:
            return calibrate(calibration, predict_raw(winner.family, held_out_model, X))

        p_test = held_out_scores(data.matrices["test"])
        test_metrics = evaluate(y_test, p_test, decision.threshold["threshold"])
        test_metrics["rows"] = "test split, scored once by the model fitted without it"
    with watch.step("importance", "permutation importance on the test split"):
        # A sample is plenty to rank features; scoring every test row of a huge table dozens of times is not.
        sample = search_sample(y_test, config.seed, limit=IMPORTANCE_ROWS)
        importance = permutation_importance_by_feature(
            held_out_scores,
            data.schema,
            {name: [values[i] for i in sample] for name, values in data.test_columns.items()},
            y_test[sample],
            seed=config.seed,
        )
    with watch.step("refit", f"refitting {winner.family} on all {len(data.y)} labelled rows"):
        schema = fit_schema(data.roles, data.table)
        mark_required(schema, config.required)
        all_columns = clean_feature_columns(schema, data.table)
        data.matrices.pop("development")
        model = fit_with_params(
            winner.family, winner.params, schema.encode(all_columns, len(data.y)).matrix, data.y, seed=config.seed
        )
        artifact, artifact_format = save_artifact(winner.family, model, stage)
        manifest = Manifest(
            version=version,
            created_at=utc_now_iso(),
            model_family=winner.family,
            artifact=artifact,
            artifact_format=artifact_format,
            schema=schema,
            drift_reference=empty_drift_reference(),
            threshold=float(decision.threshold["threshold"]),
            calibration=calibration,
        )
        load_raw_model(stage, manifest)  # the artifact must load as serving loads it
    oof_scores = calibrate(calibration, winner.cross_validated.oof[0])
    manifest.threshold_strategy = config.threshold_strategy
    manifest.metrics = test_metrics
    manifest.performance_reference = reference_figures(p_test, y_test, manifest.threshold)
    manifest.leaderboard = selection.leaderboard
    manifest.drift_reference = drift_reference(schema, all_columns, np.concatenate([oof_scores, p_test]))
    manifest.libraries = library_versions()
    report_path = None
    if config.report:
        with watch.step("report", "writing the report"):
            from training.report import write_report

            context = report_context(version, data, selection, decision)
            context.update(test_metrics=test_metrics, y_test=y_test, p_test=p_test, importance=importance)
            context["timings"] = dict(watch.timings)
            report_path = Path(write_report(stage / "report", context))
    manifest.training = training_info(config, data, selection, decision, importance, search_rows, folds, watch)
    with watch.step("publish", "publishing the bundle"):
        bundle_dir = publish(stage, manifest, Path(config.model_dir), make_current=False)
        assign_stage(config, version)
    if report_path is not None:
        report_path = bundle_dir / report_path.relative_to(stage)
    if tracking_enabled(config.mlflow):
        with watch.step("track", "logging the run to MLflow"):
            from training.tracking import log_training

            log_training(config, manifest, bundle_dir, published_stage(config))
    watch.say(f"done in {watch.total():.1f}s: {bundle_dir}")
    return TrainingResult(
        bundle_dir=bundle_dir, manifest=manifest, report_path=report_path, leaderboard=selection.leaderboard
    )


def published_stage(config: TrainingConfig) -> str | None:
    if config.as_challenger:
        return "challenger"
    return "champion" if config.make_current else None


def assign_stage(config: TrainingConfig, version: str) -> None:
    """Make the new bundle the champion or the challenger, recorded in the model directory's history."""
    registry = ModelRegistry(Path(config.model_dir))
    if config.as_challenger:
        registry.set_challenger(version, "trained with --as-challenger")
    elif config.make_current:
        registry.promote(version, "trained and published by python -m training")


def report_context(version: str, data: PreparedData, selection: Any, decision: Any) -> dict[str, Any]:
    from training.bundling import data_summary

    return {
        "version": version,
        "data": data_summary(data),
        "cleaning": data.cleaning.to_dict(),
        "roles": data.roles.report(),
        "leaderboard": selection.leaderboard,
        "winner": selection.winner.family,
        "winner_stage": selection.winner.stage,
        "winner_reason": selection.reason,
        "threshold": decision.threshold,
        "calibration": decision.summary,
    }
