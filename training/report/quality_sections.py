"""Report sections on how good the served model is: calibration, threshold, test metrics, uncertainty,
importance and timings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from training.evaluation import is_number
from training.report.blocks import (
    MISSING,
    Block,
    Bullets,
    Heading,
    Images,
    Table,
    Text,
    fmt,
    fmt_pct,
    fmt_seconds,
    humanise,
)
from training.report.context import calibration_info, has_both_classes
from training.report.statistics import bootstrap_auc_interval, hanley_mcneil_interval, rank_auc, wilson_interval


def calibration_section(context: Mapping[str, Any], charts: Mapping[str, str]) -> list[Block]:
    info = calibration_info(context)
    blocks: list[Block] = [Heading("Calibration")]
    if not info:
        return [*blocks, Text("No calibration information was recorded.", muted=True)]
    method = info.get("method", "none")
    explanation = {
        "none": "the raw model scores are used as probabilities: no calibrator improved them clearly",
        "platt": "raw scores are mapped through a fitted logistic curve (Platt scaling)",
        "isotonic": "raw scores are mapped through a fitted monotone step curve (isotonic regression)",
    }.get(method, "")
    blocks.append(Text(f"Method: {method}" + (f", {explanation}." if explanation else ".")))
    rows = [
        [label, fmt(info.get(f"{key}_before"), 4), fmt(info.get(f"{key}_after"), 4)]
        for key, label in (("log_loss", "Log loss"), ("brier", "Brier score"), ("ece", "Expected calibration error"))
        if f"{key}_before" in info or f"{key}_after" in info
    ]
    if rows:
        blocks.append(Table(["Out of fold", "Before", "After"], rows))
    if rows and method != "none":
        blocks.append(
            Text(
                "The 'after' column is measured on the out-of-fold scores the calibrator was fitted on, "
                "so it is optimistic; the test-set figures below are the unbiased check.",
                muted=True,
            )
        )
    cross = info.get("cross_fitted_log_loss")
    if isinstance(cross, Mapping) and cross:
        blocks += cross_fitted_blocks(cross, info)
    if "calibration_curve" in charts:
        blocks.append(Images([(charts["calibration_curve"], "Reliability diagram on the test set")]))
    return blocks


def cross_fitted_blocks(cross: Mapping[str, Any], info: Mapping[str, Any]) -> list[Block]:
    """The honest comparison the calibration method was chosen by."""
    gains = info.get("improvement_standard_errors") or {}
    method = info.get("method", "none")
    rows = [
        [
            name,
            fmt(value, 4),
            fmt(gains.get(name), 1) if name != "none" else MISSING,
            "chosen" if name == method else "",
        ]
        for name, value in cross.items()
    ]
    folds = info.get("folds")
    needed = info.get("min_improvement_standard_errors")
    rule = (
        f"a calibrator is used only if it beats the raw scores by more than {float(needed):g} standard errors"
        if is_number(needed)
        else "a calibrator is used only if it clearly beats the raw scores"
    )
    text = (
        f"The method was chosen by cross-fitted log loss on the out-of-fold scores"
        f"{f' ({folds} folds)' if folds else ''}: each calibrator is scored only on customers it was not fitted on. "
        f"{rule[0].upper()}{rule[1:]} (paired over customers), so chance gains do not count; "
        "of the calibrators that pass, the lowest cross-fitted log loss wins."
    )
    return [Text(text), Table(["Method", "Cross-fitted log loss", "Gain over none (standard errors)", ""], rows)]


def threshold_section(context: Mapping[str, Any], charts: Mapping[str, str]) -> list[Block]:
    chosen = context.get("threshold") or {}
    blocks: list[Block] = [Heading("Decision threshold")]
    if not is_number(chosen.get("threshold")):
        return [*blocks, Text("No decision threshold was recorded.", muted=True)]
    how = f"Customers with a churn probability of at least {float(chosen['threshold']):.3f} are flagged"
    how += f" (strategy {chosen.get('strategy', 'unknown')}"
    how += f": {chosen['note']})." if chosen.get("note") else ")."
    blocks.append(Text(how))
    rows = [
        ["Precision", fmt_pct(chosen.get("precision"))],
        ["Recall", fmt_pct(chosen.get("recall"))],
        ["F1", fmt(chosen.get("f1"))],
        ["Share of customers flagged", fmt_pct(chosen.get("flagged_rate"))],
    ]
    if chosen.get("offer_cost") is not None or chosen.get("saved_value") is not None:
        rows += [
            ["Cost of one retention offer", fmt(chosen.get("offer_cost"), 2)],
            ["Value of keeping a churner", fmt(chosen.get("saved_value"), 2)],
            ["Offer acceptance rate (assumed)", fmt_pct(chosen.get("acceptance_rate"))],
            ["Expected profit", fmt(chosen.get("expected_profit"), 2)],
            ["Expected profit per customer", fmt(chosen.get("expected_profit_per_customer"), 3)],
        ]
    blocks.append(Table(["On the out-of-fold scores", "Value"], rows))
    if "threshold_curve" in charts:
        blocks.append(
            Images([(charts["threshold_curve"], "How the test-set trade-off moves with the threshold (chosen marked)")])
        )
    return blocks


METRIC_DESCRIPTIONS = {
    "roc_auc": "chance a random churner is ranked above a random stayer",
    "pr_auc": "average precision over all recall levels",
    "f1": "harmonic mean of precision and recall at the threshold",
    "precision": "share of flagged customers who churned",
    "recall": "share of churners who were flagged",
    "accuracy": "share of customers classified correctly",
    "log_loss": "penalises confident wrong probabilities (lower is better)",
    "brier": "mean squared error of the probabilities (lower is better)",
    "ece": "mean gap between predicted and observed churn rate (lower is better)",
    "precision_at_80_recall": "best precision while still catching 80% of churners",
    "positive_rate": "share of customers flagged at the threshold",
    "base_rate": "share of customers who actually churned",
    "n": "customers in the test set",
    "n_positive": "churners in the test set",
    "threshold": "decision threshold (flag when probability >= threshold)",
}


def test_metrics_section(context: Mapping[str, Any], charts: Mapping[str, str]) -> list[Block]:
    metrics = context.get("test_metrics") or {}
    blocks: list[Block] = [Heading("Test-set performance")]
    if not metrics:
        return [*blocks, Text("No test metrics were recorded.", muted=True)]
    blocks.append(
        Text("Measured once on the held-out test split, which played no part in training, selection or calibration.")
    )
    rows = [
        [key, fmt(value, 4), METRIC_DESCRIPTIONS.get(key, "")]
        for key, value in metrics.items()
        if key != "confusion_matrix"
    ]
    blocks.append(Table(["Metric", "Value", "Meaning"], rows))
    if is_number(metrics.get("precision_at_80_recall")):
        blocks.append(
            Text(
                f"Precision at 80% recall: to reach 80% of the churners, {fmt_pct(metrics['precision_at_80_recall'])} "
                "of the customers contacted would be churners."
            )
        )
    confusion = metrics.get("confusion_matrix")
    if isinstance(confusion, Mapping):
        blocks.append(
            Table(
                ["", "Predicted stay", "Predicted churn"],
                [
                    ["Stayed", fmt(confusion.get("tn")), fmt(confusion.get("fp"))],
                    ["Churned", fmt(confusion.get("fn")), fmt(confusion.get("tp"))],
                ],
            )
        )
    images = [(charts[name], caption) for name, caption in CURVE_CAPTIONS if name in charts]
    if images:
        blocks.append(Images(images))
    return blocks


CURVE_CAPTIONS = (
    ("roc_curve", "ROC curve"),
    ("precision_recall_curve", "Precision-recall curve with the operating point"),
    ("confusion_matrix", "Confusion matrix at the threshold"),
)


def uncertainty_section(context: Mapping[str, Any], arrays: tuple[np.ndarray, np.ndarray] | None) -> list[Block]:
    """What the size of the test set allows us to conclude."""
    blocks: list[Block] = [Heading("How precise are these numbers?")]
    if arrays is None or not has_both_classes(arrays[0]):
        return [*blocks, Text("The test set is missing or holds a single class; no interval can be given.", muted=True)]
    y, p = arrays
    positives, negatives = int(y.sum()), int(y.size - y.sum())
    auc = rank_auc(y, p)
    hm_low, hm_high = hanley_mcneil_interval(auc, positives, negatives)
    bs_low, bs_high, resamples = bootstrap_auc_interval(y, p)
    items = [
        f"The test set holds {y.size:,} customers, of whom {positives:,} churned.",
        f"Test ROC-AUC {auc:.3f}: approximate 95% interval {hm_low:.3f} to {hm_high:.3f} (Hanley-McNeil), "
        f"{bs_low:.3f} to {bs_high:.3f} (bootstrap, {resamples:,} resamples).",
    ]
    threshold = (context.get("threshold") or {}).get("threshold")
    if is_number(threshold):
        flagged = p >= float(threshold)
        tp = int(np.sum(flagged & (y == 1)))
        r_low, r_high = wilson_interval(tp, positives)
        items.append(
            f"Recall {tp / positives:.1%} (95% interval {r_low:.1%} to {r_high:.1%}, from {positives:,} churners)."
        )
        if flagged.any():
            p_low, p_high = wilson_interval(tp, int(flagged.sum()))
            items.append(
                f"Precision {tp / flagged.sum():.1%} (95% interval {p_low:.1%} to {p_high:.1%}, "
                f"from {int(flagged.sum()):,} flagged customers)."
            )
    half_width = (hm_high - hm_low) / 2
    items.append(
        f"Differences in ROC-AUC smaller than about {half_width:.3f} cannot be told apart on a test set of this size; "
        "treat the candidates' small gaps on the leaderboard with the same caution."
    )
    return [*blocks, Bullets(items)]


def importance_section(context: Mapping[str, Any], charts: Mapping[str, str]) -> list[Block]:
    importance = context.get("importance")
    blocks: list[Block] = [Heading("Feature importance")]
    if not importance:
        return [*blocks, Text("Feature importance was not computed for this run.", muted=True)]
    blocks.append(
        Text(
            "Permutation importance on the test split: the drop in ROC-AUC when one input feature's values "
            "are shuffled across customers (its one-hot columns move together). Values near zero mean the model "
            "does not rely on the feature; importance shows reliance, not cause."
        )
    )
    if "feature_importance" in charts:
        blocks.append(Images([(charts["feature_importance"], "Top features by permutation importance")]))
    ranked = sorted(importance.items(), key=lambda item: item[1], reverse=True)
    blocks.append(Table(["Feature", "ROC-AUC drop"], [[str(name), fmt(value, 4)] for name, value in ranked]))
    return blocks


def timings_section(context: Mapping[str, Any]) -> list[Block]:
    timings = context.get("timings") or {}
    blocks: list[Block] = [Heading("Timings")]
    if not timings:
        return [*blocks, Text("No timings were recorded.", muted=True)]
    rows = [[humanise(step), fmt_seconds(seconds)] for step, seconds in timings.items()]
    if "total" not in timings and all(is_number(value) for value in timings.values()):
        rows.append(["Total", fmt_seconds(sum(float(value) for value in timings.values()))])
    return [*blocks, Table(["Step", "Wall time"], rows)]
