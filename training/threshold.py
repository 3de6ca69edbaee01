"""Choosing the decision threshold: which churn probability is high enough to act on.

Two strategies, both evaluated on held-out scores: the pipeline passes the chosen configuration's
out-of-fold scores of the development rows (never the test split):

``max_f1``
    The threshold with the best F1, a balance of precision and recall for when the cost of
    an offer and the value of a retained customer are unknown.
``max_profit``
    The threshold with the highest expected profit of a retention campaign. Assumptions:
    every flagged customer receives an offer costing ``offer_cost``; a flagged customer who
    would have churned accepts it with probability ``acceptance_rate`` (default 1.0) and is then
    kept, which is worth ``saved_value``; an offer to a customer who would have stayed anyway
    is pure cost; customers who are not flagged cost and earn nothing.

A customer is flagged when ``probability >= threshold`` (the service's rule). Only thresholds
that change who is flagged matter, so every distinct validation score is a candidate, plus
"flag nobody". The returned threshold sits halfway between the chosen score and the next lower
one, so it flags exactly the chosen validation customers while leaving a margin for new scores.
Ties go to the highest threshold: fewer offers for the same result.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.evaluation import as_labels, as_probabilities

STRATEGIES = ("max_f1", "max_profit")
# Objective values closer than this count as equal, so float noise cannot break a tie.
TIE_TOLERANCE = 1e-12


def flag_counts(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each candidate cut: distinct score (descending), churners flagged, non-churners flagged.

    Index 0 is "flag nobody"; index k >= 1 flags every customer scoring at least the k-th highest
    distinct score, so tied scores are always flagged together.
    """
    order = np.argsort(-p, kind="stable")
    sorted_p, sorted_y = p[order], y[order]
    # Last position of each run of equal scores: flagging stops only between distinct scores.
    run_ends = np.flatnonzero(np.r_[sorted_p[1:] != sorted_p[:-1], True])
    tp = np.r_[0, np.cumsum(sorted_y)[run_ends]]
    fp = np.r_[0, (run_ends + 1) - np.cumsum(sorted_y)[run_ends]]
    return sorted_p[run_ends], tp.astype(np.float64), fp.astype(np.float64)


def cut_thresholds(scores: np.ndarray) -> np.ndarray:
    """The threshold for each candidate cut (index 0 flags nobody), midway between distinct scores."""
    lower_neighbours = np.r_[scores[1:], scores[-1]]
    midpoints = (scores + lower_neighbours) / 2.0
    # Flagging nobody needs a threshold above the highest score: halfway to 1, or just above 1.0.
    top = scores[0]
    above_all = (top + 1.0) / 2.0 if top < 1.0 else float(np.nextafter(1.0, 2.0))
    return np.r_[above_all, midpoints]


def f1_scores(tp: np.ndarray, fp: np.ndarray, positives: float) -> np.ndarray:
    denominator = tp + fp + positives  # 2tp + fp + fn, since fn = positives - tp
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def expected_profits(
    tp: np.ndarray, fp: np.ndarray, *, offer_cost: float, saved_value: float, acceptance_rate: float
) -> np.ndarray:
    """Total expected profit of contacting the flagged customers (see the module docstring)."""
    return acceptance_rate * saved_value * tp - offer_cost * (tp + fp)


def validate_profit_inputs(
    strategy: str, offer_cost: float | None, saved_value: float | None, acceptance_rate: float
) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown threshold strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "max_profit" and (offer_cost is None or saved_value is None):
        raise ValueError(
            "the max_profit threshold strategy needs both the cost of a retention offer (offer_cost) "
            "and the value of keeping a churner (saved_value)"
        )
    if offer_cost is not None and offer_cost < 0:
        raise ValueError(f"offer_cost must be >= 0, got {offer_cost}")
    if saved_value is not None and saved_value < 0:
        raise ValueError(f"saved_value must be >= 0, got {saved_value}")
    if not 0.0 <= acceptance_rate <= 1.0:
        raise ValueError(f"acceptance_rate must be within [0, 1], got {acceptance_rate}")


def best_cut(objective: np.ndarray) -> int:
    """Index of the best cut; among (near-)ties the one flagging fewest customers."""
    return int(np.flatnonzero(objective >= objective.max() - TIE_TOLERANCE)[0])


