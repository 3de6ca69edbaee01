"""Every model family serves, and the fast paths (row encoder, compiled trees, reasons) match the bundle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest

from app.serving.predictor import build_predictor
from app.serving.trees import CompiledTrees
from bundle.features import clean_columns
from bundle.scoring import Scorer, load_raw_model
from bundle.store import current_bundle_dir, verify_bundle
from tests.conftest import customer_record, service_settings

FAMILIES = ["logistic_regression", "random_forest", "xgboost", "lightgbm", "mlp"]
FRAMEWORKS = {
    "logistic_regression": "scikit-learn",
    "random_forest": "scikit-learn",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "mlp": "pytorch",
}


def bundle_probabilities(models_dir: Path, records: list[dict[str, Any]]) -> np.ndarray:
    """The bundle's own scores, computed the way training evaluates: clean columns, encode, score."""
    bundle = current_bundle_dir(models_dir)
    manifest = verify_bundle(bundle)
    scorer = Scorer(load_raw_model(bundle, manifest), manifest.calibration)
    columns = clean_columns(manifest.schema, {name: [r[name] for r in records] for name in records[0]})
    return scorer.predict_proba(manifest.schema.encode(columns, len(records)).matrix)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_serves_what_the_bundle_predicts(
    family: str, family_models_dirs: dict[str, Path], serve: Any, customers: pd.DataFrame
) -> None:
    models_dir = family_models_dirs[family]
    client = serve(models_dir)
    records = [customer_record(customers, row) for row in range(0, 200, 9)]
    expected = bundle_probabilities(models_dir, records)

    singles = [client.post("/predict", json=record).json() for record in records]
    batch = client.post("/predict/batch", json=records, params={"reasons": "true"}).json()["results"]

    assert client.get("/metadata").json()["model"]["framework"] == FRAMEWORKS[family]
    np.testing.assert_allclose([s["churn_probability"] for s in singles], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose([b["churn_probability"] for b in batch], expected, rtol=0, atol=1e-6)
    for single, batched in zip(singles, batch, strict=True):
        assert [r["feature"] for r in single["top_reasons"]] == [r["feature"] for r in batched["top_reasons"]]
        assert all(reason["contribution"] > 0 for reason in single["top_reasons"])


@pytest.mark.parametrize("family", ["random_forest", "xgboost", "lightgbm"])
def test_compiled_trees_reproduce_the_native_library(family: str, family_models_dirs: dict[str, Path]) -> None:
    predictor = build_predictor(service_settings(family_models_dirs[family]))
    model = predictor.scorer.model
    assert isinstance(model, CompiledTrees)
    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(500, predictor.schema.n_encoded))
    matrix[::2] = rng.integers(0, 2, size=matrix[::2].shape)

    np.testing.assert_allclose(model.raw_proba(matrix), model.native.raw_proba(matrix), rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.raw_proba(matrix[:1]), model.native.raw_proba(matrix[:1]), rtol=0, atol=1e-6)
    # The batch kernel (blocks of rows, 500 here) adds the same leaves in the same order as the
    # small-input one (row by row): identical sums, not merely close ones.
    row_by_row = np.concatenate([model.leaf_sums(matrix[start : start + 100]) for start in range(0, 500, 100)])
    np.testing.assert_array_equal(model.leaf_sums(matrix), row_by_row)


