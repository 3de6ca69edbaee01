"""The training report: what data went in, what was tried, what won, and how good it really is.

:func:`write_report` draws the charts into the bundle directory and writes the same content
twice: ``report.md`` (links the PNG files) and ``report.html`` (self-contained, the PNGs embedded,
so it can be mailed or opened anywhere). The content is built once as a list of simple blocks
and rendered by two small renderers, so the two files cannot drift apart.

Every part of the context except ``version`` is optional: a run that skipped a step (no
importance, no timings) or a candidate that failed still produces a complete, readable report.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata

from training import plots
from training.evaluation import is_number
from training.threshold import threshold_curve

BOOTSTRAP_SEED = 0
Z_95 = float(norm.ppf(0.975))


# ---- document blocks ----------------------------------------------------------------------------
@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str
    muted: bool = False


@dataclass
class Bullets:
    items: list[str]


@dataclass
class KeyFigures:
    """A row of headline numbers: (label, value, hint)."""

    figures: list[tuple[str, str, str]]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    highlight: set[int] = field(default_factory=set)  # row indices to emphasise (the winner)
    failed: set[int] = field(default_factory=set)  # row indices of failed candidates


@dataclass
class Images:
    """One or more charts shown side by side: (file name, caption)."""

    images: list[tuple[str, str]]


Block = Heading | Text | Bullets | KeyFigures | Table | Images


# ---- formatting -----------------------------------------------------------------------------------
MISSING = "—"


def fmt(value: Any, digits: int = 3) -> str:
    """A value as short text: numbers rounded, None/NaN as a dash, containers compacted."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    if isinstance(value, Mapping):
        return ", ".join(f"{key}: {fmt(item, digits)}" for key, item in value.items()) or MISSING
    if isinstance(value, (list, tuple, set)):
        return ", ".join(fmt(item, digits) for item in value) or MISSING
    return str(value)


def fmt_pct(value: Any, digits: int = 1) -> str:
    return f"{float(value) * 100:.{digits}f}%" if is_number(value) else MISSING


def fmt_seconds(value: Any) -> str:
    if not is_number(value):
        return MISSING
    seconds = float(value)
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.0f} s"


def fmt_params(params: Any) -> str:
    """Hyper-parameters as compact ``key=value`` text with floats to 4 significant digits."""
    if not isinstance(params, Mapping) or not params:
        return MISSING if not params else str(params)
    parts = []
    for key, value in params.items():
        shown = f"{value:.4g}" if isinstance(value, float) else json.dumps(value, default=str)
        parts.append(f"{key}={shown.strip(chr(34))}")
    return ", ".join(parts)


def humanise(key: str) -> str:
    """'drop_duplicate_rows' -> 'Drop duplicate rows'."""
    text = str(key).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


