"""Report sections on what went in and what was chosen: headline, data, cleaning, roles, candidates, winner."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from training.evaluation import is_number
from training.report.blocks import (
    MISSING,
    Block,
    Heading,
    KeyFigures,
    Table,
    Text,
    fmt,
    fmt_params,
    fmt_pct,
    fmt_seconds,
    humanise,
)
from training.report.context import (
    calibration_info,
    has_both_classes,
    is_winner,
    ranked_leaderboard,
    ranking_score,
    successful,
    winner_entry,
)
from training.report.statistics import hanley_mcneil_interval


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