def test_torch_and_numba_are_imported_only_for_the_bundles_that_need_them(
    family_models_dirs: dict[str, Path],
) -> None:
    """torch for an MLP, numba (the tree compiler, over 100 MiB) for tree ensembles; neither otherwise."""
    script = (
        "import sys; from app.serving.predictor import build_predictor; from tests.conftest import service_settings; "
        "from pathlib import Path; build_predictor(service_settings(Path(sys.argv[1]))); "
        "print('torch' in sys.modules, 'numba' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[3]
    imported = {
        family: subprocess.run(
            [sys.executable, "-c", script, str(family_models_dirs[family])],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for family in ("xgboost", "mlp", "logistic_regression")
    }

    assert imported == {"xgboost": "False True", "mlp": "True False", "logistic_regression": "False False"}


@pytest.mark.slow
def test_a_bundle_from_the_training_pipeline_serves(tmp_path: Path, serve: Any) -> None:
    from training.config import TrainingConfig
    from training.pipeline import run_training
    from training.synthetic import generate_customers

    table = generate_customers(1500, seed=5)
    config = TrainingConfig(
        data=table,
        model_dir=tmp_path / "models",
        models=("logistic_regression",),
        trials=1,
        report=False,
        progress=False,
    )
    result = run_training(config)
    client = serve(tmp_path / "models")
    raw_rows = table.head(25).to_dict(orient="records")  # straight from the training table, id and target included

    batch = client.post("/predict/batch", json=raw_rows).json()

    assert client.get("/ready").json()["model_version"] == result.manifest.version
    assert batch["failed"] == 0, batch["results"][:1]
    features = {spec.name for spec in result.manifest.schema.features}
    expected = bundle_probabilities(
        tmp_path / "models", [{k: v for k, v in r.items() if k in features} for r in raw_rows]
    )
    np.testing.assert_allclose([r["churn_probability"] for r in batch["results"]], expected, rtol=0, atol=1e-9)
    id_column = result.manifest.schema.id_column
    if id_column:
        assert [r["customer_id"] for r in batch["results"]] == [str(r[id_column]) for r in raw_rows]


@pytest.mark.slow
@pytest.mark.parametrize("schema", ["bank", "subscription"])
def test_batches_of_other_tables_clean_as_each_record_does_alone(tmp_path: Path, schema: str) -> None:
    """Rows straight from other tables ("$" fees, "?" and "NA", text numbers, true/false labels, ids and
    targets), as JSON: a batch cleans, scores and explains each of them as it does the record alone."""
    import orjson

    from training.config import TrainingConfig
    from training.pipeline import run_training
    from training.synthetic import generate_customers

    table = generate_customers(1200, seed=9, schema=schema)
    config = TrainingConfig(
        data=table, model_dir=tmp_path / "models", models=("lightgbm",), trials=1, report=False, progress=False
    )
    run_training(config)
    predictor = build_predictor(service_settings(tmp_path / "models"))
    rows = table.sample(300, random_state=1).to_dict(orient="records")
    body = orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY)

    batch = predictor.predict_records(orjson.loads(body), explain=True)
    alone = [predictor.predict_records([record], explain=True) for record in orjson.loads(body)]

    assert not batch.errors and not any(single.errors for single in alone)
    np.testing.assert_allclose(
        batch.scored.probabilities, [single.scored.probabilities[0] for single in alone], rtol=0, atol=1e-12
    )
    assert batch.scored.customer_ids == [single.scored.customer_ids[0] for single in alone]
    assert batch.scored.warnings == [single.scored.warnings[0] for single in alone]
    for name, values in batch.event.columns.items():
        assert values == [single.event.columns[name][0] for single in alone]


def build_soft_vote_bundle(models_dir: Path) -> Path:
    """A published soft-vote bundle (logistic regression + LightGBM), laid out like ``python -m training``'s."""
    from bundle.manifest import Calibration, Manifest, library_versions, new_version, utc_now_iso
    from bundle.scoring import SoftVote
    from bundle.store import publish, staging
    from tests.conftest import TARGET, _drift_reference, _fit_estimator, clean_frame, fit_schema, synthetic_customers

    frame = synthetic_customers(seed=1)
    schema = fit_schema(frame)
    columns = clean_frame(schema, frame)
    matrix = schema.encode(columns, len(frame)).matrix
    labels = (frame[TARGET].astype(str) == "Yes").to_numpy().astype(int)
    members = [(family, _fit_estimator(family, matrix, labels, 0), weight) for family, weight in VOTE_MEMBERS]
    version = new_version()
    with staging(models_dir, version) as staged:
        joblib.dump(SoftVote(members), staged / "model.joblib")
        manifest = Manifest(
            version=version,
            created_at=utc_now_iso(),
            model_family="soft_vote",
            artifact="model.joblib",
            artifact_format="joblib",
            schema=schema,
            drift_reference=_drift_reference(schema, columns, np.linspace(0, 1, len(frame))),
            threshold=0.4,
            calibration=Calibration(method="platt", platt_a=1.1, platt_b=-0.2),
            metrics={"roc_auc": 0.8},
            training={"rows": len(frame), "seed": 0, "source": "synthetic test table"},
            libraries=library_versions(),
        )
        return publish(staged, manifest, models_dir, make_current=True)


VOTE_MEMBERS = [("logistic_regression", 0.4), ("lightgbm", 0.6)]


def test_a_soft_vote_bundle_serves_what_the_in_process_scorer_predicts(
    tmp_path: Path, serve: Any, customers: pd.DataFrame
) -> None:
    models_dir = tmp_path / "models"
    build_soft_vote_bundle(models_dir)
    predictor = build_predictor(service_settings(models_dir))
    client = serve(models_dir)
    records = [customer_record(customers, row) for row in range(0, 300, 7)]
    expected = bundle_probabilities(models_dir, records)

    singles = [client.post("/predict", json=record).json() for record in records]
    batch = client.post("/predict/batch", json=records, params={"reasons": "true"}).json()["results"]

    # Each tree member is compiled; the linear member stays a dot product.
    members = [type(model).__name__ for _, model, _ in predictor.scorer.model.members]
    assert members == ["LinearModel", "CompiledTrees"]
    np.testing.assert_allclose([s["churn_probability"] for s in singles], expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose([b["churn_probability"] for b in batch], expected, rtol=0, atol=1e-9)
    for single, batched in zip(singles, batch, strict=True):
        assert single["top_reasons"] == batched["top_reasons"]
