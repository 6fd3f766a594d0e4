"""The handbook's assessment protocol against hand-computed examples.

And AUC/AP against brute-force reference implementations.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fraudstream.evaluation.metrics import (
    Assessment,
    DayWeightedMetrics,
    assess,
    bootstrap_over_days,
    card_precision_per_day,
)
from fraudstream.service.progressive import average_precision, roc_auc

# -- trusted references -----------------------------------------------------------------------


def brute_force_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Share of (fraud, genuine) pairs ranked right, ties one half: the definition."""
    pos, neg = scores[labels], scores[~labels]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def brute_force_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """Compute scikit-learn's average precision, literally.

    The sum over thresholds (every distinct score, high to low) of (recall step)
    x (precision at that threshold).
    """
    total = labels.sum()
    ap, previous_recall = 0.0, 0.0
    for threshold in sorted(set(scores.tolist()), reverse=True):
        alerted = scores >= threshold
        tp = (alerted & labels).sum()
        recall = tp / total
        ap += (recall - previous_recall) * tp / alerted.sum()
        previous_recall = recall
    return float(ap)


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_ap_equal_brute_force_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 200))
    labels = rng.random(n) < rng.uniform(0.05, 0.5)
    labels[:2] = [True, False]
    # Rounded scores: many ties, the hard case.
    scores = np.round(labels * rng.uniform(0, 1) + rng.random(n), int(rng.integers(1, 3)))
    assert roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(
        brute_force_ap(scores, labels), abs=1e-12
    )


def test_day_weights_equal_the_metrics_on_duplicated_days() -> None:
    rng = np.random.default_rng(7)
    day = rng.integers(0, 6, 400)
    labels = rng.random(400) < 0.15
    scores = np.round(labels * 0.7 + rng.random(400), 2)
    weighted = DayWeightedMetrics(scores, labels, day)
    w = np.array([0, 2, 1, 3, 0, 1])  # what a bootstrap resample draws
    rows = np.concatenate([np.flatnonzero(day == d) for d in range(6) for _ in range(w[d])])
    assert weighted.roc_auc(w.astype(float)) == pytest.approx(roc_auc(scores[rows], labels[rows]))
    assert weighted.average_precision(w.astype(float)) == pytest.approx(
        average_precision(scores[rows], labels[rows])
    )


def test_bootstrap_is_deterministic_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(3)
    day = np.repeat(np.arange(14), 60)
    labels = rng.random(day.shape[0]) < 0.1
    scores = labels * 0.5 + rng.random(day.shape[0])
    cards = np.arange(day.shape[0])
    daily = card_precision_per_day(day, cards, scores, labels, k=5)
    a = bootstrap_over_days(scores, labels, day, daily, n_boot=300, seed=1)
    assert a == bootstrap_over_days(scores, labels, day, daily, n_boot=300, seed=1)
    for name, value in (
        ("roc_auc", roc_auc(scores, labels)),
        ("average_precision", average_precision(scores, labels)),
        ("card_precision_at_k", daily.mean),
    ):
        lo, hi = a[name]
        assert lo <= value <= hi, name


# -- known-compromised cards ------------------------------------------------------------------


def test_known_cards_are_removed_per_test_day_with_the_delay() -> None:
    # Test week starts on day 100; with a 7-day delay, on test day D the frauds of
    # days [86, D - 8] are known (the handbook: [W - 14, D - 8]).
    plan = Assessment(start_day=100, weeks=1, delay_days=7)
    day = np.array([85, 86, 93, 95, 100, 100, 100, 101, 102, 103, 103, 106, 99, 107])
    card = np.array([1, 2, 3, 4, 1, 2, 3, 3, 4, 4, 5, 5, 6, 6])
    fraud = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], bool)
    mask = plan.test_mask(day, card, fraud)
    expected = {
        4: True,  # card 1: its fraud on day 85 is before the window
        5: False,  # card 2: fraud on day 86 = W - 14, known
        6: True,  # card 3: fraud on day 93 = D - 7 for D = 100: not known yet
        7: False,  # ... but known on day 101 (93 = 101 - 8)
        8: True,  # card 4: fraud on day 95 known from day 103 on
        9: False,
        10: True,  # card 5: no fraud
        11: True,
        12: False,  # day 99 is before the test week
        13: False,  # day 107 is after it (one week: days 100-106)
    }
    for row, keep in expected.items():
        assert mask[row] == keep, row
    assert not mask[:4].any()
    assert Assessment(100, 1, remove_known=False).test_mask(day, card, fraud)[4:12].all()


