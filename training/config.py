"""Everything a training run can be told, with the defaults a plain ``python -m training`` uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ALL_FAMILIES = ("logistic_regression", "random_forest", "xgboost", "lightgbm", "mlp")
THRESHOLD_STRATEGIES = ("max_f1", "max_profit")

SYNTHETIC_DEFAULT_ROWS = 7043
SYNTHETIC_DEFAULT_SEED = 0


@dataclass
class TrainingConfig:
    """One training run. ``data=None`` trains on the built-in synthetic Telco-like table."""

    data: str | Path | pd.DataFrame | None = None
    table: str | None = None
    query: str | None = None
    target: str | None = None
    positive_label: str | None = None
    id_column: str | None = None
    model_dir: Path = Path("models")
    models: tuple[str, ...] = ALL_FAMILIES
    # Neither given: the candidates' default budget (a total time shared across families plus per-family
    # trial caps). A total time budget is shared across the chosen families in the same proportions.
    trials: int | None = None  # per family
    time_budget: float | None = None  # seconds of tuning in total
    seed: int = 42
    # Features a record may not omit; every other feature is imputed (with a warning) when missing.
    required: tuple[str, ...] = ()
    threshold_strategy: str = "max_f1"
    offer_cost: float | None = None
    saved_value: float | None = None
    make_current: bool = True
    as_challenger: bool = False  # published as the challenger; the champion stays
    mlflow: bool = False  # log the run to MLflow (also when MLFLOW_TRACKING_URI is set): training.tracking
    report: bool = True
    progress: bool = True

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for options that cannot work together."""
        unknown = [family for family in self.models if family not in ALL_FAMILIES]
        if unknown:
            raise ValueError(f"unknown model family {unknown[0]!r}; choose from {', '.join(ALL_FAMILIES)}")
        if not self.models:
            raise ValueError("at least one model family is needed")
        if len(set(self.models)) != len(self.models):
            raise ValueError("a model family is listed twice")
        if self.trials is not None and self.trials < 1:
            raise ValueError("--trials must be at least 1")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ValueError("--time-budget must be a positive number of seconds")
        if self.table and self.query:
            raise ValueError("give either --table or --query, not both")
        if self.threshold_strategy not in THRESHOLD_STRATEGIES:
            raise ValueError(f"unknown threshold strategy {self.threshold_strategy!r}; choose max_f1 or max_profit")
        if self.threshold_strategy == "max_profit":
            if self.offer_cost is None or self.saved_value is None:
                raise ValueError("--threshold-strategy max_profit needs --offer-cost and --saved-value")
            if self.offer_cost < 0 or self.saved_value <= 0:
                raise ValueError("--offer-cost must be >= 0 and --saved-value > 0")
