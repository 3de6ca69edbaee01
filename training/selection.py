"""Choosing the model, out of fold only: screen every family, tune the leaders, blend when it pays.

1. Screen: every requested family's default configuration is cross-validated on the same folds.
2. Tune: the families whose screened ROC-AUC is within LEADER_MARGIN of the best (at most
   MAX_LEADERS) share the tuning budget; the others keep their screened configuration. A family far
   behind after its default rarely catches up, so its tuning time is better spent on the leaders.
3. Blend: the best candidates' out-of-fold scores are mixed (weighted mean of log-odds, the soft
   vote the service computes, every member weighted above zero); the blend becomes a candidate only
   when its cross-validated ROC-AUC beats the best single candidate's. Averaging models whose errors
   differ lowers the variance of the served scores, so a blend that is ahead out of fold is kept even
   by a small margin; one that is not ahead never is.
4. Vote: the linear model and the best tree model, weighted equally, form one more candidate. Their
   errors differ most, and equal weights fit nothing to the folds, so this vote is the lower-variance
   choice: it wins whenever its cross-validated ROC-AUC is within one standard error of the best
   candidate's (the folds cannot tell the two apart, and on small or noisy tables the apparent best
   is often the luckiest).
5. Otherwise the highest cross-validated ROC-AUC wins; ties go to the candidate found first.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bundle.scoring import logit
from training.candidates import BUDGET_SHARES, SOFT_VOTE, Budget, screen, tune_family
from training.crossval import CrossValidated, CrossValidatedResult, fold_scores
from training.evaluation import binary_log_loss
from training.split import Folds

LEADER_MARGIN = 0.01
MAX_LEADERS = 3
BLEND_WEIGHT_STEP = 0.1
MAX_BLEND_MEMBERS = 3
BLENDABLE = ("logistic_regression", "random_forest", "xgboost", "lightgbm")  # the soft vote's joblib members
MIN_BUDGET_SHARE = 0.25  # a family behind schedule still gets this share of its nominal tuning time
LINEAR = "logistic_regression"
TREES = ("xgboost", "lightgbm", "random_forest")
EQUAL_VOTE = "equal vote"  # the stage of the linear-and-tree vote

Say = Callable[[str], None]


@dataclass
class Candidate(CrossValidatedResult):
    """One family's chosen configuration (or a blend) with its cross-validation."""

    family: str
    cross_validated: CrossValidated
    stage: str  # "screened", "tuned" or "blended"
    trials: int
    seconds: float

    def leaderboard_entry(self, y: np.ndarray) -> dict[str, Any]:
        oof = np.clip(self.cross_validated.oof, 1e-7, 1 - 1e-7)
        return {
            "family": self.family,
            "status": "ok",
            "stage": self.stage,
            **self.cross_validated.summary(),
            "oof_log_loss": float(np.mean([binary_log_loss(y, row) for row in oof])),
            "fit_seconds": round(self.seconds, 3),
            "trials": self.trials,
            "params": self.params,
        }


@dataclass
class Selection:
    winner: Candidate | None  # None when every family failed
    candidates: list[Candidate]
    leaderboard: list[dict[str, Any]]
    reason: str
    budgets: dict[str, dict[str, Any]]


