"""PNG charts for the training report.

Figures are built with matplotlib's object API and rendered by its Agg canvas, so no display,
no pyplot global state and no backend switch is needed (safe in worker processes and on servers).
Every function takes the data and the output path, writes the PNG and returns the path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

from training.evaluation import as_labels, as_probabilities, reliability_bins

CHURN = "#c0392b"
MODEL = "#1f5f8b"
NEUTRAL = "#7f8c8d"
CHOSEN = "#e67e22"
DPI = 110


def new_figure(width: float = 6.0, height: float = 4.5) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return figure, figure.add_subplot()


def save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def style(axes: Axes, title: str, xlabel: str, ylabel: str) -> None:
    axes.set_title(title, fontsize=12, loc="left")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.spines[["top", "right"]].set_visible(False)


def plot_roc_curve(y_true: Any, proba: Any, path: Path) -> Path:
    """ROC curve with its area, against the diagonal of a random ranking."""
    y = as_labels(y_true)
    p = as_probabilities(proba, y.size)
    figure, axes = new_figure(5.5, 5.0)
    fpr, tpr, _ = roc_curve(y, p)
    axes.plot(fpr, tpr, color=MODEL, lw=2, label=f"model (ROC-AUC {roc_auc_score(y, p):.3f})")
    axes.plot([0, 1], [0, 1], color=NEUTRAL, ls="--", lw=1, label="random ranking")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    style(axes, "ROC curve (test set)", "False positive rate (stayers flagged)", "True positive rate (churners caught)")
    axes.legend(loc="lower right")
    return save(figure, path)


def plot_precision_recall_curve(y_true: Any, proba: Any, path: Path, *, threshold: float | None = None) -> Path:
    """Precision against recall, with the churn rate as the no-skill line and the operating point marked."""
    y = as_labels(y_true)
    p = as_probabilities(proba, y.size)
    figure, axes = new_figure(5.5, 5.0)
    precision, recall, _ = precision_recall_curve(y, p)
    axes.step(recall, precision, where="post", color=MODEL, lw=2, label="model")
    axes.axhline(y.mean(), color=NEUTRAL, ls="--", lw=1, label=f"churn rate {y.mean():.1%} (no skill)")
    if threshold is not None:
        flagged = p >= threshold
        tp = float(np.sum(flagged & (y == 1)))
        if flagged.any() and y.sum():
            axes.plot(tp / y.sum(), tp / flagged.sum(), "o", color=CHOSEN, ms=9, label=f"threshold {threshold:.3f}")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    style(axes, "Precision-recall curve (test set)", "Recall (share of churners caught)", "Precision")
    axes.legend(loc="lower left")  # the curve is high on the left and falls to the right
    return save(figure, path)


def plot_calibration_curve(y_true: Any, proba: Any, path: Path, *, n_bins: int = 10) -> Path:
    """Reliability diagram: observed churn rate per probability bin, with the customer count of each bin."""
    bins = reliability_bins(y_true, proba, n_bins)
    figure = Figure(figsize=(6.0, 6.0), dpi=DPI, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], color=NEUTRAL, ls="--", lw=1, label="perfect calibration")
    top.plot(bins["mean_predicted"], bins["observed_rate"], "o-", color=MODEL, lw=2, label="model")
    for x, rate, count in zip(bins["mean_predicted"], bins["observed_rate"], bins["count"], strict=True):
        # Labels sit below the point unless that would push them off the bottom of the chart.
        offset = (5, -12) if rate > 0.08 else (5, 6)
        top.annotate(f"n={count}", (x, rate), textcoords="offset points", xytext=offset, fontsize=7, color=NEUTRAL)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    style(top, "Calibration (test set)", "", "Observed churn rate")
    top.legend(loc="upper left")
    widths = np.subtract(bins["bin_high"], bins["bin_low"])
    bottom.bar(bins["bin_low"], bins["count"], width=widths * 0.9, align="edge", color=MODEL, alpha=0.6)
    style(bottom, "", "Predicted churn probability", "Customers")
    return save(figure, path)


def plot_confusion_matrix(confusion: Mapping[str, int], path: Path, *, threshold: float | None = None) -> Path:
    """The 2x2 counts at the threshold, each cell with its share of all customers."""
    cells = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]], dtype=float)
    total = cells.sum() or 1.0
    figure, axes = new_figure(4.8, 4.2)
    axes.imshow(cells, cmap="Blues", vmin=0)
    labels = [["true negative", "false positive"], ["false negative", "true positive"]]
    for row in range(2):
        for col in range(2):
            dark = cells[row, col] > cells.max() * 0.6
            axes.text(
                col,
                row,
                f"{int(cells[row, col])}\n{cells[row, col] / total:.1%}\n{labels[row][col]}",
                ha="center",
                va="center",
                fontsize=10,
                color="white" if dark else "black",
            )
    axes.set_xticks([0, 1], ["predicted stay", "predicted churn"])
    axes.set_yticks([0, 1], ["stayed", "churned"])
    title = "Confusion matrix (test set)" + (f", threshold {threshold:.3f}" if threshold is not None else "")
    axes.set_title(title, fontsize=12, loc="left")
    return save(figure, path)


def plot_feature_importance(importance: Mapping[str, float], path: Path, *, top: int = 20) -> Path:
    """Horizontal bars of the largest importances, most important on top."""
    ranked = sorted(importance.items(), key=lambda item: item[1], reverse=True)[:top]
    names = [name for name, _ in ranked][::-1]
    values = [value for _, value in ranked][::-1]
    figure, axes = new_figure(6.5, max(2.5, 0.32 * len(names) + 1.2))
    colors = [MODEL if value >= 0 else NEUTRAL for value in values]
    axes.barh(names, values, color=colors)
    axes.axvline(0, color="black", lw=0.8)
    style(axes, "Permutation importance (test split)", "Drop in ROC-AUC when the feature is shuffled", "")
    axes.grid(True, axis="x", alpha=0.3)
    axes.grid(False, axis="y")
    return save(figure, path)


def plot_threshold_curve(curve: Mapping[str, Sequence[float]], chosen: float, path: Path, *, title: str) -> Path:
    """Precision, recall and F1 against the threshold (and expected profit when present), chosen threshold marked."""
    thresholds = np.asarray(curve["threshold"])
    has_profit = "expected_profit" in curve
    figure = Figure(figsize=(7.5, 6.0 if has_profit else 4.5), dpi=DPI, layout="constrained")
    axes_list = figure.subplots(2, 1, sharex=True) if has_profit else [figure.add_subplot()]
    rates = axes_list[0]
    rates.plot(thresholds, curve["precision"], color=MODEL, lw=2, label="precision")
    rates.plot(thresholds, curve["recall"], color=CHURN, lw=2, label="recall")
    rates.plot(thresholds, curve["f1"], color="black", lw=2, ls=":", label="F1")
    rates.set_ylim(0, 1.02)
    style(rates, title, "" if has_profit else "Threshold (flag when probability >= threshold)", "")
    if has_profit:
        profit = axes_list[1]
        profit.plot(thresholds, curve["expected_profit"], color=MODEL, lw=2, label="expected profit")
        profit.axhline(0, color="black", lw=0.8)
        style(profit, "", "Threshold (flag when probability >= threshold)", "Expected profit")
    for axes in axes_list:
        axes.axvline(chosen, color=CHOSEN, lw=2, ls="--", label=f"chosen {chosen:.3f}")
        axes.set_xlim(0, 1)
        # Outside the plot: the curves cross the whole width, so any spot inside would hide one of them.
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return save(figure, path)
