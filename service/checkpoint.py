"""The one place where consumer offsets are committed.

A batch is committed only after everything it caused is durable, in this
order: features and snapshots written to Redis → alerts, scores and dead
letters produced and flushed (delivery confirmed) → offsets committed. A crash
anywhere before the commit replays the batch; Redis updates are idempotent per
transaction id and alert ids derive from transaction ids, so a replay counts
nothing twice and downstream can dedupe alerts.

In ``exactly_once`` mode the produced records and the offsets are committed in
one Kafka transaction: ``read_committed`` readers see each alert once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from fraudstream.service.errors import FraudstreamError

log = logging.getLogger(__name__)


def _log_failed_commit(offsets: Any, response: Any) -> None:
    if isinstance(response, Exception):
        log.warning("asynchronous offset commit failed (a later commit covers it): %s", response)


class InvalidStoredOffsetError(FraudstreamError):
    """An offset to commit went backwards: a bug, never silently accepted."""


class Checkpoint:
    """Tracks the next offset to commit per partition and commits them.

    Parameters
    ----------
    consumer
        The consumer whose group commits the offsets.
    producer
        The transactional producer in exactly-once mode, else ``None``.
    """

    def __init__(self, consumer: KafkaConsumer, producer: KafkaProducer | None = None) -> None:
        self.consumer = consumer
        self.producer = producer
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._in_transaction = False

    @property
    def transactional(self) -> bool:
        return self.producer is not None

    def begin(self) -> None:
        """Start a batch (opens the Kafka transaction in exactly-once mode)."""
        if self.producer is not None and not self._in_transaction:
            self.producer.begin_transaction()
            self._in_transaction = True

    def track(self, topic: str, partition: int, offset: int) -> None:
        """Mark a record as done: the next offset of its partition is ``offset + 1``."""
        tp = TopicPartition(topic, partition)
        current = self._next.get(tp, -1)
        if offset + 1 > current:
            self._next[tp] = offset + 1

    def track_many(self, last_offsets: Iterable[tuple[str, int, int]]) -> None:
        for topic, partition, offset in last_offsets:
            self.track(topic, partition, offset)

    def pending(self) -> dict[TopicPartition, int]:
        """Offsets tracked and not committed yet."""
        return {tp: off for tp, off in self._next.items() if self._committed.get(tp) != off}

    def commit(self, wait: bool = True) -> dict[TopicPartition, int]:
        """Commit every tracked offset; returns what was committed.

        Call only after Redis writes are done and the producer was flushed
        with every delivery confirmed. ``wait=False`` sends the commit without
        waiting for the coordinator's answer (at-least-once mode): offsets are
        cumulative, so a failed request is covered by the next commit, and at
        worst a restart replays a batch whose effects are idempotent.
        """
        offsets = self.pending()
        for tp, offset in offsets.items():
            if offset < self._committed.get(tp, -1):
                raise InvalidStoredOffsetError(
                    f"offset of {tp.topic}[{tp.partition}] would go back from "
                    f"{self._committed[tp]} to {offset}"
                )
        payload: dict[Any, Any] = {
            tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()
        }
        if self.producer is not None:
            if not self._in_transaction:
                self.begin()
            if payload:
                self.producer.send_offsets_to_transaction(payload, self.consumer.group_metadata())
            self.producer.commit_transaction()
            self._in_transaction = False
        elif payload and wait:
            self.consumer.commit(payload)
        elif payload:
            self.consumer.commit_async(payload, callback=_log_failed_commit)
        self._committed.update(offsets)
        return offsets

    def commit_all(self) -> None:
        """Commit every offset this member owns and wait (at shutdown)."""
        offsets = {**self._committed, **self._next}
        if offsets:
            self.consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        self._committed.update(offsets)

    def abort(self) -> None:
        """Give up the batch: nothing produced in it becomes visible, offsets stay."""
        if self.producer is not None and self._in_transaction:
            self.producer.abort_transaction()
            self._in_transaction = False
        for tp in list(self._next):
            if tp in self._committed:
                self._next[tp] = self._committed[tp]
            else:
                del self._next[tp]

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop partitions this member no longer owns (after a rebalance)."""
        for tp in partitions:
            self._next.pop(tp, None)
            self._committed.pop(tp, None)
