"""End-to-end training on small synthetic tables: a verified, loadable bundle that predicts like the report says."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bundle import store as bundle_module
from bundle.features import clean_columns
from bundle.manifest import BundleError
from bundle.scoring import apply_calibration
from bundle.store import current_bundle_dir, list_bundles, verify_bundle
from training import pipeline
from training.candidates import fit_with_params, predict_raw
from training.cleaning import clean_table, drop_rows_without_target
from training.config import TrainingConfig
from training.data import TrainingDataError
from training.pipeline import TrainingError, TrainingResult, run_training
from training.roles import infer_feature_roles, infer_target, target_vector
from training.selection import MIN_BUDGET_SHARE, leader_budgets, share_remaining_time
from training.split import holdout_split
from training.synthetic import generate_customers

TELCO_FILE = Path(__file__).resolve().parents[3] / "shared" / "data" / "telco" / "WA_Fn-UseC_-Telco-Customer-Churn.csv"


def fast_config(model_dir: Path, **overrides) -> TrainingConfig:
    settings = {
        "data": generate_customers(600, seed=7),
        "model_dir": model_dir,
        "models": ("logistic_regression",),
        "trials": 2,
        "report": False,
        "progress": False,
        "seed": 3,
    }
    settings.update(overrides)
    return TrainingConfig(**settings)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainingResult:
    model_dir = tmp_path_factory.mktemp("pipeline") / "models"
    return run_training(fast_config(model_dir, models=("logistic_regression", "xgboost"), report=True))


def test_bundle_is_published_verified_and_current(trained: TrainingResult) -> None:
    model_dir = trained.bundle_dir.parent
    assert current_bundle_dir(model_dir) == trained.bundle_dir
    manifest = verify_bundle(trained.bundle_dir)
    assert manifest.version == trained.bundle_dir.name
    assert manifest.model_family in ("logistic_regression", "xgboost", "soft_vote")
    assert {row["family"] for row in manifest.leaderboard} >= {"logistic_regression", "xgboost"}
    assert 0 < manifest.threshold < 1
    assert manifest.schema.id_column == "customerID" and manifest.schema.target == "Churn"
    assert trained.report_path is not None and trained.report_path.is_file()
    assert any(name.startswith("report/") for name in manifest.files)
    assert not list(model_dir.glob(".staging-*"))


def test_manifest_records_how_the_model_was_made(trained: TrainingResult) -> None:
    training = verify_bundle(trained.bundle_dir).training
    assert training["data"]["rows"] == 600 and len(training["data"]["fingerprint"]) == 64
    assert training["data"]["split"] == {"development": 480, "test": 120}
    assert training["seed"] == 3
    assert training["roles"]["TotalCharges"]["role"] == "numeric"
    assert training["cleaning"]["rows_in"] == 600
    assert "select" in training["timings"] and training["timings"]["total"] > 0
    assert set(training["budget"]) <= {"logistic_regression", "xgboost"}


def test_every_labelled_row_has_a_recorded_purpose(trained: TrainingResult) -> None:
    manifest = verify_bundle(trained.bundle_dir)
    rows = manifest.training["rows"]
    assert rows["total"] == rows["published_model"] == 600
    assert (rows["development"], rows["test"]) == (480, 120)
    assert rows["search"] == rows["calibration_and_threshold"] == rows["test_metrics_model"] == 480
    assert not rows["search_sampled"]
    assert rows["cross_validation"] == {"folds": 5, "repeats": 3, "fits": 15}  # a small table: repeated folds
    winner = manifest.training["winner"]
    assert len(winner["cv_fold_roc_auc"]) == 15
    assert winner["cv_roc_auc"] == pytest.approx(sum(winner["cv_fold_roc_auc"]) / 15)
    assert manifest.training["threshold"]["n_validation"] == 480  # fitted on out-of-fold scores
    assert manifest.training["calibration"]["n"] == 480
    assert 0 < manifest.training["out_of_fold_metrics"]["roc_auc"] < 1


def test_test_metrics_come_from_the_model_fitted_without_the_test_rows(trained: TrainingResult) -> None:
    """Redo the development fit by hand: it reproduces the reported test ROC-AUC."""
    manifest = verify_bundle(trained.bundle_dir)
    table, report = clean_table(generate_customers(600, seed=7))
    target = infer_target(table, None, None)
    table = drop_rows_without_target(table, target.column, report)
    y = target_vector(table[target.column], target)
    split = holdout_split(y, seed=3)
    development, test = table.iloc[split.development], table.iloc[split.test]
    schema = pipeline.fit_schema(infer_feature_roles(development, target), development)
    family, params = manifest.model_family, manifest.training["winner"]["params"]
    model = fit_with_params(family, params, pipeline.encode_rows(schema, development), y[split.development], seed=3)
    scores = apply_calibration(manifest.calibration, predict_raw(family, model, pipeline.encode_rows(schema, test)))
    assert roc_auc_score(y[split.test], scores) == pytest.approx(manifest.metrics["roc_auc"])


def test_manifest_stores_the_performance_estimate_on_the_test_split(trained: TrainingResult) -> None:
    reference = verify_bundle(trained.bundle_dir).performance_reference
    assert reference["realized"]["roc_auc"] == pytest.approx(trained.manifest.metrics["roc_auc"])
    assert reference["realized"]["predictions"] == reference["estimated"]["predictions"] > 0
    assert 0.5 < reference["estimated"]["roc_auc"] <= 1.0
    assert reference["threshold"] == trained.manifest.threshold


def test_published_model_is_refitted_on_every_labelled_row(trained: TrainingResult) -> None:
    manifest = verify_bundle(trained.bundle_dir)
    table, _ = clean_table(generate_customers(600, seed=7))
    columns = clean_columns(manifest.schema, {"tenure": table["tenure"].tolist()})
    tenure = [value for value in columns["tenure"] if value is not None]
    assert manifest.schema["tenure"].impute == pytest.approx(float(np.median(tenure)))
    assert manifest.schema["tenure"].maximum == max(tenure)


def test_no_feature_is_required_unless_named(trained: TrainingResult) -> None:
    assert not any(spec.required for spec in verify_bundle(trained.bundle_dir).schema.features)


def test_required_features_are_the_named_ones(tmp_path: Path) -> None:
    result = run_training(fast_config(tmp_path, required=("tenure", "Contract")))
    schema = verify_bundle(result.bundle_dir).schema
    assert [spec.name for spec in schema.features if spec.required] == ["tenure", "Contract"]
    assert result.manifest.training["required_features"] == ["tenure", "Contract"]


@pytest.mark.parametrize(
    ("name", "message"),
    [("Tenure_days", "not a column of the table"), ("customerID", "not a model feature")],
)
def test_required_names_that_are_not_features_are_refused(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(TrainingDataError, match=message):
        run_training(fast_config(tmp_path, required=("tenure", name)))
    assert not list(tmp_path.glob("*/manifest.json"))


def test_drift_reference_covers_every_feature_and_the_score(trained: TrainingResult) -> None:
    manifest = verify_bundle(trained.bundle_dir)
    reference = manifest.drift_reference
    assert [feature.name for feature in reference.features] == manifest.schema.names
    # Out-of-sample scores of every row: out of fold for development rows, the held-out model's for test rows.
    assert reference.score.kind == "score" and reference.score.count == 600
    for feature in [*reference.features, reference.score]:
        assert sum(feature.proportions) == pytest.approx(1.0)


def test_tampered_bundle_fails_verification(trained: TrainingResult, tmp_path: Path) -> None:
    copy = tmp_path / trained.bundle_dir.name
    shutil.copytree(trained.bundle_dir, copy)
    manifest = verify_bundle(copy)
    artifact = copy / manifest.artifact
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="checksum mismatch"):
        verify_bundle(copy)


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    first = run_training(fast_config(tmp_path / "a", models=("logistic_regression", "lightgbm")))
    second = run_training(fast_config(tmp_path / "b", models=("logistic_regression", "lightgbm")))
    assert first.manifest.metrics == second.manifest.metrics
    assert first.manifest.threshold == second.manifest.threshold
    assert first.manifest.training["data"]["fingerprint"] == second.manifest.training["data"]["fingerprint"]


def test_crash_while_publishing_keeps_the_old_bundle_current(tmp_path: Path, monkeypatch) -> None:
    model_dir = tmp_path / "models"
    old = run_training(fast_config(model_dir)).bundle_dir
    real_replace = os.replace

    def crash_on_current(source, destination, *args, **kwargs):
        if Path(destination).name == "current":
            raise OSError("disk unplugged")  # the process dies just before the pointer moves
        return real_replace(source, destination, *args, **kwargs)

    monkeypatch.setattr(bundle_module.os, "replace", crash_on_current)
    with pytest.raises(OSError, match="disk unplugged"):
        run_training(fast_config(model_dir))
    monkeypatch.undo()
    assert current_bundle_dir(model_dir) == old
    verify_bundle(old)
    assert len(list_bundles(model_dir)) == 2  # the new bundle was complete but never made current


def test_crash_before_the_bundle_moves_leaves_no_trace(tmp_path: Path, monkeypatch) -> None:
    model_dir = tmp_path / "models"
    old = run_training(fast_config(model_dir)).bundle_dir

    def crash(*args, **kwargs):
        raise OSError("killed")

    monkeypatch.setattr(bundle_module.os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        run_training(fast_config(model_dir))
    monkeypatch.undo()
    assert current_bundle_dir(model_dir) == old and list_bundles(model_dir) == [old.name]
    assert not list(model_dir.glob(".staging-*"))


def test_staging_left_by_a_killed_run_is_discarded(tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    leftover = model_dir / ".staging-20260101T000000Z-dead00-x"
    leftover.mkdir(parents=True)
    (leftover / "model.joblib").write_bytes(b"half written")
    run_training(fast_config(model_dir))
    assert not leftover.exists()


def test_a_failing_family_is_reported_and_the_others_continue(tmp_path: Path, monkeypatch) -> None:
    from training import selection

    real = selection.screen

    def flaky(family, *args, **kwargs):
        if family == "random_forest":
            raise MemoryError("out of memory")
        return real(family, *args, **kwargs)

    monkeypatch.setattr(selection, "screen", flaky)
    result = run_training(fast_config(tmp_path, models=("random_forest", "logistic_regression")))
    failed = [row for row in result.leaderboard if row["status"] == "failed"]
    assert failed == [{"family": "random_forest", "status": "failed", "error": "MemoryError: out of memory"}]
    assert result.manifest.model_family == "logistic_regression"


def test_all_families_failing_is_an_error(tmp_path: Path, monkeypatch) -> None:
    from training import selection

    def broken(family, *args, **kwargs):
        raise RuntimeError(f"{family} diverged")

    monkeypatch.setattr(selection, "screen", broken)
    with pytest.raises(TrainingError, match=r"every model family failed .*logistic_regression: RuntimeError"):
        run_training(fast_config(tmp_path))
    assert not list((tmp_path).glob("*/manifest.json"))


@pytest.mark.parametrize(
    ("schema", "target", "id_column"), [("bank", "Exited", "CustomerId"), ("subscription", "churned", "user_id")]
)
def test_other_schemas_train_unchanged(tmp_path: Path, schema: str, target: str, id_column: str) -> None:
    result = run_training(fast_config(tmp_path, data=generate_customers(800, seed=1, schema=schema)))
    manifest = verify_bundle(result.bundle_dir)
    assert manifest.schema.target == target and manifest.schema.id_column == id_column
    assert manifest.metrics["roc_auc"] > 0.65
    assert manifest.schema.dropped  # each has columns that must not be features


def test_budget_is_shared_across_the_tuned_families() -> None:
    budgets = leader_budgets(["xgboost", "lightgbm"], 60, {"xgboost": 5, "lightgbm": None})
    assert sum(budget.seconds for budget in budgets.values()) == pytest.approx(60)
    assert (budgets["xgboost"].trials, budgets["lightgbm"].trials) == (5, None)


def test_time_left_is_reshared_after_each_family() -> None:
    nominal = leader_budgets(["xgboost", "lightgbm", "mlp"], 90, {})
    pending = ["lightgbm", "mlp"]
    on_schedule = nominal["lightgbm"].seconds + nominal["mlp"].seconds
    # An overrun shrinks what the later families get; spare time is passed on; never below a floor.
    behind = share_remaining_time(nominal, "lightgbm", pending, on_schedule - 20)
    ahead = share_remaining_time(nominal, "lightgbm", pending, on_schedule + 20)
    late = share_remaining_time(nominal, "lightgbm", pending, -5)
    assert behind.seconds < nominal["lightgbm"].seconds < ahead.seconds
    assert late.seconds == pytest.approx(MIN_BUDGET_SHARE * nominal["lightgbm"].seconds, abs=0.1)


@pytest.mark.slow
@pytest.mark.telco
@pytest.mark.skipif(not TELCO_FILE.is_file(), reason="IBM Telco file not present")
def test_ibm_telco_trains_with_a_small_budget(tmp_path: Path) -> None:
    result = run_training(fast_config(tmp_path, data=str(TELCO_FILE), trials=3))
    manifest = verify_bundle(result.bundle_dir)
    assert manifest.training["data"]["rows"] == 7043
    assert manifest.training["data"]["churn_rate"] == pytest.approx(0.2654, abs=1e-3)
    assert manifest.training["cleaning"]["missing_markers"] == {"TotalCharges": 11}
    assert manifest.schema.id_column == "customerID" and manifest.schema["TotalCharges"].kind == "numeric"
    assert manifest.metrics["roc_auc"] > 0.82