def choose_threshold(
    y_val: Any,
    p_val: Any,
    *,
    strategy: str = "max_f1",
    offer_cost: float | None = None,
    saved_value: float | None = None,
    acceptance_rate: float = 1.0,
) -> dict[str, Any]:
    """Pick the decision threshold on validation labels ``y_val`` and calibrated probabilities ``p_val``.

    Returns the threshold with the validation precision, recall, F1, share flagged and, when
    ``offer_cost`` and ``saved_value`` are known, the expected profit (in total and per customer).
    """
    validate_profit_inputs(strategy, offer_cost, saved_value, acceptance_rate)
    y = as_labels(y_val)
    p = as_probabilities(p_val, y.size)
    if y.size == 0:
        raise ValueError("cannot choose a threshold without validation data")
    scores, tp, fp = flag_counts(y, p)
    positives = float(y.sum())
    f1 = f1_scores(tp, fp, positives)
    knows_value = offer_cost is not None and saved_value is not None
    profit = (
        expected_profits(tp, fp, offer_cost=offer_cost, saved_value=saved_value, acceptance_rate=acceptance_rate)
        if knows_value
        else None
    )
    chosen = best_cut(profit if strategy == "max_profit" else f1)
    flagged = tp[chosen] + fp[chosen]
    result: dict[str, Any] = {
        "threshold": float(cut_thresholds(scores)[chosen]),
        "strategy": strategy,
        "f1": float(f1[chosen]),
        "precision": float(tp[chosen] / flagged) if flagged else 0.0,
        "recall": float(tp[chosen] / positives) if positives else 0.0,
        "flagged_rate": float(flagged / y.size),
        "n_validation": int(y.size),
        "offer_cost": None if offer_cost is None else float(offer_cost),
        "saved_value": None if saved_value is None else float(saved_value),
        "acceptance_rate": float(acceptance_rate),
    }
    if profit is not None:
        result["expected_profit"] = float(profit[chosen])
        result["expected_profit_per_customer"] = float(profit[chosen] / y.size)
    result["note"] = explain_choice(result, y, p)
    return result


def explain_choice(result: dict[str, Any], y: np.ndarray, p: np.ndarray) -> str:
    """One sentence on how the threshold was chosen, naming degenerate cases plainly."""
    if y.min() == y.max():
        kind = "churners" if y[0] else "non-churners"
        return f"the held-out scores cover only {kind}, so they cannot tell a good threshold from a bad one"
    if p.min() == p.max():
        return "every held-out score is the same: the model cannot separate customers at any threshold"
    if result["strategy"] == "max_profit":
        return (
            f"maximises expected profit on the held-out scores assuming each flagged customer gets an offer costing "
            f"{result['offer_cost']:g} and a flagged churner is kept with probability "
            f"{result['acceptance_rate']:g}, worth {result['saved_value']:g}"
        )
    return "maximises F1 (balance of precision and recall) on the held-out scores"


def threshold_curve(
    y_true: Any,
    proba: Any,
    *,
    offer_cost: float | None = None,
    saved_value: float | None = None,
    acceptance_rate: float = 1.0,
    points: int = 101,
) -> dict[str, list[float]]:
    """Precision, recall, F1 (and profit when valued) on an even grid of thresholds from 0 to 1, for plotting."""
    y = as_labels(y_true)
    p = as_probabilities(proba, y.size)
    grid = np.linspace(0.0, 1.0, points)
    sorted_p = np.sort(p)
    # Customers with p >= t, and churners among them, for every t at once.
    flagged = y.size - np.searchsorted(sorted_p, grid, side="left")
    churner_scores = np.sort(p[y == 1])
    tp = churner_scores.size - np.searchsorted(churner_scores, grid, side="left")
    fp = flagged - tp
    positives = float(y.sum())
    curve = {
        "threshold": grid.tolist(),
        "precision": np.divide(tp, flagged, out=np.zeros(points), where=flagged > 0).tolist(),
        "recall": (tp / positives if positives else np.zeros(points)).tolist(),
        "f1": f1_scores(tp.astype(np.float64), fp.astype(np.float64), positives).tolist(),
    }
    if offer_cost is not None and saved_value is not None:
        curve["expected_profit"] = expected_profits(
            tp.astype(np.float64),
            fp.astype(np.float64),
            offer_cost=offer_cost,
            saved_value=saved_value,
            acceptance_rate=acceptance_rate,
        ).tolist()
    return curve