def test_weeks_start_their_own_known_window() -> None:
    plan = Assessment(start_day=100, weeks=2, delay_days=7)
    # Card 1 has a fraud on day 90: known in week 1 (window [86, ...]) and in week 2
    # (window [93, ...])? 90 < 93: not in week 2's window.
    day = np.array([90, 100, 107])
    card = np.array([1, 1, 1])
    fraud = np.array([True, False, False])
    assert plan.test_mask(day, card, fraud).tolist() == [False, False, True]
    assert plan.week_of(day).tolist() == [-1, 0, 1]


# -- card precision@k -------------------------------------------------------------------------


def test_card_precision_removes_detected_cards_within_the_week_only() -> None:
    # k = 2. Week 0 = days 0, 1; week 1 = day 2.
    day = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    card = np.array([1, 1, 2, 3, 1, 2, 3, 4, 1, 2, 3])
    scores = np.array([0.2, 0.9, 0.8, 0.1, 0.95, 0.7, 0.6, 0.5, 0.9, 0.8, 0.1])
    labels = np.array([1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 0], bool)
    week = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    d = card_precision_per_day(day, card, scores, labels, k=2, week=week)
    # Day 0: card 1 (max 0.9, a fraud among its tx) and card 2 (0.8, genuine): 1/2;
    # card 1 is detected.
    # Day 1: card 1 left out; cards 2 (0.7, fraud) and 3 (0.6): 1/2.
    # Day 2: new week, nothing left out: cards 1 (0.9, fraud) and 2 (0.8): 1/2.
    assert d.precision.tolist() == [0.5, 0.5, 0.5]
    assert d.fraud_cards.tolist() == [2, 1, 1]
    assert d.mean == 0.5
    # Without removal, day 1 ranks card 1 (0.95, fraud) first: 2/2.
    kept = card_precision_per_day(day, card, scores, labels, k=2, week=week, remove_detected=False)
    assert kept.precision.tolist() == [0.5, 1.0, 0.5]
    # Fewer cards than k: still divided by k (the handbook's choice).
    assert card_precision_per_day(day, card, scores, labels, k=10, week=week).precision[0] == 0.2


def test_assess_reports_handbook_figures_on_a_hand_example() -> None:
    scores = np.array([0.9, 0.1, 0.8, 0.3])
    labels = np.array([True, False, False, True])
    m = assess(scores, labels, np.array([0, 0, 1, 1]), np.array([1, 2, 1, 2]), np.zeros(4, int), 1)
    assert m["roc_auc"] == 0.75  # 3 of 4 pairs
    assert m["average_precision"] == pytest.approx((1 + 2 / 3) / 2)
    # Day 0: card 1 (fraud) found; day 1: card 1 left out, card 2 (0.3, fraud) top.
    assert m["card_precision_at_k"] == 1.0
    assert math.isnan(assess(scores[:0], labels[:0], scores[:0], scores[:0], scores[:0])["roc_auc"])


def test_card_precision_with_known_and_detected_cards_left_out_on_a_hand_example() -> None:
    # Two test weeks from day 100, labels 7 days late, k = 1: the whole chain the
    # report runs (test mask, then card precision with detected cards left out).
    plan = Assessment(start_day=100, weeks=2, delay_days=7)
    rows = [  # (day, card, score, fraud)
        (90, 1, 0.10, True),  # before the test: card 1 known in week 0 (90 in [86, D - 8])
        (100, 1, 0.99, True),  # left out: card 1 known compromised
        (100, 2, 0.90, True),  # day 100's top card: a fraud, card 2 detected
        (100, 3, 0.50, False),
        (101, 2, 0.95, True),  # kept (fraud not known yet), but card 2 was detected
        (101, 3, 0.60, False),  # day 101's top card: genuine
        (107, 1, 0.70, False),  # week 1: card 1's day-90 fraud is out of [93, 99]
        (107, 2, 0.80, True),  # day 100's fraud not known yet (100 > 99): top, a fraud
        (108, 2, 0.99, True),  # left out: the day-100 fraud is known from day 108
        (108, 1, 0.30, True),  # left out: card 1's day-100 fraud is known too
        (108, 3, 0.40, False),  # day 108's only card: genuine
    ]
    day, card, score, fraud = (np.array(col) for col in zip(*rows, strict=True))
    mask = plan.test_mask(day, card, fraud.astype(bool))
    assert mask.tolist() == [False, False, True, True, True, True, True, True, False, False, True]
    week = plan.week_of(day)[mask]
    d = card_precision_per_day(
        day[mask], card[mask], score[mask], fraud[mask].astype(bool), k=1, week=week
    )
    assert d.precision.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert d.mean == 0.5
