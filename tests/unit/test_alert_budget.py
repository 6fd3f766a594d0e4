"""The budget policy's sorted ring against the quantile of the ring itself (how it was computed)."""

from __future__ import annotations

import numpy as np
import pytest

from fraudstream.service.alerts import BudgetPolicy, sorted_quantile


class _PartitioningBudget(BudgetPolicy):
    """The policy as it was before the sorted ring: ``np.quantile`` and means over the ring."""

    def decide(self, scores: np.ndarray, scorer_version: int = 0) -> tuple[np.ndarray, float]:
        if scorer_version != self._version:
            self._switch(scorer_version)
        self._remember(scores)
        recent = self._ring[: self._filled]
        if self._filled >= self.min_history or (not self._trusted and self._filled >= 20):
            self._threshold = float(np.quantile(recent, self.quantile))
        threshold = self._threshold
        alert = scores > threshold
        tied = scores == threshold
        if tied.any() and self._filled >= 20:
            above = float(np.mean(recent > threshold))
            at = float(np.mean(recent == threshold))
            share = (1.0 - self.quantile - above) / at if at > 0 else 0.0
            if share > 0:
                alert |= tied & (self._rng.random(len(scores)) < min(1.0, share))
        return alert, threshold


def _scores(rng: np.random.Generator, n: int) -> np.ndarray:
    """Scores of one batch: continuous, coarse (many ties), or one repeated value."""
    kind = rng.integers(4)
    if kind == 0:
        return rng.random(n)
    if kind == 1:
        return np.round(rng.random(n), 2)
    if kind == 2:
        return rng.choice([0.05, 0.1, 0.3, 0.9], n, p=[0.6, 0.3, 0.09, 0.01])
    return np.full(n, rng.choice([0.0, 0.2, 1.0]))


@pytest.mark.parametrize("seed", range(12))
def test_the_same_thresholds_and_alerts_as_the_quantile_of_the_ring(seed: int) -> None:
    rng = np.random.default_rng(seed)
    history = int(rng.choice([20, 200, 1_000, 5_000]))
    expected = int(rng.choice([1_000, 10_000, 250_000]))
    budget = int(rng.integers(1, 300))
    min_history = int(rng.choice([20, 200]))
    policy, reference = (
        cls(budget, expected, fallback_threshold=0.5, history=history, min_history=min_history)
        for cls in (BudgetPolicy, _PartitioningBudget)
    )
    version = 0
    for _ in range(120):
        if rng.random() < 0.05:
            version = int(rng.integers(0, 4))
        scores = _scores(rng, int(rng.integers(1, 2 * history + 50)))
        alert, threshold = policy.decide(scores, version)
        expected_alert, expected_threshold = reference.decide(scores, version)
        assert threshold == expected_threshold
        assert np.array_equal(alert, expected_alert)
        assert np.array_equal(policy._sorted, np.sort(policy._ring[: policy._filled]))


def test_a_full_day_ring_of_100000_scores() -> None:
    rng = np.random.default_rng(7)
    policy = BudgetPolicy(100, 1_000_000, fallback_threshold=0.5)
    reference = _PartitioningBudget(100, 1_000_000, fallback_threshold=0.5)
    assert len(policy._ring) == 100_000
    for _ in range(70):  # wraps the ring
        scores = _scores(rng, 2_000)
        alert, threshold = policy.decide(scores, 3)
        expected_alert, expected_threshold = reference.decide(scores, 3)
        assert threshold == expected_threshold
        assert np.array_equal(alert, expected_alert)


def test_nan_scores_give_numpys_answer() -> None:
    scores = np.r_[np.random.default_rng(1).random(300), np.nan]
    policy = BudgetPolicy(10, 1_000, fallback_threshold=0.5)
    reference = _PartitioningBudget(10, 1_000, fallback_threshold=0.5)
    alert, threshold = policy.decide(scores, 1)
    expected_alert, expected_threshold = reference.decide(scores, 1)
    assert np.isnan(threshold) and np.isnan(expected_threshold)
    assert np.array_equal(alert, expected_alert)


def test_sorted_quantile_is_numpys_quantile() -> None:
    rng = np.random.default_rng(3)
    checked = 0
    for n in (1, 2, 3, 7, 20, 199, 1_000, 10_001):
        for q in (0.0, 0.5, 0.9, 0.99, 0.998, 0.9999, 0.99999, 1.0, float(rng.random())):
            for values in (rng.random(n), np.round(rng.random(n), 1), rng.normal(size=n) * 1e6):
                ordered = np.sort(values)
                assert sorted_quantile(ordered, q) == float(np.quantile(values, q)), (n, q)
                checked += 1
    assert checked == 8 * 9 * 3
