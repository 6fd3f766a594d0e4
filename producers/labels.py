"""When a transaction's verdict becomes known: the label-delay model.

A label is never sent with its transaction. By default every transaction is
labelled ``delay_s`` (7 days) of event time after it happened: a genuine one
as ``cleared`` (no chargeback in the period), a fraud as ``chargeback``. With
probability ``early_fraud_prob`` a fraud is found earlier (the customer calls,
an analyst confirms an alert), uniformly between ``early_min_s`` and
``delay_s``, with source ``analyst``.

Examples
--------
>>> import numpy as np
>>> delay = LabelDelay(delay_s=100.0, early_fraud_prob=1.0, early_min_s=10.0)
>>> ms, source = delay.sample(np.random.default_rng(0), np.array([False, True]))
>>> int(ms[0]), bool(10_000 <= ms[1] <= 100_000), [SOURCES[s] for s in source]
(100000, True, ['cleared', 'analyst'])
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from fraudstream.service.settings import DAY_S

#: Label ``source`` by code (index).
SOURCES = ("cleared", "chargeback", "analyst")
_CLEARED, _CHARGEBACK, _ANALYST = range(3)

T = TypeVar("T")


@dataclass(frozen=True)
class LabelDelay:
    """Delay between a transaction and its label, in event time.

    Parameters
    ----------
    delay_s
        Delay of every label not found early (default 7 days).
    early_fraud_prob
        Probability that a fraud is found before ``delay_s`` (default 0.3).
    early_min_s
        Earliest an early fraud label arrives (default 1 hour).
    """

    delay_s: float = 7 * DAY_S
    early_fraud_prob: float = 0.3
    early_min_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.delay_s <= 0:
            raise ValueError(
                "label delay must be positive: a label never comes with its transaction"
            )
        if not 0 <= self.early_fraud_prob <= 1:
            raise ValueError("early_fraud_prob must be within [0, 1]")
        if not 0 < self.early_min_s <= self.delay_s:
            raise ValueError("early_min_s must be within (0, delay_s]")

    def sample(
        self, rng: np.random.Generator, is_fraud: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Delay in milliseconds (>= 1) and source code of each label.

        Draws the same number of random values whatever the labels, so the
        delays of a seeded run do not depend on which rows are frauds.
        """
        n = is_fraud.shape[0]
        early_s = rng.uniform(self.early_min_s, self.delay_s, size=n)
        early = (rng.random(n) < self.early_fraud_prob) & is_fraud
        delay_ms = np.where(early, early_s, self.delay_s) * 1000
        delay_ms = np.maximum(np.round(delay_ms), 1).astype(np.int64)
        source = np.where(is_fraud, _CHARGEBACK, _CLEARED)
        source = np.where(early, _ANALYST, source).astype(np.int8)
        return delay_ms, source

    def sample_one(self, rng: random.Random, is_fraud: bool) -> tuple[int, str]:
        """Delay in milliseconds and source of one label (scalar, for row-by-row producers).

        >>> LabelDelay(early_fraud_prob=0.0).sample_one(random.Random(0), True)
        (604800000, 'chargeback')
        """
        early = rng.random() < self.early_fraud_prob
        early_s = rng.uniform(self.early_min_s, self.delay_s)
        if is_fraud and early:
            return max(1, round(early_s * 1000)), SOURCES[_ANALYST]
        return max(1, round(self.delay_s * 1000)), SOURCES[_CHARGEBACK if is_fraud else _CLEARED]


class DelayedQueue(Generic[T]):
    """Items held back until the event clock reaches their due time.

    Used by the file producer: each labelled row's label is pushed when its
    transaction is sent, and popped once a later transaction's event time
    passes the label's due time, so a label always follows its transaction.

    >>> q: DelayedQueue[str] = DelayedQueue()
    >>> q.push(20, "b"); q.push(10, "a")
    >>> q.pop_due(15), q.pop_due(99), len(q)
    ([(10, 'a')], [(20, 'b')], 0)
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, T]] = []
        self._seq = 0  # ties keep insertion order

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due_ms: int, item: T) -> None:
        """Hold ``item`` until ``due_ms``."""
        heapq.heappush(self._heap, (due_ms, self._seq, item))
        self._seq += 1

    def pop_due(self, now_ms: int) -> list[tuple[int, T]]:
        """Items due at or before ``now_ms`` with their due times, earliest first."""
        out: list[tuple[int, T]] = []
        while self._heap and self._heap[0][0] <= now_ms:
            due, _, item = heapq.heappop(self._heap)
            out.append((due, item))
        return out

    def pop_all(self) -> list[tuple[int, T]]:
        """Every remaining item with its due time, earliest first."""
        out = [(due, item) for due, _, item in sorted(self._heap, key=lambda e: e[:2])]
        self._heap.clear()
        return out