# ---- statistics for the honest-uncertainty note ---------------------------------------------------
def hanley_mcneil_interval(auc: float, positives: int, negatives: int) -> tuple[float, float]:
    """Approximate 95% interval of ROC-AUC from its value and the class counts (Hanley & McNeil, 1982)."""
    q1 = auc / (2 - auc)
    q2 = 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / (
        positives * negatives
    )
    half = Z_95 * math.sqrt(max(variance, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


def rank_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic (ties count half), fast enough to bootstrap."""
    positives = int(y.sum())
    negatives = y.size - positives
    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def bootstrap_auc_interval(y: np.ndarray, p: np.ndarray, *, seed: int = BOOTSTRAP_SEED) -> tuple[float, float, int]:
    """Percentile 95% interval of test ROC-AUC over resamples of the test customers, and the resample count."""
    resamples = 1000 if y.size <= 20_000 else 200  # the interval's width settles long before this
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, y.size, y.size)
        sample_y = y[pick]
        if 0 < sample_y.sum() < sample_y.size:
            values.append(rank_auc(sample_y, p[pick]))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high), len(values)


def wilson_interval(successes: int, trials: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (well behaved for small counts and rates near 0 or 1)."""
    if trials == 0:
        return 0.0, 1.0
    rate = successes / trials
    denominator = 1 + Z_95**2 / trials
    centre = (rate + Z_95**2 / (2 * trials)) / denominator
    half = Z_95 * math.sqrt(rate * (1 - rate) / trials + Z_95**2 / (4 * trials**2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


# ---- context access ---------------------------------------------------------------------------------
def test_arrays(context: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """Test labels and probabilities when both are present and consistent."""
    if context.get("y_test") is None or context.get("p_test") is None:
        return None
    y = np.asarray(context["y_test"]).astype(np.int64).ravel()
    p = np.asarray(context["p_test"], dtype=np.float64).ravel()
    if y.size == 0 or y.size != p.size:
        return None
    return y, p


def has_both_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < y.size


def calibration_info(context: Mapping[str, Any]) -> dict[str, Any]:
    """The calibration entry flattened: accepts {"method", ...summary} or {"method", "summary": {...}}."""
    info = dict(context.get("calibration") or {})
    nested = info.pop("summary", None)
    if isinstance(nested, Mapping):
        info = {**nested, **info}
    return info


def successful(entry: Mapping[str, Any]) -> bool:
    return not entry.get("error")


def ranking_score(entry: Mapping[str, Any]) -> float | None:
    """What the leaderboard is ordered by: cross-validated ROC-AUC."""
    for key in ("cv_roc_auc",):
        if is_number(entry.get(key)):
            return float(entry[key])
    return None


def ranked_leaderboard(context: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Successful candidates best first, then failed ones (in their original order)."""
    entries = [entry for entry in context.get("leaderboard") or [] if isinstance(entry, Mapping)]

    def key(entry: Mapping[str, Any]) -> tuple[int, float]:
        score = ranking_score(entry)
        return (0, -score) if successful(entry) and score is not None else (1, 0.0)

    return sorted(entries, key=key)


def is_winner(entry: Mapping[str, Any], context: Mapping[str, Any]) -> bool:
    """The served candidate: its family, and its stage when the context names one (two soft votes may compete)."""
    stage = context.get("winner_stage")
    return entry.get("family") == context.get("winner") and (stage is None or entry.get("stage") == stage)


def winner_entry(context: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next((entry for entry in ranked_leaderboard(context) if is_winner(entry, context)), None)


# ---- charts ----------------------------------------------------------------------------------------
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


# ---- sections --------------------------------------------------------------------------------------
def headline_section(context: Mapping[str, Any], arrays: tuple[np.ndarray, np.ndarray] | None) -> list[Block]:
    metrics = context.get("test_metrics") or {}
    threshold = context.get("threshold") or {}
    auc_hint = ""
    if arrays is not None and has_both_classes(arrays[0]) and is_number(metrics.get("roc_auc")):
        y = arrays[0]
        low, high = hanley_mcneil_interval(float(metrics["roc_auc"]), int(y.sum()), int(y.size - y.sum()))
        auc_hint = f"95% CI {low:.3f} to {high:.3f}"
    figures = [
        (
            "Model",
            fmt(context.get("winner")).replace("_", " "),
            f"of {len(context.get('leaderboard') or [])} candidates",
        ),
        ("Test ROC-AUC", fmt(metrics.get("roc_auc")), auc_hint),
        ("Test PR-AUC", fmt(metrics.get("pr_auc")), f"churn rate {fmt_pct(metrics.get('base_rate'))}"),
        ("Threshold", fmt(threshold.get("threshold")), fmt(threshold.get("strategy"))),
        ("Test recall", fmt_pct(metrics.get("recall")), f"precision {fmt_pct(metrics.get('precision'))}"),
        ("Calibration", fmt(calibration_info(context).get("method")), f"test ECE {fmt(metrics.get('ece'))}"),
    ]
    return [KeyFigures(figures)]


def candidate_count(context: Mapping[str, Any]) -> str:
    entries = ranked_leaderboard(context)
    failed = sum(not successful(entry) for entry in entries)
    return f"of {len(entries)} candidates" + (f" ({failed} failed)" if failed else "")


def data_section(context: Mapping[str, Any]) -> list[Block]:
    data = context.get("data") or {}
    rows = [
        ["Source", fmt(data.get("source"))],
        ["Rows", fmt(data.get("rows"))],
        ["Churners", fmt(data.get("positives"))],
        ["Churn rate", fmt_pct(data.get("churn_rate"))],
        ["Fingerprint (SHA-256 of the table)", fmt(data.get("fingerprint"))],
    ]
    known = {"source", "rows", "positives", "churn_rate", "fingerprint"}
    rows += [[humanise(key), fmt(value)] for key, value in data.items() if key not in known]
    return [Heading("Data"), Table(["", "Value"], rows)]


def cleaning_section(context: Mapping[str, Any]) -> list[Block]:
    cleaning = context.get("cleaning") or {}
    blocks: list[Block] = [Heading("Cleaning")]
    if not cleaning:
        return [*blocks, Text("No cleaning steps were recorded.", muted=True)]
    rows = [[humanise(step), fmt(detail)] for step, detail in cleaning.items()]
    return [
        *blocks,
        Text("What was done to the table before training, in order."),
        Table(["Step", "Count / details"], rows),
    ]


def roles_section(context: Mapping[str, Any]) -> list[Block]:
    roles = context.get("roles") or {}
    blocks: list[Block] = [Heading("Column roles")]
    if not roles:
        return [*blocks, Text("No column roles were recorded.", muted=True)]
    rows = []
    for column, info in roles.items():
        info = info if isinstance(info, Mapping) else {"role": info}
        rows.append([str(column), fmt(info.get("role")), fmt(info.get("reason"))])
    text = "How each input column was used, as inferred from its name and values."
    return [*blocks, Text(text), Table(["Column", "Role", "Reason"], rows)]


def leaderboard_section(context: Mapping[str, Any]) -> list[Block]:
    entries = ranked_leaderboard(context)
    blocks: list[Block] = [Heading("Candidates")]
    if not entries:
        return [*blocks, Text("No candidate models were recorded.", muted=True)]
    headers = [
        "#",
        "Family",
        "CV ROC-AUC",
        "CV fits",
        "OOF log loss",
        "Stage",
        "Fit time",
        "Trials",
        "Parameters",
        "Status",
    ]
    rows, highlight, failed = [], set(), set()
    for index, entry in enumerate(entries):
        ok = successful(entry)
        cv = f"{fmt(entry.get('cv_roc_auc'))} ± {fmt(entry.get('cv_roc_auc_std'))}" if ok else MISSING
        served = ok and is_winner(entry, context)
        status = "winner" if served else ("ok" if ok else f"failed: {entry.get('error')}")
        rows.append(
            [
                str(index + 1) if ok else MISSING,
                fmt(entry.get("family")),
                cv,
                fmt(entry.get("cv_fits")) if ok else MISSING,
                fmt(entry.get("oof_log_loss")) if ok else MISSING,
                fmt(entry.get("stage")) if ok else MISSING,
                fmt_seconds(entry.get("fit_seconds")),
                fmt(entry.get("trials")),
                fmt_params(entry.get("params")),
                status,
            ]
        )
        if served:
            highlight.add(index)
        if not ok:
            failed.add(index)
    text = (
        "Every candidate tried, best cross-validated ROC-AUC first. CV ROC-AUC is the mean over the "
        "cross-validation fits on the development rows (± its standard deviation over fits); the out-of-fold "
        "log loss is before calibration. Families close to the best default are tuned, the others keep "
        "their default; a blend is listed only when it beat the best single candidate out of fold; the equal "
        "vote of the linear model and the best tree model is served when it is within one standard error of the best."
    )
    return [*blocks, Text(text), Table(headers, rows, highlight, failed)]


def winner_section(context: Mapping[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading("Winner")]
    winner = context.get("winner")
    if winner is None:
        return [*blocks, Text("No winner was recorded.", muted=True)]
    sentences = [f"The served model is {winner}."]
    if context.get("winner_reason"):
        reason = str(context["winner_reason"]).rstrip(".")
        sentences.append(f"Chosen for: {reason}.")
    entry = winner_entry(context)
    if entry is not None:
        others = [
            e for e in ranked_leaderboard(context) if successful(e) and e is not entry and ranking_score(e) is not None
        ]
        sentences.append(comparison_sentence(entry, others[0] if others else None))
    return [*blocks, Text(" ".join(sentences))]


def scores_text(entry: Mapping[str, Any]) -> str:
    return f"cross-validated ROC-AUC {fmt(entry.get('cv_roc_auc'))} ± {fmt(entry.get('cv_roc_auc_std'))}"


def comparison_sentence(winner: Mapping[str, Any], runner_up: Mapping[str, Any] | None) -> str:
    """The winner against the next best candidate, and whether their CV gap exceeds fold-to-fold noise."""
    if runner_up is None:
        return f"It scored {scores_text(winner)}, and was the only candidate that trained successfully."
    sentence = (
        f"It scored {scores_text(winner)}; the next best, {runner_up.get('family')}, scored {scores_text(runner_up)}."
    )
    if not (is_number(winner.get("cv_roc_auc")) and is_number(runner_up.get("cv_roc_auc"))):
        return sentence
    gap = abs(float(winner["cv_roc_auc"]) - float(runner_up["cv_roc_auc"]))
    spread = max(
        float(entry["cv_roc_auc_std"]) if is_number(entry.get("cv_roc_auc_std")) else 0.0
        for entry in (winner, runner_up)
    )
    if gap <= spread:
        return sentence + (
            f" Their cross-validated gap ({gap:.3f}) is within the fold-to-fold standard deviation, so the two are "
            "practically tied; either would serve about equally well."
        )
    return sentence + f" Their cross-validated gap ({gap:.3f}) is larger than the fold-to-fold standard deviation."


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


def build_document(context: Mapping[str, Any], charts: Mapping[str, str]) -> list[Block]:
    arrays = test_arrays(context)
    return [
        *headline_section(context, arrays),
        *data_section(context),
        *cleaning_section(context),
        *roles_section(context),
        *leaderboard_section(context),
        *winner_section(context),
        *calibration_section(context, charts),
        *threshold_section(context, charts),
        *test_metrics_section(context, charts),
        *uncertainty_section(context, arrays),
        *importance_section(context, charts),
        *timings_section(context),
    ]


# ---- rendering ----------------------------------------------------------------------------------------
def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, subtitle: str, blocks: Sequence[Block]) -> str:
    lines = [f"# {title}", "", f"_{subtitle}_", ""]
    for block in blocks:
        if isinstance(block, Heading):
            lines += [f"{'#' * block.level} {block.text}", ""]
        elif isinstance(block, Text):
            lines += [f"_{block.text}_" if block.muted else block.text, ""]
        elif isinstance(block, Bullets):
            lines += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, KeyFigures):
            lines += [
                f"- **{label}**: {value}" + (f" ({hint})" if hint else "") for label, value, hint in block.figures
            ]
            lines.append("")
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(md_cell(h) or " " for h in block.headers) + " |")
            lines.append("|" + "---|" * len(block.headers))
            for index, row in enumerate(block.rows):
                cells = [md_cell(cell) for cell in row]
                if index in block.highlight:
                    cells = [f"**{cell}**" if cell else cell for cell in cells]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        elif isinstance(block, Images):
            lines += [f"![{caption}]({name})" for name, caption in block.images] + [""]
    return "\n".join(lines)


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #222;
       max-width: 1100px; margin: 2rem auto; padding: 0 1.5rem; line-height: 1.5; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 2px solid #e3e7ea; padding-bottom: 0.3rem; }
.subtitle, .muted { color: #6b7780; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 0.8rem; margin: 1.2rem 0; }
.figure { background: #f4f7f9; border-radius: 8px; padding: 0.7rem 0.9rem; }
.figure .label { font-size: 0.8rem; color: #6b7780; text-transform: uppercase; letter-spacing: 0.04em; }
.figure .value { font-size: 1.4rem; font-weight: 600; color: #1f5f8b; line-height: 1.25; }
.figure .hint { font-size: 0.8rem; color: #6b7780; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { text-align: left; padding: 0.35rem 0.7rem; border-bottom: 1px solid #e3e7ea; vertical-align: top; }
td.short { white-space: nowrap; }
th { background: #f4f7f9; }
tr.highlight td { background: #eaf4ec; font-weight: 600; }
tr.failed td { color: #a94442; }
td.params { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.78rem; max-width: 360px; }
.images { display: flex; flex-wrap: wrap; gap: 1rem; }
.images figure { margin: 0.5rem 0; flex: 1 1 320px; max-width: 560px; }
.images img { width: 100%; border: 1px solid #e3e7ea; border-radius: 6px; }
figcaption { font-size: 0.85rem; color: #6b7780; }
"""


def embedded_png(directory: Path, name: str) -> str:
    """A data URI of the PNG, so the HTML needs no other files."""
    return "data:image/png;base64," + base64.b64encode((directory / name).read_bytes()).decode("ascii")


def cell_class(column: int, cell: str, params_column: int) -> str:
    """Numbers and short labels stay on one line; parameters and long text wrap."""
    if column == params_column:
        return "params"
    return "short" if len(cell) <= SHORT_CELL else "long"


SHORT_CELL = 24


def render_table_html(table: Table) -> str:
    escape = html.escape
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = []
    params_column = table.headers.index("Parameters") if "Parameters" in table.headers else -1
    for index, row in enumerate(table.rows):
        css = "highlight" if index in table.highlight else ("failed" if index in table.failed else "")
        cells = "".join(
            f'<td class="{cell_class(column, cell, params_column)}">{escape(cell)}</td>'
            for column, cell in enumerate(row)
        )
        body.append(f'<tr class="{css}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(title: str, subtitle: str, blocks: Sequence[Block], directory: Path) -> str:
    escape = html.escape
    parts = [f"<h1>{escape(title)}</h1>", f'<p class="subtitle">{escape(subtitle)}</p>']
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{escape(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            parts.append(
                f'<p class="muted">{escape(block.text)}</p>' if block.muted else f"<p>{escape(block.text)}</p>"
            )
        elif isinstance(block, Bullets):
            parts.append("<ul>" + "".join(f"<li>{escape(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, KeyFigures):
            cards = "".join(
                f'<div class="figure"><div class="label">{escape(label)}</div>'
                f'<div class="value">{escape(value)}</div><div class="hint">{escape(hint)}</div></div>'
                for label, value, hint in block.figures
            )
            parts.append(f'<div class="figures">{cards}</div>')
        elif isinstance(block, Table):
            parts.append(render_table_html(block))
        elif isinstance(block, Images):
            figures = "".join(
                f'<figure><img src="{embedded_png(directory, name)}" alt="{escape(caption)}">'
                f"<figcaption>{escape(caption)}</figcaption></figure>"
                for name, caption in block.images
            )
            parts.append(f'<div class="images">{figures}</div>')
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def write_report(directory: Path, context: Mapping[str, Any]) -> Path:
    """Draw the charts and write ``report.md`` and ``report.html`` into ``directory``; returns the HTML path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    charts = draw_charts(directory, context)
    blocks = build_document(context, charts)
    title = f"Churn model report: {context.get('version', 'unversioned')}"
    subtitle = f"Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}"
    (directory / "report.md").write_text(render_markdown(title, subtitle, blocks), encoding="utf-8")
    html_path = directory / "report.html"
    html_path.write_text(render_html(title, subtitle, blocks, directory), encoding="utf-8")
    return html_path
