"""Positions Kafka moved under a consumer: records deleted before they were read, said out loud.

A consumer group's position can point at records that are gone: retention
deleted them while the scorer was down or far behind, an operator ran
``kafka-delete-records``, or an unclean leader election truncated the
partition. kafka-python then moves the position by ``auto_offset_reset``
(``earliest``: the oldest record still there) with one INFO line of its own,
and the records in between are never processed. For a fraud service those are
transactions never scored and labels never learnt: an operator must know.

kafka-python asks its subscription state for a reset by the default policy
(``request_offset_reset`` without a strategy) only in those cases: a fetch out
of range, or a truncation found by leader-epoch validation; a ``seek`` names
its strategy. :class:`OffsetResets` notes each such request with the position
it replaces, and the position its fetcher then sets
(``_reset_offset_if_needed``, which may run in the same ``poll`` as the fetch
from there): :class:`OffsetReset`. Both are private to kafka-python: watched
only on the versions :mod:`~fraudstream.service.kafka.records` was checked
against (``tests/e2e/test_deleted_records.py`` holds it to a real broker).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import kafka

from fraudstream.service.kafka.protocols import TopicPartition
from fraudstream.service.kafka.records import SUPPORTED_VERSIONS


@dataclass(frozen=True, slots=True)
class OffsetReset:
    """A position kafka-python reset by the default policy: from ``old`` to ``new``.

    >>> OffsetReset(TopicPartition("transactions", 2), 20, 40).skipped
    20
    >>> OffsetReset(TopicPartition("transactions", 2), 90, 0).skipped  # read again
    0
    """

    partition: TopicPartition
    old: int
    new: int

    @property
    def skipped(self) -> int:
        """Records between the old position and the new one: never read."""
        return max(0, self.new - self.old)


class OffsetResets:
    """The resets kafka-python makes by the default policy on ``consumer`` (see the module).

    On a consumer without kafka-python's private parts (a test double, another
    version), nothing is watched and :meth:`take` returns nothing.
    """

    def __init__(self, consumer: Any) -> None:
        self._lock = threading.Lock()
        #: Partition -> the position a reset replaced, its new one not set yet.
        self._awaiting: dict[Any, int] = {}
        self._done: list[OffsetReset] = []
        self.consumer = consumer
        subscription: Any = getattr(consumer, "_subscription", None)
        fetcher: Any = getattr(consumer, "_fetcher", None)
        request: Any = getattr(subscription, "request_offset_reset", None)
        reset_one: Any = getattr(fetcher, "_reset_offset_if_needed", None)
        self.watching = (
            kafka.__version__.startswith(SUPPORTED_VERSIONS)
            and request is not None
            and reset_one is not None
            and hasattr(subscription, "assignment")
        )
        if not self.watching:
            return

        def request_offset_reset(partition: Any, offset_reset_strategy: Any = None) -> Any:
            if offset_reset_strategy is None:
                state = subscription.assignment.get(partition)
                position = getattr(state, "position", None)
                if position is not None:
                    with self._lock:
                        self._awaiting[partition] = int(position.offset)
            return request(partition, offset_reset_strategy)

        def reset_offset_if_needed(partition: Any, timestamp: Any, offset: int) -> Any:
            result = reset_one(partition, timestamp, offset)
            state = subscription.assignment.get(partition)
            position = getattr(state, "position", None)
            with self._lock:
                # Applied (not skipped for a newer seek or a lost partition).
                applied = position is not None and position.offset == offset
                if applied and partition in self._awaiting:
                    old = self._awaiting.pop(partition)
                    self._done.append(OffsetReset(partition, old, offset))
            return result

        # Called on kafka-python's network thread or in a poll: noted, reported by take().
        subscription.request_offset_reset = request_offset_reset
        fetcher._reset_offset_if_needed = reset_offset_if_needed

    def take(self) -> list[OffsetReset]:
        """The resets applied since the last call (call between polls)."""
        with self._lock:
            done, self._done = self._done, []
            if self._awaiting:
                assigned = set(self.consumer.assignment())
                # A partition lost meanwhile: its next owner notes its own.
                self._awaiting = {tp: o for tp, o in self._awaiting.items() if tp in assigned}
        return done


class TopicIds:
    """The id of each topic a consumer reads; a new id: the topic was deleted and created again.

    kafka-python fetches by topic name, so a consumer whose topic is deleted
    and created again reads the new topic from its old position, when the new
    log is long enough already: the records before it are never read, and
    nothing says so. The id (KIP-516) tells the two topics apart; kafka-python
    keeps the one of its last metadata (refreshed at least every
    ``metadata_max_age_ms``). On a consumer without it (a test double, another
    version) :meth:`changed` finds nothing.
    """

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
        self._topic_id: Any = getattr(cluster, "topic_id", None)
        self._seen: dict[str, Any] = {}

    def changed(self) -> list[tuple[str, Any, Any]]:
        """Topics read whose id changed since first seen: ``(topic, old id, new id)``."""
        if self._topic_id is None:
            return []
        found = []
        for topic in {tp.topic for tp in self.consumer.assignment()}:
            now = self._topic_id(topic)
            if now is None:
                continue
            before = self._seen.setdefault(topic, now)
            if before != now:  # said again at the next call: the caller stops
                found.append((topic, before, now))
        return found
