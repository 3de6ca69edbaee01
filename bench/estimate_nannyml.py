"""NannyML's CBPE on the rows ``python -m bench.estimate --save DIR`` logged, against the service's live estimate.

NannyML is no dependency of the project (its pins clash with the service's); run this from an
environment that has it, with the repository on the path::

    python -m venv /tmp/nannyml && /tmp/nannyml/bin/pip install nannyml
    PYTHONPATH=. /tmp/nannyml/bin/python bench/estimate_nannyml.py DIR

The first window is NannyML's reference period (its labels fit nothing but NannyML's own sampling
error); every window, the first included, is one analysis chunk. Scores are passed through
unchanged (no recalibration), so both sides apply CBPE to the same probabilities.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bundle.performance_estimate import METRICS, ScoreBins, estimate_performance


def nannyml_estimates(rows: pd.DataFrame, window_size: int) -> pd.DataFrame:
    import nannyml as nml
    from nannyml.calibration import NoopCalibrator

    estimator = nml.CBPE(
        y_pred_proba="score", y_pred="predicted_churn", y_true="churned", problem_type="classification_binary",
        metrics=list(METRICS), chunk_size=window_size, calibrator=NoopCalibrator(),
    )  # fmt: skip
    estimator.fit(rows[rows["window"] == 0])
    table = estimator.estimate(rows.drop(columns=["churned"])).filter(period="analysis").to_df()
    return pd.DataFrame({name: table[(name, "value")].to_numpy() for name in METRICS})


def main(directory: str) -> int:
    saved = json.loads((Path(directory) / "windows.json").read_text())
    rows = pd.read_csv(Path(directory) / "rows.csv")
    sizes = rows.groupby("window").size()
    if sizes.nunique() != 1:
        raise SystemExit("windows of different sizes: NannyML's chunks would not match them")
    theirs = nannyml_estimates(rows, int(sizes.iloc[0]))
    bins = ScoreBins.for_threshold(saved["threshold"])
    print("| window | metric | live (gauges) | this code, every row | NannyML CBPE | live - NannyML |")
    print("|---:|---|---:|---:|---:|---:|")
    gaps = {name: [] for name in METRICS}
    for index, window in enumerate(saved["windows"]):
        scores = rows.loc[rows["window"] == index, "score"].to_numpy()
        offline = estimate_performance(bins.summarise(scores))
        for name in METRICS:
            live, reference = window["estimated"][name], float(theirs[name].iloc[index])
            gaps[name].append(abs(live - reference))
            print(
                f"| {index} | {name} | {live:.4f} | {getattr(offline, name).value:.4f} | {reference:.4f} "
                f"| {live - reference:+.4f} |"
            )
    print()
    print("| metric | max abs. difference live vs NannyML |")
    print("|---|---:|")
    for name in METRICS:
        print(f"| {name} | {np.max(gaps[name]):.5f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