def failed_entry(family: str, exc: Exception) -> dict[str, Any]:
    return {"family": family, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def leaders(screened: list[Candidate]) -> list[str]:
    """The families worth tuning: within LEADER_MARGIN of the best screened score, best first."""
    ranked = sorted(screened, key=lambda c: -c.cv_roc_auc)
    best = ranked[0].cv_roc_auc
    return [c.family for c in ranked if c.cv_roc_auc >= best - LEADER_MARGIN][:MAX_LEADERS]


def share_remaining_time(nominal: dict[str, Budget], family: str, pending: list[str], seconds_left: float) -> Budget:
    """``family``'s proportional share of the tuning time still left (never below MIN_BUDGET_SHARE of nominal).

    A family that overran shortens the families after it, and one that finished early lends them its time.
    """
    share = nominal[family].seconds / sum(nominal[name].seconds for name in pending)
    seconds = max(seconds_left * share, MIN_BUDGET_SHARE * nominal[family].seconds)
    return Budget(trials=nominal[family].trials, seconds=round(seconds, 1))


def leader_budgets(
    families: list[str], total_seconds: float | None, trials: dict[str, int | None]
) -> dict[str, Budget]:
    """The tuning budget of each leader: the total time shared in the families' BUDGET_SHARES proportions."""
    shares = sum(BUDGET_SHARES[family] for family in families)
    return {
        family: Budget(
            trials=trials.get(family),
            seconds=None if total_seconds is None else total_seconds * BUDGET_SHARES[family] / shares,
        )
        for family in families
    }


def blend_weights(n_members: int) -> list[tuple[float, ...]]:
    """Every weighting of ``n_members`` on a BLEND_WEIGHT_STEP grid with each member weighted > 0."""
    steps = round(1 / BLEND_WEIGHT_STEP)
    grid = [c for c in itertools.product(range(1, steps), repeat=n_members) if sum(c) == steps]
    return [tuple(count / steps for count in combination) for combination in grid]


def blended_scores(members: list[Candidate], weights: tuple[float, ...]) -> np.ndarray:
    log_odds = sum(w * logit(m.cross_validated.oof.ravel()) for m, w in zip(members, weights, strict=True))
    return (1.0 / (1.0 + np.exp(-log_odds))).reshape(members[0].cross_validated.oof.shape)


def best_blend(candidates: list[Candidate], y: np.ndarray, folds: Folds) -> Candidate | None:
    """The best soft vote of the top blendable candidates, if it beats the best single one out of fold."""
    started = time.perf_counter()
    pool = sorted((c for c in candidates if c.family in BLENDABLE), key=lambda c: -c.cv_roc_auc)[:MAX_BLEND_MEMBERS]
    best_single = max(c.cv_roc_auc for c in candidates)
    best: CrossValidated | None = None
    for size in range(2, len(pool) + 1):
        for members in itertools.combinations(pool, size):
            for weights in blend_weights(size):
                oof = blended_scores(list(members), weights)
                scores = fold_scores(y, oof, folds)
                if best is None or np.mean(scores) > best.roc_auc:
                    params = {
                        "members": [
                            {"family": m.family, "params": m.params, "weight": w}
                            for m, w in zip(members, weights, strict=True)
                        ]
                    }
                    best = CrossValidated(params=params, fold_roc_auc=scores, oof=oof)
    if best is None or best.roc_auc <= best_single:
        return None
    return Candidate(SOFT_VOTE, best, "blended", trials=1, seconds=time.perf_counter() - started)


def linear_and_tree_vote(candidates: list[Candidate], y: np.ndarray, folds: Folds) -> Candidate | None:
    """The equal-weight soft vote of the linear model and the best tree model; None without both."""
    linear = next((c for c in candidates if c.family == LINEAR), None)
    trees = [c for c in candidates if c.family in TREES]
    if linear is None or not trees:
        return None
    members = [linear, max(trees, key=lambda c: c.cv_roc_auc)]
    weights = (0.5, 0.5)
    oof = blended_scores(members, weights)
    params = {
        "members": [
            {"family": m.family, "params": m.params, "weight": w} for m, w in zip(members, weights, strict=True)
        ]
    }
    cross_validated = CrossValidated(params=params, fold_roc_auc=fold_scores(y, oof, folds), oof=oof)
    return Candidate(SOFT_VOTE, cross_validated, EQUAL_VOTE, trials=1, seconds=0.0)


def standard_error(candidate: Candidate) -> float:
    """Standard error of a candidate's mean cross-validated ROC-AUC over its fits."""
    return candidate.cv_roc_auc_std / np.sqrt(len(candidate.cross_validated.fold_roc_auc))


def choose_winner(candidates: list[Candidate], vote: Candidate | None) -> tuple[Candidate, str]:
    """The equal vote when it is within one standard error of the best candidate, else the best; and why."""
    best = max(candidates, key=lambda c: c.cv_roc_auc)  # max keeps the first of equals
    if vote is not None and vote is not best and vote.cv_roc_auc >= best.cv_roc_auc - standard_error(best):
        return vote, (
            f"the equal vote of {' and '.join(m['family'] for m in vote.params['members'])} "
            f"(cross-validated ROC-AUC {vote.cv_roc_auc:.4f}) is within one standard error of the best "
            f"({best.family}, {best.stage}: {best.cv_roc_auc:.4f} ± {standard_error(best):.4f}) and varies less"
        )
    return best, f"highest cross-validated ROC-AUC ({best.cv_roc_auc:.4f})"


def select_model(
    families: tuple[str, ...],
    X: np.ndarray,
    y: np.ndarray,
    folds: Folds,
    *,
    seed: int,
    total_seconds: float | None,
    trials: dict[str, int | None],
    say: Say,
    progress: bool = False,
) -> Selection:
    """Screen, tune and blend; one family's failure is recorded in the leaderboard, not fatal."""
    screened: dict[str, Candidate] = {}
    failures: list[dict[str, Any]] = []
    for family in families:
        started = time.perf_counter()
        try:
            outcome = screen(family, X, y, folds, seed=seed)
        except Exception as exc:  # any library failure in one family must not sink the others
            failures.append(failed_entry(family, exc))
            say(f"{family} failed: {type(exc).__name__}: {exc}")
            continue
        screened[family] = Candidate(family, outcome, "screened", trials=1, seconds=time.perf_counter() - started)
        say(f"{family}: default configuration, CV ROC-AUC {outcome.roc_auc:.4f} ± {outcome.roc_auc_std:.4f}")
    if not screened:
        return Selection(None, [], failures, "", {})
    chosen = dict(screened)
    to_tune = leaders(list(screened.values()))
    say(f"tuning {', '.join(to_tune)} (within {LEADER_MARGIN} ROC-AUC of the best default)")
    nominal = leader_budgets(to_tune, total_seconds, trials)
    budgets: dict[str, dict[str, Any]] = {}
    tuning_started = time.perf_counter()
    for position, family in enumerate(to_tune):
        budget = nominal[family]
        if total_seconds is not None:
            left = total_seconds - (time.perf_counter() - tuning_started)
            budget = share_remaining_time(nominal, family, to_tune[position:], left)
        budgets[family] = {"trials": budget.trials, "seconds": budget.seconds}
        started = time.perf_counter()
        try:
            first = screened[family].cross_validated
            tuned = tune_family(family, X, y, folds, budget=budget, seed=seed, first=first, progress=progress)
        except Exception as exc:  # the screened configuration stays usable
            say(f"tuning {family} failed, keeping its default: {type(exc).__name__}: {exc}")
            continue
        seconds = screened[family].seconds + time.perf_counter() - started
        chosen[family] = Candidate(family, tuned.cross_validated, "tuned", trials=tuned.trials, seconds=seconds)
    candidates = list(chosen.values())
    blend = best_blend(candidates, y, folds) if len(candidates) > 1 else None
    if blend is not None:
        candidates.append(blend)
        say(f"{SOFT_VOTE}: CV ROC-AUC {blend.cv_roc_auc:.4f}")
    vote = linear_and_tree_vote(candidates, y, folds)
    if vote is not None:
        candidates.append(vote)
        say(f"{SOFT_VOTE} ({EQUAL_VOTE}): CV ROC-AUC {vote.cv_roc_auc:.4f}")
    winner, why = choose_winner(candidates, vote)
    fits = folds.describe()
    reason = f"{why}; means of {fits['fits']} fits: {fits['folds']} folds x {fits['repeats']} repeats"
    leaderboard = [c.leaderboard_entry(y) for c in candidates] + failures
    return Selection(winner, candidates, leaderboard, reason, budgets)
