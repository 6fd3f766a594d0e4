"""The rules prior: a transparent points scorer used before the model has learnt enough.

Until the model has learnt ``min_labels_for_model`` labels (with at least one
fraud), a freshly started service has no model worth the name. The prior adds
points for well-known fraud signals, and turns the points into a probability
with a fixed logistic: ``p = sigmoid(points - MIDPOINT)``, so 0 points give
about 0.007 and ``MIDPOINT`` points give 0.5. The reasons of a score are the
rules that fired, with their points. Rules whose feature is absent from the
feature set are skipped, so the prior works with any feature store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fraudstream.service.model import sigmoid
from fraudstream.service.schemas import Reason

#: Points at which the probability is 0.5.
MIDPOINT = 5.0


@dataclass(frozen=True, slots=True)
class Rule:
    """``points`` when ``feature >= threshold``."""

    feature: str
    threshold: float
    points: float
    why: str


#: The default rules; points are deliberately round so an analyst can add them up.
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("card_amount_zscore", 3.0, 3.0, "amount far above the card's 30-day mean"),
    Rule("amount", 1000.0, 1.5, "large absolute amount"),
    Rule("card_tx_count_1h", 5.0, 2.5, "burst of transactions within an hour"),
    Rule("card_new_terminal", 0.5, 1.0, "terminal new to the card"),
    Rule("terminal_fraud_rate_14d", 0.2, 3.0, "terminal with many frauds among its known outcomes"),
    Rule("card_speed_kmh_prev", 900.0, 3.0, "impossible travel since the previous transaction"),
    Rule("card_fraud_labels_30d", 1.0, 2.0, "card with a confirmed fraud in 30 days"),
    Rule("is_night", 0.5, 0.5, "night-time transaction"),
)


class RulesPrior:
    """Points-based scorer over the columns of a feature matrix.

    Parameters
    ----------
    feature_names
        Column names of the matrices given to :meth:`score_many`.
    rules
        Rules to apply; those whose feature is not in ``feature_names`` are ignored.

    Examples
    --------
    >>> prior = RulesPrior(["amount", "card_amount_zscore", "card_tx_count_1h"])
    >>> p, reasons = prior.score_many(np.array([[20.0, 0.1, 1.0], [1500.0, 4.2, 6.0]]))
    >>> p.round(3).tolist()
    [0.007, 0.881]
    >>> [(r.feature, r.contribution) for r in reasons[1]]
    [('card_amount_zscore', 3.0), ('card_tx_count_1h', 2.5), ('amount', 1.5)]
    >>> reasons[0]
    []
    """

    def __init__(self, feature_names: Sequence[str], rules: Sequence[Rule] = DEFAULT_RULES) -> None:
        self.feature_names = tuple(feature_names)
        index = {name: i for i, name in enumerate(self.feature_names)}
        self.rules = tuple(r for r in rules if r.feature in index)
        self._cols = np.array([index[r.feature] for r in self.rules], dtype=np.intp)
        self._thresholds = np.array([r.threshold for r in self.rules], dtype=np.float64)
        self._points = np.array([r.points for r in self.rules], dtype=np.float64)

    def points_many(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points per row and the ``(n, n_rules)`` boolean matrix of rules that fired."""
        X = np.asarray(X, dtype=np.float64)
        # NaN compares False: a missing feature never fires a rule.
        fired = X[:, self._cols] >= self._thresholds
        return fired @ self._points, fired

    def score_many(
        self, X: np.ndarray, reasons_at: float = 0.0
    ) -> tuple[np.ndarray, list[list[Reason]]]:
        """Probabilities, and the fired rules of rows whose probability ≥ ``reasons_at``."""
        X = np.asarray(X, dtype=np.float64)
        points, fired = self.points_many(X)
        p = sigmoid(points - MIDPOINT)
        reasons: list[list[Reason]] = [[] for _ in range(len(X))]
        # Stable order by points, largest first, so the strongest signal leads.
        order = np.argsort(-self._points, kind="stable")
        for row in np.flatnonzero((p >= reasons_at) & fired.any(axis=1)).tolist():
            reasons[row] = [
                Reason.model_construct(
                    feature=self.rules[j].feature,
                    value=float(X[row, self._cols[j]]),
                    contribution=float(self._points[j]),
                )
                for j in order.tolist()
                if fired[row, j]
            ]
        return p, reasons

    def predict_proba_one(self, x: Mapping[str, float]) -> dict[bool, float]:
        """River-style single prediction (``x`` is not modified)."""
        row = np.array([[float(x.get(f, np.nan)) for f in self.feature_names]])
        p = float(self.score_many(row, reasons_at=2.0)[0][0])
        return {False: 1.0 - p, True: p}
