"""Champion against challenger on the same customers: how often they decide alike, how far the scores
move, and, on the customers whose outcome is known, which model is better, with a paired bootstrap.

Pure computation (numpy and scikit-learn): callers pass, row for row, both models' churn
probabilities, each model's threshold (a customer is flagged when ``probability >= threshold``, the
service's rule) and the realized outcome (1 churned, 0 stayed, None or NaN not known yet).

Point figures come from scikit-learn. The bootstrap draws the labelled rows with replacement
``resamples`` times, the same draw for both models (paired), and computes every figure of every draw
at once from the draw counts; the confidence interval of "challenger minus champion" is the percentile
interval of those differences. The verdict reads the interval of one metric (ROC-AUC unless told).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Below about 30 of each class a single customer moves ROC-AUC and recall by several points, so the
# interval of a difference is too wide to call anything; 200 labelled rows keep a 10% churn rate
# from ever reaching the per-class floor by luck on a handful of positives.
MIN_LABELLED = 200
MIN_PER_CLASS = 30
RESAMPLES = 1000
CONFIDENCE = 0.95
METRICS = ("roc_auc", "pr_auc", "precision", "recall", "expected_profit")
# Resamples are processed in blocks of at most this many (resample, row) cells, bounding memory.
_BLOCK_CELLS = 2_000_000

BETTER, WORSE, NO_CLEAR_DIFFERENCE, NOT_ENOUGH_LABELS = (
    "better",
    "worse",
    "no clear difference",
    "not enough labels yet",
)


@dataclass(frozen=True)
class ProfitTerms:
    """What a retention contact costs and what keeping a would-be churner is worth (as in training's max_profit).

    Every flagged customer is contacted at ``offer_cost``; a flagged churner accepts with probability
    ``acceptance_rate`` and is then kept, worth ``saved_value``.
    """

    saved_value: float
    offer_cost: float
    acceptance_rate: float = 1.0


@dataclass(frozen=True)
class ModelScores:
    """One model's churn probabilities for the compared customers, and its decision threshold."""

    probabilities: Sequence[float] | np.ndarray
    threshold: float


@dataclass
class MetricComparison:
    """One metric for both models, the difference (challenger - champion) and its bootstrap interval."""

    champion: float | None
    challenger: float | None
    difference: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass
class Comparison:
    rows: int
    labelled: int
    churners: int
    agreement: float | None  # share of rows where both models take the same decision
    mean_score_shift: float | None  # mean of challenger - champion probability
    mean_absolute_score_shift: float | None
    champion_flag_rate: float | None
    challenger_flag_rate: float | None
    verdict: str
    verdict_metric: str
    labels_needed: int  # more labelled rows needed before a verdict (an estimate; 0 once there are enough)
    explanation: str
    metrics: dict[str, MetricComparison] = field(default_factory=dict)
    resamples: int = RESAMPLES
    confidence: float = CONFIDENCE
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_models(
    champion: ModelScores,
    challenger: ModelScores,
    outcomes: Sequence[Any] | np.ndarray,
    *,
    profit: ProfitTerms | None = None,
    verdict_metric: str = "roc_auc",
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Comparison:
    """Compare two models on the same rows; ValueError says what is wrong with the inputs."""
    p_champion, p_challenger = probabilities(champion), probabilities(challenger)
    y = outcome_array(outcomes)
    if not p_champion.size == p_challenger.size == y.size:
        raise ValueError(
            f"row counts differ: champion {p_champion.size}, challenger {p_challenger.size}, outcomes {y.size}"
        )
    if verdict_metric not in METRICS or (verdict_metric == "expected_profit" and profit is None):
        raise ValueError(f"verdict_metric must be one of {', '.join(METRICS)} (expected_profit needs profit terms)")
    if resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError("resamples must be at least 1 and confidence lie strictly between 0 and 1")
    d_champion, d_challenger = p_champion >= champion.threshold, p_challenger >= challenger.threshold
    labelled = ~np.isnan(y)
    truth = y[labelled].astype(bool)
    churners, n_labelled = int(truth.sum()), int(labelled.sum())
    needed = labels_needed(n_labelled, churners)
    result = Comparison(
        rows=int(y.size),
        labelled=n_labelled,
        churners=churners,
        agreement=mean_or_none(d_champion == d_challenger),
        mean_score_shift=mean_or_none(p_challenger - p_champion),
        mean_absolute_score_shift=mean_or_none(np.abs(p_challenger - p_champion)),
        champion_flag_rate=mean_or_none(d_champion),
        challenger_flag_rate=mean_or_none(d_challenger),
        verdict=NOT_ENOUGH_LABELS,
        verdict_metric=verdict_metric,
        labels_needed=needed,
        explanation="",
        resamples=resamples,
        confidence=confidence,
        seed=seed,
    )
    if n_labelled:
        sides = [(p[labelled], d[labelled]) for p, d in ((p_champion, d_champion), (p_challenger, d_challenger))]
        result.metrics = metric_comparisons(truth, sides, profit, resamples, confidence, seed)
    result.verdict, result.explanation = verdict(result, needed)
    return result


def probabilities(model: ModelScores) -> np.ndarray:
    try:
        values = np.asarray(model.probabilities, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        values = np.array([np.nan])
    if not np.all(np.isfinite(values)) or np.any((values < 0.0) | (values > 1.0)):
        raise ValueError("probabilities must be finite numbers between 0 and 1")
    if not math.isfinite(model.threshold):
        raise ValueError(f"threshold must be a finite number, got {model.threshold!r}")
    return values


def outcome_array(outcomes: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Outcomes as floats: 1.0 churned, 0.0 stayed, NaN not known (None and NaN both mean unknown)."""
    try:
        y = np.array([np.nan if value is None else value for value in outcomes], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("outcomes must be 0, 1, true, false, or None when not known yet") from None
    known = y[~np.isnan(y)]
    if np.any((known != 0.0) & (known != 1.0)):
        raise ValueError("outcomes must be 0, 1, true, false, or None when not known yet")
    return y


def mean_or_none(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if values.size else None


def labels_needed(labelled: int, churners: int) -> int:
    """More labelled rows needed to reach MIN_LABELLED with MIN_PER_CLASS of each class (0 once reached).

    The per-class part assumes the churn rate seen so far continues (smoothed, so it is never 0).
    """
    needed = max(0, MIN_LABELLED - labelled)
    for count in (churners, labelled - churners):
        short = MIN_PER_CLASS - count
        if short > 0:
            rate = (count + 0.5) / (labelled + 1.0)
            needed = max(needed, math.ceil(short / rate))
    return needed


def verdict(result: Comparison, needed: int) -> tuple[str, str]:
    if needed:
        return NOT_ENOUGH_LABELS, (
            f"{result.labelled} labelled rows ({result.churners} churned); a verdict needs at least "
            f"{MIN_LABELLED} with {MIN_PER_CLASS} of each outcome: about {needed} more labelled rows"
        )
    figure = result.metrics[result.verdict_metric]
    level = f"{result.confidence:.0%}"
    if figure.ci_low is None or figure.ci_high is None:
        return NO_CLEAR_DIFFERENCE, f"{result.verdict_metric} is undefined on these rows"
    interval = (
        f"{result.verdict_metric} difference {figure.difference:+.4f}, "
        f"{level} interval [{figure.ci_low:+.4f}, {figure.ci_high:+.4f}]"
    )
    if figure.ci_low > 0:
        return BETTER, f"the challenger is better: {interval}"
    if figure.ci_high < 0:
        return WORSE, f"the challenger is worse: {interval}"
    return NO_CLEAR_DIFFERENCE, f"the interval includes no difference: {interval}"


# ---- figures --------------------------------------------------------------------------------------
def metric_comparisons(
    y: np.ndarray,
    sides: list[tuple[np.ndarray, np.ndarray]],
    profit: ProfitTerms | None,
    resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, MetricComparison]:
    names = [name for name in METRICS if name != "expected_profit" or profit is not None]
    points = [point_figures(y, p, d, profit) for p, d in sides]
    replicates = paired_replicates(y, sides, profit, resamples, seed)
    tail = (1.0 - confidence) / 2.0 * 100.0
    comparisons = {}
    for name in names:
        champion, challenger = points[0][name], points[1][name]
        differences = replicates[1][name] - replicates[0][name]
        differences = differences[~np.isnan(differences)]
        low, high = np.percentile(differences, [tail, 100.0 - tail]) if differences.size else (None, None)
        comparisons[name] = MetricComparison(
            champion=champion,
            challenger=challenger,
            difference=None if champion is None or challenger is None else challenger - champion,
            ci_low=None if low is None else float(low),
            ci_high=None if high is None else float(high),
        )
    return comparisons


def point_figures(y: np.ndarray, p: np.ndarray, d: np.ndarray, profit: ProfitTerms | None) -> dict[str, float | None]:
    # Imported here: scikit-learn takes seconds to import, and only the comparison needs it.
    from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score

    both_classes = 0 < int(y.sum()) < y.size
    figures = {
        "roc_auc": float(roc_auc_score(y, p)) if both_classes else None,
        "pr_auc": float(average_precision_score(y, p)) if y.any() else None,
        "precision": undefined_as_none(precision_score(y, d, zero_division=np.nan)),
        "recall": undefined_as_none(recall_score(y, d, zero_division=np.nan)),
    }
    if profit is not None:
        tp, flagged = float(np.sum(y & d)), float(np.sum(d))
        figures["expected_profit"] = profit.acceptance_rate * profit.saved_value * tp - profit.offer_cost * flagged
    return figures


def undefined_as_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def paired_replicates(
    y: np.ndarray, sides: list[tuple[np.ndarray, np.ndarray]], profit: ProfitTerms | None, resamples: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """Every figure of each model on each bootstrap draw; both models see the same draws."""
    rng = np.random.default_rng(seed)
    n = y.size
    ranked = [RankedScores.of(y, p, d) for p, d in sides]
    block = max(1, _BLOCK_CELLS // n)
    parts: list[list[dict[str, np.ndarray]]] = [[], []]
    for start in range(0, resamples, block):
        counts = draw_counts(rng, n, min(block, resamples - start))
        for side, scores in enumerate(ranked):
            parts[side].append(scores.weighted_figures(counts, profit))
    return [{name: np.concatenate([part[name] for part in side]) for name in side[0]} for side in parts]


def draw_counts(rng: np.random.Generator, n: int, draws: int) -> np.ndarray:
    """How often each of ``n`` rows is picked in each of ``draws`` bootstrap samples of size ``n``."""
    picks = rng.integers(0, n, size=(draws, n)) + (np.arange(draws) * n)[:, None]
    # float32 holds every count and every per-score sum exactly (they are whole numbers below 2**24).
    return np.bincount(picks.ravel(), minlength=draws * n).reshape(draws, n).astype(np.float32)


@dataclass
class RankedScores:
    """One model's labelled rows grouped by distinct score, highest first, split by outcome.

    ``indicator`` (rows x 2 groups, sparse) sums any row weights into the churners' and the stayers'
    weight at each distinct score, so a whole block of bootstrap draws is one sparse product.
    """

    indicator: Any
    groups: int
    flagged_groups: int  # the highest-scoring groups are the flagged ones (probability >= threshold)

    @classmethod
    def of(cls, y: np.ndarray, p: np.ndarray, flagged: np.ndarray) -> RankedScores:
        from scipy import sparse

        distinct, group = np.unique(-p, return_inverse=True)  # ascending -p: highest score first
        columns = group + np.where(y, 0, distinct.size)
        ones = np.ones(p.size, dtype=np.float32)
        indicator = sparse.csr_array((ones, (np.arange(p.size), columns)), shape=(p.size, 2 * distinct.size))
        return cls(indicator, int(distinct.size), int(np.unique(p[flagged]).size))

    def weighted_figures(self, weights: np.ndarray, profit: ProfitTerms | None) -> dict[str, np.ndarray]:
        """Each figure once per row of ``weights`` (rows weighted like scikit-learn's ``sample_weight``)."""
        sums = np.asarray(weights @ self.indicator, dtype=np.float64)  # draws x (churners' groups, stayers' groups)
        churned, stayed = sums[:, : self.groups], sums[:, self.groups :]
        caught, stayed_above = np.cumsum(churned, axis=1), np.cumsum(stayed, axis=1)
        seen = caught + stayed_above
        positives, negatives = caught[:, -1], stayed_above[:, -1]
        last = self.flagged_groups - 1
        hits = caught[:, last] if last >= 0 else np.zeros(len(weights))
        flagged = seen[:, last] if last >= 0 else np.zeros(len(weights))
        stayed_below = negatives[:, None] - stayed_above
        with np.errstate(divide="ignore", invalid="ignore"):
            figures = {
                # The chance a churner outscores a stayer, ties counting half: the area under the ROC curve.
                "roc_auc": (churned * (stayed_below + 0.5 * stayed)).sum(axis=1) / (positives * negatives),
                # Precision at each distinct score, weighted by the recall it adds.
                "pr_auc": (churned * np.where(seen > 0, caught / seen, 0.0)).sum(axis=1) / positives,
                "precision": np.where(flagged > 0, hits / flagged, np.nan),
                "recall": hits / positives,
            }
        figures = {name: np.where(np.isfinite(values), values, np.nan) for name, values in figures.items()}
        if profit is not None:
            figures["expected_profit"] = (
                profit.acceptance_rate * profit.saved_value * hits - profit.offer_cost * flagged
            )
        return figures
