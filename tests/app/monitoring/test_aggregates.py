"""Hourly aggregates: latency percentiles read back from the histogram stay close to the exact ones."""

from __future__ import annotations

import numpy as np
import pytest

from app.monitoring.aggregates import LATENCY_GROWTH, latency_buckets, percentile


def histogram(latencies: np.ndarray) -> list[tuple[int, int, float]]:
    buckets: dict[int, list[float]] = {}
    for value, bucket in zip(latencies.tolist(), latency_buckets(latencies).tolist(), strict=True):
        figures = buckets.setdefault(bucket, [0, 0.0])
        figures[0] += 1
        figures[1] += value
    return [(bucket, int(count), total) for bucket, (count, total) in sorted(buckets.items())]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_percentiles_from_the_histogram_are_within_one_bucket(seed):
    latencies = np.random.default_rng(seed).lognormal(mean=-7.0, sigma=1.2, size=5000)
    read = histogram(latencies)
    for q in (50, 95, 99):
        assert percentile(read, q) == pytest.approx(np.percentile(latencies, q), rel=LATENCY_GROWTH - 1)


def test_a_bucket_holding_one_value_gives_it_exactly():
    assert percentile(histogram(np.array([0.0123])), 50) == 0.0123
    few = np.array([0.001, 0.002, 0.5])
    assert percentile(histogram(few), 99) == pytest.approx(np.percentile(few, 99))
