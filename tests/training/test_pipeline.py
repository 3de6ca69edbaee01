"""End-to-end training on small synthetic tables: a verified, loadable bundle that predicts like the report says."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from bundle import store as bundle_module
from bundle.features import clean_columns
from bundle.manifest import BundleError
from bundle.scoring import Scorer, load_raw_model
from bundle.store import current_bundle_dir, list_bundles, verify_bundle
from training import pipeline
from training.cleaning import clean_table, drop_rows_without_target
from training.config import TrainingConfig
from training.pipeline import TrainingError, TrainingResult, run_training
from training.roles import infer_target, target_vector
from training.split import stratified_split
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
    assert training["data"]["split"] == {"train": 420, "validation": 90, "test": 90}
    assert training["seed"] == 3
    assert training["roles"]["TotalCharges"]["role"] == "numeric"
    assert training["cleaning"]["rows_in"] == 600
    assert "tune_xgboost" in training["timings"] and training["timings"]["total"] > 0
    assert set(training["budget"]) == {"logistic_regression", "xgboost"}


def test_served_model_reproduces_the_test_metrics(trained: TrainingResult) -> None:
    """Re-split the table as training did and score test rows through serving's own code path."""
    manifest = verify_bundle(trained.bundle_dir)
    table, report = clean_table(generate_customers(600, seed=7))
    target = infer_target(table, None, None)
    table = drop_rows_without_target(table, target.column, report)
    y = target_vector(table[target.column], target)
    test = table.iloc[stratified_split(y, seed=3).test]
    schema = manifest.schema
    columns = clean_columns(schema, {name: test[name].tolist() for name in schema.names})
    matrix = schema.encode(columns, len(test)).matrix
    scores = Scorer(load_raw_model(trained.bundle_dir, manifest), manifest.calibration).predict_proba(matrix)
    assert roc_auc_score(y[stratified_split(y, seed=3).test], scores) == pytest.approx(manifest.metrics["roc_auc"])


def test_drift_reference_covers_every_feature_and_the_score(trained: TrainingResult) -> None:
    manifest = verify_bundle(trained.bundle_dir)
    reference = manifest.drift_reference
    assert [feature.name for feature in reference.features] == manifest.schema.names
    assert reference.score.kind == "score" and reference.score.count == 90
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
    from training import candidates

    real = candidates.train_candidate

    def flaky(family, *args, **kwargs):
        if family == "random_forest":
            raise MemoryError("out of memory")
        return real(family, *args, **kwargs)

    monkeypatch.setattr(candidates, "train_candidate", flaky)
    result = run_training(fast_config(tmp_path, models=("random_forest", "logistic_regression")))
    failed = [row for row in result.leaderboard if row["status"] == "failed"]
    assert failed == [{"family": "random_forest", "status": "failed", "error": "MemoryError: out of memory"}]
    assert result.manifest.model_family == "logistic_regression"


def test_all_families_failing_is_an_error(tmp_path: Path, monkeypatch) -> None:
    from training import candidates

    def broken(family, *args, **kwargs):
        raise RuntimeError(f"{family} diverged")

    monkeypatch.setattr(candidates, "train_candidate", broken)
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


def test_budget_is_shared_across_the_chosen_families() -> None:
    budgets = pipeline.family_budgets(TrainingConfig(models=("xgboost", "lightgbm"), time_budget=60))
    assert sum(budget.seconds for budget in budgets.values()) == pytest.approx(60)
    defaults = pipeline.family_budgets(TrainingConfig())
    assert set(defaults) == set(TrainingConfig().models)
    assert all(budget.trials and budget.seconds for budget in defaults.values())


def test_time_left_is_reshared_after_each_family() -> None:
    nominal = pipeline.family_budgets(TrainingConfig(models=("xgboost", "lightgbm", "mlp"), time_budget=90))
    pending = ("lightgbm", "mlp")
    on_schedule = nominal["lightgbm"].seconds + nominal["mlp"].seconds
    # An overrun shrinks what the later families get; spare time is passed on; never below a floor.
    behind = pipeline.share_remaining_time(nominal, "lightgbm", pending, on_schedule - 20)
    ahead = pipeline.share_remaining_time(nominal, "lightgbm", pending, on_schedule + 20)
    late = pipeline.share_remaining_time(nominal, "lightgbm", pending, -5)
    assert behind.seconds < nominal["lightgbm"].seconds < ahead.seconds
    assert late.seconds == pytest.approx(pipeline.MIN_BUDGET_SHARE * nominal["lightgbm"].seconds, abs=0.1)


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
