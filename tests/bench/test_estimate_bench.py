"""bench.estimate's pieces that need no service: the concept-drift outcomes and the Markdown tables."""

import numpy as np

from bench.estimate import WindowResult, markdown, parse_args, redraw_outcomes


def test_redrawn_outcomes_keep_the_churn_rate_but_lose_the_customer():
    rng = np.random.default_rng(0)
    labels = rng.random(20_000) < 0.3
    assert np.array_equal(redraw_outcomes(labels, 0.0, rng), labels)
    redrawn = redraw_outcomes(labels, 1.0, rng)
    assert abs(redrawn.mean() - labels.mean()) < 0.02
    agreement = (redrawn == labels).mean()
    assert 0.5 < agreement < 0.65  # independent draws at a 30% rate agree about 58% of the time


def test_markdown_reports_each_window_and_the_mean_absolute_difference():
    def window(estimate: float, realized: float) -> WindowResult:
        figures = dict.fromkeys(("roc_auc", "precision", "recall", "f1"), estimate)
        truth = dict.fromkeys(figures, realized)
        low = {name: value - 0.02 for name, value in figures.items()}
        high = {name: value + 0.02 for name, value in figures.items()}
        return WindowResult(drift=0.5, predictions=1000, estimated=figures, lower=low, upper=high, realized=truth)

    text = markdown([window(0.80, 0.79), window(0.70, 0.66)], parse_args([]))
    assert "| 0 | 0.50 | 1000 | 0.800 [0.780, 0.820] | 0.790 | 0.010 | yes |" in text
    assert "| 1 | 0.50 | 1000 | 0.700 [0.680, 0.720] | 0.660 | 0.040 | no |" in text
    assert "| roc_auc | 0.025 | 0.040 | 1/2 |" in text
