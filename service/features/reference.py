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
    BIG_AMOUNT_FACTOR,
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
    labelled: bool = False
    fraud: bool = False


@dataclass(slots=True)
class _Terminal:
    """Day buckets of one terminal: ``slots`` buckets, day ``k`` in bucket ``k % slots``.

    A bucket holds one day at a time: a later day takes the bucket over (its old
    counts are gone), an earlier day than the bucket's is not counted.
    """

    # k % slots -> [day, transactions, labels, fraud labels]
    buckets: dict[int, list[int]] = field(default_factory=dict)

    def add(self, day: int, slots: int, tx: int, labels: int, frauds: int) -> bool:
        """Count in the bucket of ``day``; False when the bucket holds a later day."""
        bucket = self.buckets.get(day % slots)
        if bucket is None or bucket[0] < day:
            self.buckets[day % slots] = [day, tx, labels, frauds]
        elif bucket[0] == day:
            bucket[1] += tx
            bucket[2] += labels
            bucket[3] += frauds
        else:
            return False
        return True

    def days(self, first: int, last: int) -> list[list[int]]:
        """The buckets of days ``[first, last]``."""
        return [b for b in self.buckets.values() if first <= b[0] <= last]

    def window(self, day: int, days: int) -> tuple[int, int, int]:
        """Transactions, labels and fraud labels of days ``(day - days, day]``."""
        inside = self.days(day - days + 1, day)
        return sum(b[1] for b in inside), sum(b[2] for b in inside), sum(b[3] for b in inside)


class ReferenceFeatureStore:
    """Obviously-correct in-memory :class:`~fraudstream.service.features.store.FeatureStore`.

    Parameters
    ----------
    config
        Windows, lateness and (unused here) key prefix.
    first_found
        As the Redis store that claims ids (``claim_ttl_s``) before the
        transaction's snapshot is written: an id seen before is a duplicate
        whose features are those of its first occurrence, computed from what
        that found. Otherwise (default) a duplicate is computed from the state
        as it is now, as of its own event time.
    """

    def __init__(self, config: FeatureConfig, first_found: bool = False) -> None:
        self.config = config
        self._names = feature_names(config)
        self._cards: dict[str, list[_Event]] = {}
        self._terminals: dict[str, _Terminal] = {}
        self._first: dict[str, list[float]] | None = {} if first_found else None
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
        """Count labels for the terminal (day bucket) and fraud labels for the card (its record)."""
        slots = self.config.terminal_slots
        for label in labels:
            event = self._find(self._cards.get(label.card_id, []), label)
            if event is not None:
                if event.labelled:
                    continue  # already counted: a repeated label is not counted twice
                event.labelled = True
                event.fraud = label.is_fraud
            terminal = self._terminals.setdefault(label.terminal_id, _Terminal())
            terminal.add(utc_day(label.event_time_ms), slots, 0, 1, int(label.is_fraud))

    # -- one transaction --------------------------------------------------------------

    @staticmethod
    def _find(events: list[_Event], label: LabelFact) -> _Event | None:
        for event in events:
            if event.transaction_id == label.transaction_id and event.ts_ms == label.event_time_ms:
                return event
        return None

    def _one(self, tx: Transaction) -> tuple[list[float], bool]:
        if self._first is None:
            return self._count(tx)
        if tx.transaction_id in self._first:
            self.counters.duplicates += 1
            return self._first[tx.transaction_id], True
        features, is_dup = self._count(tx)
        self._first[tx.transaction_id] = features
        return features, is_dup

    def _count(self, tx: Transaction) -> tuple[list[float], bool]:
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
        is_dup = inserted = False
        if events and t <= events[-1].ts_ms - retention_ms:
            self.counters.too_late += 1
        else:
            for i, event in enumerate(events):
                if event.transaction_id == tx.transaction_id and event.ts_ms == t:
                    position, is_dup = i, True
                    break
            if is_dup:
                self.counters.duplicates += 1
            elif len(events) >= config.card_history_max and t < events[0].ts_ms:
                self.counters.too_late += 1  # older than every record of a full card
            else:
                position = self._insert(events, current)
                self._count_at_terminal(tx.terminal_id, utc_day(t))
                self.counters.inserted += 1
                inserted = True

        # The as-of view: stored events, plus the current one when it was not stored.
        if position is None:
            position = sum(1 for e in events if e.ts_ms <= t)
            view = [*events[:position], current, *events[position:]]
        else:
            view = events
        features = self._features(tx, view, position)
        if inserted:
            # Over the cap: the oldest records go.
            del events[: max(0, len(events) - config.card_history_max)]
        return features, is_dup

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
        if not terminal.add(day, self.config.terminal_slots, 1, 0, 0):
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
        mean = sum(amounts) / len(amounts) if amounts else 0.0
        if len(amounts) >= 2:
            std = math.sqrt(sum((a - mean) ** 2 for a in amounts) / len(amounts))
            row.append((tx.amount - mean) / max(std, MIN_STD))
        else:
            row.append(0.0)
        row.append(tx.amount / mean if amounts else 1.0)
        for w in config.big_amount_windows_s:
            big = [
                e for e in earlier
                if e.ts_ms > t - w * 1000 and amounts and e.amount > BIG_AMOUNT_FACTOR * mean
            ]  # fmt: skip
            row.append(float(len(big)))

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
            row.append(float(terminal.window(day, d)[0]))
        for d in config.terminal_label_window_days:
            _, labelled, frauds = terminal.window(day, d)
            row += [float(frauds), frauds / labelled if labelled else 0.0]
        longest = max(config.terminal_label_window_days)
        fraud_days = [b[0] for b in terminal.days(day - longest + 1, day) if b[3] > 0]
        if fraud_days:
            first = min(fraud_days)
            episode = terminal.days(first, day)
            labelled, frauds = sum(b[2] for b in episode), sum(b[3] for b in episode)
            row += [float(day - max(fraud_days)), float(day - first), frauds / labelled,
                    float(labelled)]  # fmt: skip
        else:
            row += [float(longest + 1), -1.0, 0.0, 0.0]

        row.append(tx.amount)
        row += calendar_features(t)
        return row
