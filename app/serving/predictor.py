"""The predictor: owns the verified bundle and turns parsed customer records into explained predictions.

It knows nothing of HTTP. Loading goes current bundle -> checksum verification (before anything is
unpickled) -> model -> warm-up prediction; a failure at any step raises ``BundleError`` with the
reason. Prediction is one path for one record or ten thousand: clean (the bundle's
``RecordCleaner``) -> encode (``FeatureSchema.encode``) -> score and explain (``Explainer``) ->
calibrate -> decisions, risk bands, actions, prediction ids -> results and the monitoring event.
The cleaned columns are the one record shape from the request to the prediction log.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.monitoring.events import PredictionEvent
from app.serving.explain import Explainer
from app.serving.ids import new_prediction_ids
from app.serving.response import PredictionOutcome, ScoredRecords
from app.serving.risk import RiskPolicy
from app.settings import Settings
from bundle.features import FeatureSchema
from bundle.manifest import BundleError, Manifest
from bundle.records import CUSTOMER_ID, CleanBatch, FieldError, RecordCleaner, RecordError
from bundle.scoring import EnsembleModel, RawModel, Scorer, apply_calibration, load_raw_model
from bundle.store import bundle_path, current_bundle_dir, verify_bundle

__all__ = ["CUSTOMER_ID", "FieldError", "Predictor", "RecordError", "build_predictor", "compiled", "example_record"]

_EXACT_INTEGERS = 2**53
TREE_FAMILIES = frozenset({"lightgbm", "xgboost", "random_forest"})


def example_record(schema: FeatureSchema) -> dict[str, Any]:
    """A typical customer as a client would send it: every feature at its training imputation value."""
    return {spec.name: spec.example() for spec in schema.features}


def compiled(family: str, native: RawModel, width: int) -> RawModel:
    """The model with its tree ensembles compiled (see ``app.serving.trees``); others as they are.

    The compiler (numba) is imported only for a bundle with trees, like torch only for an MLP.
    """
    members = [member for member, _, _ in native.members] if isinstance(native, EnsembleModel) else [family]
    if not TREE_FAMILIES.intersection(members):
        return native
    from app.serving.trees import compile_trees

    return compile_trees(family, native, width)


class Predictor:
    """A loaded, verified, warmed-up bundle. Immutable once built, so it can be swapped atomically."""

    def __init__(
        self, bundle_dir: Path, manifest: Manifest, scorer: Scorer, risk: RiskPolicy, top_reasons: int = 3
    ) -> None:
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.schema = manifest.schema
        self.version = manifest.version
        self.threshold = manifest.threshold
        self.scorer = scorer
        self.risk = risk
        self.top_reasons = top_reasons
        self.cleaner = RecordCleaner(self.schema)
        self.explainer = Explainer(self.schema, scorer.model)
        self.loaded_at = time.time()
        self.load_seconds = 0.0

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: Path, risk: RiskPolicy, top_reasons: int = 3, version: str | None = None) -> Predictor:
        """Load the bundle ``model_dir/current`` names (or exactly ``version``); BundleError with the reason."""
        started = time.perf_counter()
        try:
            bundle_dir = current_bundle_dir(model_dir) if version is None else bundle_path(model_dir, version)
            manifest = verify_bundle(bundle_dir)  # every SHA-256 checked before anything is unpickled
            if version is not None and manifest.version != version:
                raise BundleError(f"bundle directory {version} holds version {manifest.version}")
            native = load_raw_model(bundle_dir, manifest)
            model = compiled(manifest.model_family, native, manifest.schema.n_encoded)
            scorer = Scorer(model, manifest.calibration)
            predictor = cls(bundle_dir, manifest, scorer, risk, top_reasons)
            predictor.warm_up()
        except BundleError:
            raise
        except Exception as exc:  # an unusable bundle must never take the process down
            raise BundleError(f"cannot load the bundle: {type(exc).__name__}: {exc}") from exc
        predictor.load_seconds = time.perf_counter() - started
        return predictor

    def warm_up(self) -> None:
        """Predict the schema's own example, with and without reasons, so no first request pays first-call costs."""
        example = example_record(self.schema)
        outcome = self.predict_records([example, example], explain=True)
        self.predict_records([example], explain=False)
        if outcome.errors:
            reason = outcome.errors[0].errors[0].msg
            raise BundleError(f"warm-up prediction rejected the schema's own example: {reason}")
        for probability in outcome.scored.probabilities if outcome.scored is not None else []:
            if not math.isfinite(probability) or not 0.0 <= probability <= 1.0:
                raise BundleError(f"warm-up prediction returned {probability!r}, not a probability")

    # ---- prediction -------------------------------------------------------------------------
    def predict_records(self, records: Sequence[Any], explain: bool = True) -> PredictionOutcome:
        """Clean, encode, score and explain parsed ``records``; results keep the input order."""
        started = time.perf_counter()
        batch, errors = self.cleaner.clean(records)
        cleaned_at = time.perf_counter()
        if not batch:
            return PredictionOutcome(None, errors, None, {"validation": cleaned_at - started})

        encoded = self.schema.encode(batch.columns, len(batch))
        encoded_at = time.perf_counter()

        if explain and self.top_reasons > 0:
            raw, contributions = self.explainer.score_and_explain(encoded.matrix)
        else:
            raw, contributions = self.explainer.score(encoded.matrix), None
        # np.minimum/np.maximum, not np.clip: the same values at a fraction of the cost on one row.
        scores = np.minimum(np.maximum(apply_calibration(self.scorer.calibration, raw), 0.0), 1.0)
        scored_at = time.perf_counter()

        decisions = scores >= self.threshold
        bands = self.risk.bands_of(scores)
        prediction_ids = new_prediction_ids(len(batch))
        scored = ScoredRecords(
            indices=batch.indices,
            customer_ids=batch.customer_ids,
            prediction_ids=prediction_ids,
            probabilities=scores.tolist(),
            decisions=decisions.tolist(),
            risk_bands=bands,
            actions=list(map(self.risk.actions, bands)),
            warnings=encoded.warnings,
            reasons=None if contributions is None else self._reasons(contributions, batch),
            model_version=self.version,
        )
        finished = time.perf_counter()
        stages = {
            "validation": cleaned_at - started,
            "features": encoded_at - cleaned_at,
            "inference": scored_at - encoded_at,
            "explanation": finished - scored_at,
        }
        event = PredictionEvent(
            timestamp=time.time(),
            model_version=self.version,
            prediction_ids=prediction_ids,
            customer_ids=batch.customer_ids,
            columns=batch.columns,
            scores=scores,
            decisions=decisions,
            risk_bands=bands,
            imputed=encoded.imputed,
            unseen=encoded.unseen,
            out_of_range=encoded.out_of_range,
            stage_seconds=stages,
        )
        return PredictionOutcome(scored, errors, event, stages)

    def _reasons(self, contributions: np.ndarray, batch: CleanBatch) -> list[list[dict[str, Any]]]:
        """Each row's top risk-raising features with the customer's value (imputed ones filled in)."""
        if len(contributions) == 1:  # plain Python beats numpy's per-call cost on one row
            ranked = [self.explainer.top_features(contributions[0], self.top_reasons)]
        else:
            ranked = self.explainer.top_features_many(contributions, self.top_reasons)
        names, columns = self.explainer.feature_names, batch.columns
        return [
            [
                {
                    "feature": names[position],
                    "value": self.display_value(names[position], columns[names[position]][row]),
                    "contribution": round(contribution, 6),
                }
                for position, contribution in top
            ]
            for row, top in enumerate(ranked)
        ]

    def display_value(self, name: str, cleaned: Any) -> Any:
        """A value as the customer table writes it: imputed values filled in, booleans as their labels."""
        spec = self.schema[name]
        if cleaned is None:
            return spec.example()
        if spec.kind == "boolean" and spec.true_label is not None:
            return spec.true_label if cleaned else spec.false_label
        if spec.integer and isinstance(cleaned, float) and cleaned.is_integer() and abs(cleaned) <= _EXACT_INTEGERS:
            return int(cleaned)  # beyond 2**53 a float is no longer an exact whole number: keep it a float
        return cleaned


def build_predictor(settings: Settings, version: str | None = None) -> Predictor:
    """The predictor for ``settings.model_dir/current`` (or ``version``) with the configured bands and playbook."""
    risk = RiskPolicy(settings.risk_bands, settings.playbook)
    return Predictor.load(settings.model_dir, risk, settings.top_reasons, version=version)
