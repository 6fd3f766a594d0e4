"""Progressive (prequential) metrics, and a synthetic stream to compare models.

Prequential: every transaction is scored *before* its label is learnt, and the
metrics are computed on those stored scores. :class:`ProgressiveMetrics` keeps
the last ``window`` (score, label) pairs in a ring buffer and computes ROC AUC,
average precision and precision/recall at the alert threshold with numpy.

:func:`synthetic_stream` and :func:`compare` reproduce the model comparison
written in :mod:`service.model` (``fraudstream model compare``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN without both classes.

    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
    0.75
    >>> roc_auc(np.array([0.5, 0.5]), np.array([False, True]))
    0.5
    """
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U with average ranks for ties.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = float(avg_rank[inverse][labels].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision, step-wise as scikit-learn computes it; NaN without positives.

    >>> average_precision(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
    0.8333333333333333
    """
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="stable")
    s = np.asarray(scores)[order]
    y = labels[order]
    # One point per distinct score: the last index of each run of equal scores.
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


class ProgressiveMetrics:
    """Metrics over the last ``window`` labelled scores.

    Parameters
    ----------
    window
        Number of most recent (score, label) pairs kept.
    threshold
        Score at or above which a transaction counts as alerted.

    Examples
    --------
    >>> m = ProgressiveMetrics(window=3, threshold=0.5)
    >>> for s, y in [(0.9, True), (0.2, False), (0.6, False), (0.7, True)]:
    ...     m.update(s, y)
    >>> r = m.report()
    >>> r["n"], r["positives"], r["precision"], r["recall"], r["roc_auc"]
    (3, 1, 0.5, 1.0, 1.0)
    >>> m.seen
    4
    """

    def __init__(self, window: int = 10_000, threshold: float = 0.5) -> None:
        if window < 1:
            raise ValueError("window must be ≥ 1")
        self.window = window
        self.threshold = threshold
        self._scores = np.zeros(window, dtype=np.float64)
        self._labels = np.zeros(window, dtype=bool)
        self.seen = 0  # all updates ever, not only those in the window

    def update(self, score: float, label: bool) -> None:
        """Record one score given before the label was known."""
        i = self.seen % self.window
        self._scores[i] = score
        self._labels[i] = label
        self.seen += 1

    def update_many(self, scores: Sequence[float], labels: Sequence[bool]) -> None:
        """Record several (score, label) pairs in order."""
        for s, y in zip(scores, labels, strict=True):
            self.update(s, y)

    def report(self) -> dict[str, float | int]:
        """Current metrics of the window (NaN where undefined)."""
        n = min(self.seen, self.window)
        s, y = self._scores[:n], self._labels[:n]
        alerted = s >= self.threshold
        tp = int((alerted & y).sum())
        n_alerts = int(alerted.sum())
        positives = int(y.sum())
        return {
            "n": n,
            "seen": self.seen,
            "positives": positives,
            "alerts": n_alerts,
            "roc_auc": roc_auc(s, y),
            "average_precision": average_precision(s, y),
            "precision": tp / n_alerts if n_alerts else float("nan"),
            "recall": tp / positives if positives else float("nan"),
            "threshold": self.threshold,
        }


#: Feature names of :func:`synthetic_stream`, the reference store's names.
SYNTHETIC_FEATURES: tuple[str, ...] = (
    "amount",
    "card_amount_mean_30d",
    "card_amount_zscore",
    "card_tx_count_1h",
    "card_seconds_since_prev",
    "card_new_terminal",
    "card_distance_km_prev",
    "card_speed_kmh_prev",
    "card_fraud_labels_30d",
    "terminal_tx_count_1d",
    "terminal_fraud_rate_7d",
    "hour_of_day",
    "is_night",
    "is_weekend",
)


def synthetic_stream(
    n: int, seed: int = 7, fraud_rate: float = 0.015
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """A stream of feature rows with planted fraud patterns.

    Four fraud scenarios, each overlapping with some genuine behaviour so that
    no single rule is perfect: a large amount for the card, a burst of
    transactions, a compromised terminal (high recent fraud rate, new to the
    card), impossible travel.

    Returns
    -------
    names, X, y
        Feature names, a ``float64`` matrix ``(n, len(names))`` and ``bool`` labels.

    Examples
    --------
    >>> names, X, y = synthetic_stream(1000, seed=1)
    >>> X.shape == (1000, len(names)), bool(0 < y.sum() < 60)
    (True, True)
    """
    rng = np.random.default_rng(seed)
    y = rng.random(n) < fraud_rate
    mean30 = rng.lognormal(3.5, 0.6, n)
    zscore = rng.normal(0.0, 1.0, n)
    count1h = rng.poisson(0.3, n).astype(float)
    new_terminal = (rng.random(n) < 0.15).astype(float)
    term_rate = rng.beta(0.5, 60.0, n)
    speed = rng.exponential(20.0, n)
    hour = rng.integers(0, 24, n).astype(float)
    fraud_labels = (rng.random(n) < 0.01).astype(float)
    # Genuine outliers so the patterns overlap.
    zscore += np.where(rng.random(n) < 0.03, rng.uniform(2.0, 5.0, n), 0.0)
    count1h += np.where(rng.random(n) < 0.02, rng.integers(3, 8, n), 0)
    speed += np.where(rng.random(n) < 0.01, rng.uniform(300, 1500, n), 0.0)

    scenario = rng.integers(0, 4, n)
    f = y
    zscore = np.where(f & (scenario == 0), rng.uniform(2.5, 7.0, n), zscore)
    count1h = np.where(f & (scenario == 1), rng.integers(3, 12, n), count1h)
    term_rate = np.where(f & (scenario == 2), rng.uniform(0.02, 0.4, n), term_rate)
    new_terminal = np.where(f & (scenario == 2), (rng.random(n) < 0.8), new_terminal)
    speed = np.where(f & (scenario == 3), rng.uniform(200, 2000, n), speed)
    hour = np.where(f & (rng.random(n) < 0.4), rng.integers(0, 6, n), hour)
    fraud_labels = np.where(f & (rng.random(n) < 0.2), 1.0, fraud_labels)

    amount = np.maximum(0.5, mean30 * (1.0 + 0.4 * zscore))
    seconds_prev = np.where(count1h > 0, rng.exponential(3600.0 / (1 + count1h)), 86400.0)
    distance = speed * seconds_prev / 3600.0
    columns = {
        "amount": amount,
        "card_amount_mean_30d": mean30,
        "card_amount_zscore": zscore,
        "card_tx_count_1h": count1h,
        "card_seconds_since_prev": seconds_prev,
        "card_new_terminal": new_terminal.astype(float),
        "card_distance_km_prev": distance,
        "card_speed_kmh_prev": speed,
        "card_fraud_labels_30d": fraud_labels,
        "terminal_tx_count_1d": rng.poisson(40, n).astype(float),
        "terminal_fraud_rate_7d": term_rate,
        "hour_of_day": hour,
        "is_night": (hour < 6).astype(float),
        "is_weekend": (rng.random(n) < 2 / 7).astype(float),
    }
    X = np.column_stack([columns[c] for c in SYNTHETIC_FEATURES]).astype(np.float64)
    return SYNTHETIC_FEATURES, X, y


def compare(
    model_names: Sequence[str],
    n: int = 50_000,
    delay: int = 3_000,
    batch: int = 500,
    seed: int = 7,
) -> dict[str, dict[str, float]]:
    """Prequential comparison of catalogue models on :func:`synthetic_stream`.

    Transactions are scored in batches with ``score_many`` (the hot path); the
    label of transaction ``i`` is learnt only once transaction ``i + delay``
    has been scored, so no score ever benefits from its own label.
    """
    from service.model import FraudModel  # local: model imports nothing from here

    names, X, y = synthetic_stream(n, seed=seed)
    results: dict[str, dict[str, float]] = {}
    for name in model_names:
        model = FraudModel(name, names)
        scores = np.empty(n)
        learnt = 0
        learn_s = score_s = 0.0
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            t0 = time.perf_counter()
            scores[start:stop] = model.proba_many(X[start:stop])
            score_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            while learnt < stop - delay:
                model.learn_one(dict(zip(names, X[learnt].tolist(), strict=True)), bool(y[learnt]))
                learnt += 1
            learn_s += time.perf_counter() - t0
        results[name] = {
            "roc_auc": roc_auc(scores, y),
            "average_precision": average_precision(scores, y),
            "learn_us": 1e6 * learn_s / max(1, learnt),
            "score_us": 1e6 * score_s / n,
        }
    return results
