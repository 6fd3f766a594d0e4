"""Deciding which scores become alerts, and encoding alerts and score records.

Two policies:

* :class:`ThresholdPolicy` alerts on every score at or above a fixed threshold.
* :class:`BudgetPolicy` keeps about ``k`` alerts per day, because a fraud team
  can only review so many cards: the threshold is the ``1 - k / n`` quantile
  of the recent scores (``n`` transactions per day), re-estimated every batch
  over a ring buffer. Several scorers each see a share of the traffic with the
  same score distribution, so together they still raise about ``k``.

Examples
--------
>>> import numpy as np
>>> ThresholdPolicy(0.5).decide(np.array([0.2, 0.5, 0.9]))[0].tolist()
[False, True, True]
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import orjson

from fraudstream.service.schemas import SCHEMA_VERSION, Alert, Reason, Scorer


class DecisionPolicy(Protocol):
    """Turns a batch of scores into alert flags and the thresholds used."""

    def decide(self, scores: np.ndarray) -> tuple[np.ndarray, float]:
        """Alert mask and threshold for this batch."""
        ...


class ThresholdPolicy:
    """Alert when ``score >= threshold``."""

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def decide(self, scores: np.ndarray) -> tuple[np.ndarray, float]:
        return scores >= self.threshold, self.threshold


class BudgetPolicy:
    """Alert on about ``budget_per_day`` of ``expected_per_day`` transactions.

    Parameters
    ----------
    budget_per_day
        Alerts the team can review per day.
    expected_per_day
        Transactions per day (all scorers together).
    fallback_threshold
        Used until ``min_history`` scores have been seen.
    history
        Size of the ring buffer of recent scores.

    Examples
    --------
    >>> policy = BudgetPolicy(10, 1000, fallback_threshold=0.5, min_history=100)
    >>> rng = np.random.default_rng(0)
    >>> flags = [policy.decide(rng.random(500))[0].sum() for _ in range(20)]
    >>> bool(3 <= np.mean(flags[2:]) <= 8)   # about 1% of 500 per batch
    True
    """

    def __init__(
        self,
        budget_per_day: int,
        expected_per_day: int,
        *,
        fallback_threshold: float,
        history: int = 100_000,
        min_history: int = 1000,
    ) -> None:
        self.quantile = max(0.0, 1.0 - budget_per_day / expected_per_day)
        self.fallback_threshold = fallback_threshold
        self.min_history = min_history
        self._ring = np.zeros(history)
        self._filled = 0
        self._cursor = 0

    def _remember(self, scores: np.ndarray) -> None:
        size = len(self._ring)
        scores = scores[-size:]
        end = self._cursor + len(scores)
        if end <= size:
            self._ring[self._cursor : end] = scores
        else:
            split = size - self._cursor
            self._ring[self._cursor :] = scores[:split]
            self._ring[: end - size] = scores[split:]
        self._cursor = end % size
        self._filled = min(size, self._filled + len(scores))

    def decide(self, scores: np.ndarray) -> tuple[np.ndarray, float]:
        self._remember(scores)
        if self._filled < self.min_history:
            threshold = self.fallback_threshold
        else:
            threshold = float(np.quantile(self._ring[: self._filled], self.quantile))
        # Ties at a degenerate quantile (e.g. many equal scores) must not flood the team.
        return scores > threshold if threshold > 0 else scores >= 1.0, threshold


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC).isoformat(timespec="milliseconds")


def encode_score_record(
    *,
    transaction_id: str,
    card_id: str,
    terminal_id: str,
    amount: float,
    event_time_ms: int,
    score: float,
    threshold: float,
    is_alert: bool,
    scorer: Scorer,
    model_version: int,
    reasons: list[Reason],
    scored_at_ms: float,
    latency_ms: float,
) -> bytes:
    """JSON bytes of a :class:`fraudstream.service.schemas.ScoreRecord` (or an :class:`Alert` when
    ``is_alert``), built with orjson directly because this runs for every decision.

    >>> import orjson
    >>> raw = encode_score_record(transaction_id="t1", card_id="c", terminal_id="m",
    ...     amount=5.0, event_time_ms=0, score=0.9, threshold=0.5, is_alert=True,
    ...     scorer="model", model_version=3, reasons=[], scored_at_ms=1000, latency_ms=2.0)
    >>> Alert.model_validate_json(raw).model_version
    3
    """
    record: dict[str, object] = {
        "transaction_id": transaction_id,
        "card_id": card_id,
        "terminal_id": terminal_id,
        "amount": amount,
        "event_time": _iso(event_time_ms),
        "score": round(score, 6),
        "threshold": round(threshold, 6),
        "is_alert": is_alert,
        "scorer": scorer,
        "model_version": model_version,
        "reasons": [
            {
                "feature": r.feature,
                "value": round(r.value, 6),
                "contribution": round(r.contribution, 6),
            }
            for r in reasons
        ],
        "scored_at": _iso(scored_at_ms),
        "latency_ms": round(latency_ms, 3),
        "schema_version": SCHEMA_VERSION,
    }
    if is_alert:
        record["alert_id"] = Alert.id_for(transaction_id)
    return orjson.dumps(record)
