"""Progressive (prequential) metrics of the learner.

Prequential: every transaction is scored *before* its label is learnt, and the
metrics are computed on those stored scores. :class:`ProgressiveMetrics` keeps
the last ``window`` (score, label) pairs in a ring buffer and computes ROC AUC,
average precision and precision/recall at the alert threshold with numpy.
"""

from __future__ import annotations

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
