"""A plain-Python, in-memory feature store: the oracle of the tests.

:class:`ReferenceFeatureStore` keeps raw events in lists and answers every feature
by scanning them, one transaction at a time, exactly as the semantics in
:mod:`fraudstream.service.features.definitions` are written. It is slow on purpose (clear
beats fast here) and is also the in-memory store of pure unit tests.

Examples
--------
>>> from fraudstream.service.schemas import Transaction
>>> store = ReferenceFeatureStore(FeatureConfig(windows_s=(3600,), terminal_window_days=(1,)))
>>> tx = [Transaction(transaction_id=f"t{i}", card_id="c", terminal_id="m", amount=10.0 * (i + 1),
...                   timestamp=1522540800000 + i * 60_000) for i in range(3)]
>>> batch = store.update_and_compute(tx)
>>> col = batch.names.index("card_amount_sum_1h")
>>> batch.values[:, col].tolist()
[10.0, 30.0, 60.0]
>>> store.update_and_compute(tx[:1]).is_duplicate.tolist()
[True]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fraudstream.service.features.definitions import (
    DAY_MS,
    LABEL_WINDOW_S,
    MIN_SPEED_HOURS,
    MIN_STD,
    FeatureConfig,
    StoreCounters,
    calendar_features,
    feature_names,
    haversine_km,
    no_previous_s,
    utc_day,
)
from fraudstream.service.features.store import FeatureBatch, LabelFact
from fraudstream.service.schemas import Transaction


def _f32(value: float) -> float:
    """``value`` as the stores keep it (float32)."""
    return float(np.float32(value))


@dataclass(slots=True)
class _Event:
    """One counted card transaction, as stored."""

    transaction_id: str
    ts_ms: int
    amount: float
    lat: float | None
    lon: float | None
    terminal_id: str
    fraud: bool = False


@dataclass(slots=True)
class _Terminal:
    """Day buckets of one terminal: ``slots`` buckets, day ``k`` in bucket ``k % slots``.

    A bucket holds one day at a time: a later day takes the bucket over (its old
    counts are gone), an earlier day than the bucket's is not counted.
    """

    # k % slots -> [day, transactions, fraud labels]
    buckets: dict[int, list[int]] = field(default_factory=dict)

    def add(self, day: int, slots: int, tx: int, frauds: int) -> bool:
        """Count in the bucket of ``day``; False when the bucket holds a later day."""
        bucket = self.buckets.get(day % slots)
        if bucket is None or bucket[0] < day:
            self.buckets[day % slots] = [day, tx, frauds]
        elif bucket[0] == day:
            bucket[1] += tx
            bucket[2] += frauds
        else:
            return False
        return True

    def window(self, day: int, days: int) -> tuple[int, int]:
        """Transactions and fraud labels of days ``(day - days, day]``."""
        inside = [b for b in self.buckets.values() if day - days < b[0] <= day]
        return sum(b[1] for b in inside), sum(b[2] for b in inside)


class ReferenceFeatureStore:
    """Obviously-correct in-memory :class:`~fraudstream.service.features.store.FeatureStore`.

    Parameters
    ----------
    config
        Windows, lateness and (unused here) key prefix.
    """

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self._names = feature_names(config)
        self._cards: dict[str, list[_Event]] = {}
        self._terminals: dict[str, _Terminal] = {}
        self.counters = StoreCounters()

    @property
    def names(self) -> tuple[str, ...]:
        """Feature names in column order."""
        return self._names

    def update_and_compute(self, transactions: Sequence[Transaction]) -> FeatureBatch:
        """Count each new transaction once and return every transaction's features."""
        rows: list[list[float]] = []
        duplicate: list[bool] = []
        for tx in transactions:
            row, is_dup = self._one(tx)
            rows.append(row)
            duplicate.append(is_dup)
        values = np.array(rows, dtype=np.float64).reshape(len(rows), len(self._names))
        return FeatureBatch(self._names, values, np.array(duplicate, dtype=bool))

    def record_labels(self, labels: Sequence[LabelFact]) -> None:
        """Count fraud labels for the card (flag on its record) and terminal (day bucket)."""
        slots = self.config.terminal_slots
        for label in labels:
            if not label.is_fraud:
                continue
            event = self._find(self._cards.get(label.card_id, []), label)
            if event is not None:
                if event.fraud:
                    continue  # already counted: a repeated label is not counted twice
                event.fraud = True
            terminal = self._terminals.setdefault(label.terminal_id, _Terminal())
            terminal.add(utc_day(label.event_time_ms), slots, 0, 1)

    # -- one transaction --------------------------------------------------------------

    @staticmethod
    def _find(events: list[_Event], label: LabelFact) -> _Event | None:
        for event in events:
            if event.transaction_id == label.transaction_id and event.ts_ms == label.event_time_ms:
                return event
        return None

    def _one(self, tx: Transaction) -> tuple[list[float], bool]:
        config = self.config
        t = tx.event_time_ms
        has_location = tx.lat is not None and tx.lon is not None
        current = _Event(
            transaction_id=tx.transaction_id,
            ts_ms=t,
            amount=_f32(tx.amount),
            lat=_f32(tx.lat) if tx.lat is not None and has_location else None,
            lon=_f32(tx.lon) if tx.lon is not None and has_location else None,
            terminal_id=tx.terminal_id,
        )
        events = self._cards.setdefault(tx.card_id, [])
        retention_ms = config.retention_s * 1000

        position: int | None = None  # index of the current transaction in `events`
        is_dup = False
        if events and t <= events[-1].ts_ms - retention_ms:
            self.counters.too_late += 1
        else:
            for i, event in enumerate(events):
                if event.transaction_id == tx.transaction_id and event.ts_ms == t:
                    position, is_dup = i, True
                    break
            if is_dup:
                self.counters.duplicates += 1
            else:
                position = self._insert(events, current)
                self._count_at_terminal(tx.terminal_id, utc_day(t))
                self.counters.inserted += 1

        # The as-of view: stored events, plus the current one when it was not stored.
        if position is None:
            position = sum(1 for e in events if e.ts_ms <= t)
            view = [*events[:position], current, *events[position:]]
        else:
            view = events
        return self._features(tx, view, position), is_dup

    def _insert(self, events: list[_Event], current: _Event) -> int:
        """Insert after every event with ``ts <= t``, trim, return the new position."""
        position = len(events)
        while position > 0 and events[position - 1].ts_ms > current.ts_ms:
            position -= 1
        events.insert(position, current)
        cutoff = events[-1].ts_ms - self.config.retention_s * 1000
        trimmed = 0
        while events[trimmed].ts_ms <= cutoff:
            trimmed += 1
        del events[:trimmed]
        return position - trimmed

    def _count_at_terminal(self, terminal_id: str, day: int) -> None:
        terminal = self._terminals.setdefault(terminal_id, _Terminal())
        if not terminal.add(day, self.config.terminal_slots, 1, 0):
            self.counters.terminal_dropped += 1

    def _features(self, tx: Transaction, view: list[_Event], position: int) -> list[float]:
        config = self.config
        t = tx.event_time_ms
        current = view[position]
        row: list[float] = []
        for w in config.windows_s:
            in_window = [e.amount for e in view if t - w * 1000 < e.ts_ms <= t]
            row += [float(len(in_window)), sum(in_window), sum(in_window) / len(in_window)]

        earlier = view[:position]
        previous = earlier[-1] if earlier else None
        row.append((t - previous.ts_ms) / 1000.0 if previous else no_previous_s(config))

        longest_ms = max(config.windows_s) * 1000
        amounts = [e.amount for e in earlier if e.ts_ms > t - longest_ms]
        if len(amounts) >= 2:
            mean = sum(amounts) / len(amounts)
            std = math.sqrt(sum((a - mean) ** 2 for a in amounts) / len(amounts))
            row.append((tx.amount - mean) / max(std, MIN_STD))
        else:
            row.append(0.0)

        distance = 0.0
        if previous is not None and None not in (previous.lat, current.lat):
            assert previous.lat is not None and previous.lon is not None  # for mypy
            assert current.lat is not None and current.lon is not None
            distance = haversine_km(previous.lat, previous.lon, current.lat, current.lon)
        row.append(distance)
        if previous is not None and distance > 0:
            hours = max((t - previous.ts_ms) / 3_600_000, MIN_SPEED_HOURS)
            row.append(distance / hours)
        else:
            row.append(0.0)

        row.append(float(all(e.terminal_id != tx.terminal_id for e in earlier)))
        label_ms = LABEL_WINDOW_S * 1000
        row.append(float(sum(1 for e in view if e.fraud and t - label_ms < e.ts_ms <= t)))

        day = t // DAY_MS
        terminal = self._terminals.get(tx.terminal_id, _Terminal())
        for d in config.terminal_window_days:
            count, frauds = terminal.window(day, d)
            row += [float(count), float(frauds), min(1.0, frauds / count) if count else 0.0]

        row.append(tx.amount)
        row += calendar_features(t)
        return row
