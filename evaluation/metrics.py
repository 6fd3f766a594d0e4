"""The Fraud Detection Handbook's assessment protocol, and bootstrap intervals over days.

The handbook (Le Borgne et al., *Reproducible Machine Learning for Credit Card
Fraud Detection*, ``shared_functions.py``) assesses a model on *test weeks*:

* **Known-compromised cards are removed** (its ``get_train_test_set``): on test
  day ``D`` of the week starting ``W``, the transactions of every card with a
  fraud on a day in ``[W - delay - 7, D - delay - 1]`` are left out: those
  frauds' labels are in by ``D``, so the investigators already know the card
  (with the 7-day delay: ``[W - 14, D - 8]``).
* **Card Precision@k** (its ``card_precision_top_k``): per day, each card's
  score is its highest transaction score that day and the card is fraudulent
  when any of its transactions is; of the ``k`` riskiest cards, the share that
  are fraudulent (divided by ``k`` even on a day with fewer cards). Cards
  found (a fraud in the top ``k``) on an earlier day of the same test week are
  left out. The figure is the mean over the days.
* ROC AUC and average precision over the test transactions.

:func:`assess` applies all of it to one scorer; :class:`Assessment` says which
transactions are tested. Days are integers (days since 1970-01-01, UTC) and
cards any integer code.

Examples
--------
>>> plan = Assessment(start_day=10, weeks=1)
>>> day = np.array([3, 10, 10, 11, 12])
>>> card = np.array([1, 1, 2, 1, 3])
>>> fraud = np.array([True, False, True, False, True])
>>> plan.test_mask(day, card, fraud).tolist()  # card 1's day-3 fraud is known from day 11
[False, True, True, False, True]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fraudstream.service.progressive import average_precision, roc_auc

__all__ = [
    "Assessment",
    "DailyPrecision",
    "DayWeightedMetrics",
    "assess",
    "average_precision",
    "bootstrap_over_days",
    "card_precision_per_day",
    "roc_auc",
]


@dataclass(frozen=True)
class Assessment:
    """Which transactions the handbook's protocol tests.

    Parameters
    ----------
    start_day
        First test day (days since 1970-01-01, UTC).
    weeks
        Number of consecutive 7-day test weeks (default 4).
    delay_days
        Label delay of the protocol (default 7): frauds of days up to
        ``D - delay_days - 1`` are known on test day ``D``.
    remove_known
        Leave out the transactions of known-compromised cards (default True).
    """

    start_day: int
    weeks: int = 4
    delay_days: int = 7
    remove_known: bool = True

    @property
    def days(self) -> range:
        """The test days."""
        return range(self.start_day, self.start_day + 7 * self.weeks)

    def week_of(self, day: np.ndarray) -> np.ndarray:
        """Test week (0-based) of each day; -1 outside the assessment.

        >>> Assessment(start_day=7, weeks=2).week_of(np.array([6, 7, 13, 14, 21])).tolist()
        [-1, 0, 0, 1, -1]
        """
        day = np.asarray(day, dtype=np.int64)
        week = (day - self.start_day) // 7
        return np.where((week >= 0) & (week < self.weeks), week, -1)

    def test_mask(self, day: np.ndarray, card: np.ndarray, is_fraud: np.ndarray) -> np.ndarray:
        """Transactions in the test weeks, minus those of known-compromised cards.

        ``day``, ``card`` and ``is_fraud`` cover the whole stream (the known frauds
        come from before the assessment).
        """
        day = np.asarray(day, dtype=np.int64)
        card = np.asarray(card, dtype=np.int64)
        is_fraud = np.asarray(is_fraud, dtype=bool)
        week = self.week_of(day)
        mask = week >= 0
        if not self.remove_known or not mask.any():
            return mask
        # Every (card, fraud day), sorted: a card is known on test day D of week W
        # when it has one in [W - delay - 7, D - delay - 1].
        span = int(day.max() - min(int(day.min()), self.start_day - self.delay_days - 7)) + 2
        base = min(int(day.min()), self.start_day - self.delay_days - 7) - 1
        fraud_keys = np.unique(card[is_fraud] * span + (day[is_fraud] - base))
        rows = np.flatnonzero(mask)
        week_start = self.start_day + 7 * week[rows]
        lo = card[rows] * span + (week_start - self.delay_days - 7 - base)
        hi = card[rows] * span + (day[rows] - self.delay_days - 1 - base)
        known = np.searchsorted(fraud_keys, hi, side="right") > np.searchsorted(
            fraud_keys, lo, side="left"
        )
        mask[rows[known]] = False
        return mask


@dataclass(frozen=True)
class DailyPrecision:
    """Card precision@k of each test day (see :func:`card_precision_per_day`)."""

    days: np.ndarray  # int64 test days, ascending
    precision: np.ndarray  # float64 card precision@k of each day
    fraud_cards: np.ndarray  # int64 fraudulent cards left that day (after removals)

    @property
    def mean(self) -> float:
        """Mean over the days (NaN without days)."""
        return float(self.precision.mean()) if self.precision.shape[0] else float("nan")


def card_precision_per_day(
    day: np.ndarray,
    card: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    k: int = 100,
    *,
    week: np.ndarray | None = None,
    remove_detected: bool = True,
) -> DailyPrecision:
    """Card precision@k per day, with the cards detected earlier in the week left out.

    Parameters
    ----------
    day, card
        Integer day and card code of each (test) transaction.
    scores, labels
        Score and fraud flag of each transaction.
    k
        Cards checked per day.
    week
        Week of each transaction: detected cards are forgotten when it changes
        (default: one week for everything).
    remove_detected
        Leave out, on later days of the same week, the fraudulent cards found in
        an earlier day's top ``k`` (default True, as the handbook).

    Ties in a card's score rank the lower card code first.

    Examples
    --------
    Day 0: card 1 (max 0.9, fraud), card 2 (0.5, genuine). Day 1: card 1 again
    (0.8, fraud) and card 3 (0.7, fraud). With k = 1, card 1 is found on day 0,
    so on day 1 it is left out and card 3 is the top card.

    >>> d = card_precision_per_day(np.array([0, 0, 1, 1]), np.array([1, 2, 1, 3]),
    ...                            np.array([0.9, 0.5, 0.8, 0.7]),
    ...                            np.array([True, False, True, True]), k=1)
    >>> d.precision.tolist(), d.fraud_cards.tolist()
    ([1.0, 1.0], [1, 1])
    """
    day = np.asarray(day, dtype=np.int64)
    card = np.asarray(card, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    week = np.zeros_like(day) if week is None else np.asarray(week, dtype=np.int64)
    if day.shape[0] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return DailyPrecision(empty, np.zeros(0), empty)
    # One group per (day, card): its max score and whether it had a fraud.
    order = np.lexsort((card, day))
    d, c, w = day[order], card[order], week[order]
    starts = np.flatnonzero(np.r_[True, (d[1:] != d[:-1]) | (c[1:] != c[:-1])])
    g_day, g_card, g_week = d[starts], c[starts], w[starts]
    g_score = np.maximum.reduceat(scores[order], starts)
    g_fraud = np.logical_or.reduceat(labels[order], starts)
    days = np.unique(g_day)
    precision = np.zeros(days.shape[0])
    fraud_cards = np.zeros(days.shape[0], dtype=np.int64)
    detected: set[int] = set()
    current_week: int | None = None
    bounds = np.searchsorted(g_day, np.append(days, days[-1] + 1))
    for i in range(days.shape[0]):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        if current_week != int(g_week[lo]):
            current_week, detected = int(g_week[lo]), set()
        cards, score, fraud = g_card[lo:hi], g_score[lo:hi], g_fraud[lo:hi]
        if detected:
            keep = ~np.isin(cards, np.fromiter(detected, np.int64, len(detected)))
            cards, score, fraud = cards[keep], score[keep], fraud[keep]
        fraud_cards[i] = int(fraud.sum())
        top = np.lexsort((cards, -score))[:k]
        hits = cards[top][fraud[top]]
        precision[i] = hits.shape[0] / k
        if remove_detected:
            detected.update(hits.tolist())
    return DailyPrecision(days, precision, fraud_cards)


def assess(
    scores: np.ndarray,
    labels: np.ndarray,
    day: np.ndarray,
    card: np.ndarray,
    week: np.ndarray,
    k: int = 100,
) -> dict[str, float]:
    """ROC AUC, average precision and card precision@k of one scorer on test transactions.

    The arrays hold the test transactions only (see :meth:`Assessment.test_mask`);
    ``week`` is their test week. AUC and average precision are over all of them
    (``*_weekly_mean``: the mean over weeks, what the handbook's prequential
    validation averages), card precision@k is the mean over days.

    Examples
    --------
    Card 1 is found on day 0 (top card, fraud), so on day 1 it is left out and
    card 2 (0.3, fraud) is the top card.

    >>> m = assess(np.array([0.9, 0.1, 0.8, 0.3]), np.array([True, False, False, True]),
    ...            np.array([0, 0, 1, 1]), np.array([1, 2, 1, 2]), np.array([0, 0, 0, 0]), k=1)
    >>> m["roc_auc"], m["card_precision_at_k"]
    (0.75, 1.0)
    """
    labels = np.asarray(labels, dtype=bool)
    weeks = np.unique(week)
    weekly_auc = [roc_auc(scores[week == w], labels[week == w]) for w in weeks]
    weekly_ap = [average_precision(scores[week == w], labels[week == w]) for w in weeks]
    return {
        "n": int(labels.shape[0]),
        "frauds": int(labels.sum()),
        "roc_auc": roc_auc(scores, labels),
        "average_precision": average_precision(scores, labels),
        "card_precision_at_k": card_precision_per_day(day, card, scores, labels, k, week=week).mean,
        "roc_auc_weekly_mean": _nanmean(weekly_auc),
        "average_precision_weekly_mean": _nanmean(weekly_ap),
    }


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


# -- bootstrap over days ---------------------------------------------------------------------


class DayWeightedMetrics:
    """AUC and average precision of the test set for any integer weight of each day.

    A bootstrap over days draws days with replacement: a day drawn twice counts
    its transactions twice. Both metrics then reduce to small matrices over days,
    computed once:

    * AUC = ``w @ M @ w / (positives(w) * negatives(w))`` with ``M[d, e]`` the
      pairs (positive of day ``d``, negative of day ``e``) ranked right, ties
      counting one half;
    * AP = the mean over positives (weighted) of the precision at their score,
      ``(T @ w) / (N @ w)`` with ``T[i, e]`` / ``N[i, e]`` the positives / all
      transactions of day ``e`` scoring at least positive ``i``.

    With every weight 1 they equal :func:`roc_auc` and :func:`average_precision`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> day, labels = rng.integers(0, 5, 300), rng.random(300) < 0.2
    >>> scores = np.round(labels + rng.normal(0, 1, 300), 1)  # with ties
    >>> m = DayWeightedMetrics(scores, labels, day)
    >>> ones = np.ones(5)
    >>> bool(np.isclose(m.roc_auc(ones), roc_auc(scores, labels)))
    True
    >>> bool(np.isclose(m.average_precision(ones), average_precision(scores, labels)))
    True
    """

    def __init__(self, scores: np.ndarray, labels: np.ndarray, day: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        labels = np.asarray(labels, dtype=bool)
        self.days, index = np.unique(np.asarray(day, dtype=np.int64), return_inverse=True)
        n_days = self.days.shape[0]
        pos_scores, pos_day = scores[labels], index[labels]
        self.pos_per_day = np.bincount(pos_day, minlength=n_days).astype(np.float64)
        self.neg_per_day = np.bincount(index[~labels], minlength=n_days).astype(np.float64)
        self._pos_day = pos_day
        below = np.zeros((pos_scores.shape[0], n_days))  # negatives of day e below (ties 1/2)
        at_least_pos = np.zeros((pos_scores.shape[0], n_days))
        at_least_all = np.zeros((pos_scores.shape[0], n_days))
        for e in range(n_days):
            neg = np.sort(scores[~labels & (index == e)])
            pos = np.sort(scores[labels & (index == e)])
            lo = np.searchsorted(neg, pos_scores, side="left")
            hi = np.searchsorted(neg, pos_scores, side="right")
            below[:, e] = lo + (hi - lo) / 2.0
            n_pos_ge = pos.shape[0] - np.searchsorted(pos, pos_scores, side="left")
            at_least_pos[:, e] = n_pos_ge
            at_least_all[:, e] = n_pos_ge + neg.shape[0] - lo
        # M[d, e]: sum over the positives of day d.
        self._pairs = np.zeros((n_days, n_days))
        np.add.at(self._pairs, pos_day, below)
        self._tp, self._seen = at_least_pos, at_least_all

    def roc_auc(self, w: np.ndarray) -> float:
        """AUC with day weights ``w`` (one per day of :attr:`days`)."""
        pos, neg = float(self.pos_per_day @ w), float(self.neg_per_day @ w)
        if pos == 0 or neg == 0:
            return float("nan")
        return float(w @ self._pairs @ w) / (pos * neg)

    def average_precision(self, w: np.ndarray) -> float:
        """Average precision with day weights ``w``."""
        pos = float(self.pos_per_day @ w)
        if pos == 0:
            return float("nan")
        seen = self._seen @ w
        precision = np.divide(self._tp @ w, seen, out=np.zeros_like(seen), where=seen > 0)
        return float((w[self._pos_day] * precision).sum() / pos)


def bootstrap_over_days(
    scores: np.ndarray,
    labels: np.ndarray,
    day: np.ndarray,
    daily_precision: DailyPrecision,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of AUC, AP and CP@k, resampling the test days.

    Each resample draws as many days as there are, with replacement
    (:class:`DayWeightedMetrics`). The daily card precision of each day is kept
    as computed (its detected-card removal depends on the days before it).
    Deterministic for a given ``seed``.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> day = np.repeat(np.arange(10), 50)
    >>> labels = rng.random(500) < 0.2
    >>> scores = labels + rng.normal(0, 0.8, 500)
    >>> cp = card_precision_per_day(day, np.arange(500), scores, labels, k=5)
    >>> ci = bootstrap_over_days(scores, labels, day, cp, n_boot=200)
    >>> lo, hi = ci["roc_auc"]
    >>> bool(lo < roc_auc(scores, labels) < hi)
    True
    """
    metrics = DayWeightedMetrics(scores, labels, day)
    days = metrics.days
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, days.shape[0], size=(n_boot, days.shape[0]))
    weights = np.stack([np.bincount(row, minlength=days.shape[0]) for row in draws])
    cp_by_day = dict(
        zip(daily_precision.days.tolist(), daily_precision.precision.tolist(), strict=True)
    )
    cp = np.array([cp_by_day.get(int(d), np.nan) for d in days])
    has_cp = np.isfinite(cp)
    values: dict[str, list[float]] = {
        "roc_auc": [],
        "average_precision": [],
        "card_precision_at_k": [],
    }
    for w in weights.astype(np.float64):
        values["roc_auc"].append(metrics.roc_auc(w))
        values["average_precision"].append(metrics.average_precision(w))
        total = w[has_cp].sum()
        values["card_precision_at_k"].append(
            float((cp[has_cp] * w[has_cp]).sum() / total) if total else float("nan")
        )
    tail = (1.0 - level) / 2.0 * 100.0
    out = {}
    for name, series in values.items():
        finite = np.array([v for v in series if np.isfinite(v)])
        if finite.shape[0] == 0:
            out[name] = (float("nan"), float("nan"))
        else:
            lo, hi = np.percentile(finite, [tail, 100.0 - tail])
            out[name] = (float(lo), float(hi))
    return out
