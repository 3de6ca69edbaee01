"""Which charts the report draws, from whatever parts of the context are present."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from training import plots
from training.evaluation import is_number
from training.report.context import has_both_classes, test_arrays
from training.threshold import threshold_curve


def draw_charts(directory: Path, context: Mapping[str, Any]) -> dict[str, str]:
    """Draw every chart the context has data for; returns chart name -> file name inside ``directory``."""
    drawn: dict[str, str] = {}
    threshold = (context.get("threshold") or {}).get("threshold")
    arrays = test_arrays(context)

    def draw(name: str, make: Callable[[Path], Path]) -> None:
        make(directory / f"{name}.png")
        drawn[name] = f"{name}.png"

    if arrays is not None:
        y, p = arrays
        if has_both_classes(y):
            draw("roc_curve", lambda path: plots.plot_roc_curve(y, p, path))
            draw(
                "precision_recall_curve",
                lambda path: plots.plot_precision_recall_curve(y, p, path, threshold=threshold),
            )
        draw("calibration_curve", lambda path: plots.plot_calibration_curve(y, p, path))
        if is_number(threshold):
            chosen = context.get("threshold") or {}
            curve = threshold_curve(
                y,
                p,
                offer_cost=chosen.get("offer_cost"),
                saved_value=chosen.get("saved_value"),
                acceptance_rate=chosen.get("acceptance_rate", 1.0),
            )
            measures = (
                "precision, recall, F1 and expected profit"
                if "expected_profit" in curve
                else "precision, recall and F1"
            )
            title = f"{measures[0].upper()}{measures[1:]} by threshold (test set)"
            draw("threshold_curve", lambda path: plots.plot_threshold_curve(curve, threshold, path, title=title))
    confusion = (context.get("test_metrics") or {}).get("confusion_matrix")
    if isinstance(confusion, Mapping) and {"tn", "fp", "fn", "tp"} <= set(confusion):
        draw("confusion_matrix", lambda path: plots.plot_confusion_matrix(confusion, path, threshold=threshold))
    importance = context.get("importance")
    if importance:
        draw("feature_importance", lambda path: plots.plot_feature_importance(importance, path))
    return drawn
