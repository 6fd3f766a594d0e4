"""The one place where consumer offsets are committed, and the order that leads there.

Callers hand a :class:`Checkpoint` work, never sequencing: the records a batch
caused (:meth:`Checkpoint.produce`) and the offsets of the records it consumed
(:meth:`Checkpoint.track`). :meth:`Checkpoint.commit` then runs the steps
itself, in this order:

1. **flush** the producer and confirm every delivery; a failed delivery raises
   :class:`~fraudstream.service.kafka.DeliveryError` and nothing is committed;
2. **commit** the offsets of the records whose work is now durable: to the
   consumer group (at-least-once), or, in ``exactly_once`` mode, into the
   Kafka transaction that holds the produced records, then commit it.

Features and snapshots are written to Redis before the caller hands records
over, so a crash anywhere before step 2 replays the batch; Redis updates are
idempotent per transaction id and alert ids derive from transaction ids, so a
replay counts nothing twice and downstream can dedupe alerts. In
``exactly_once`` mode ``read_committed`` readers see each alert once.

An offset that goes backwards is a bug and raises
:class:`InvalidStoredOffsetError`; after a failure :meth:`Checkpoint.abort`
forgets the work in hand and says where each partition must resume.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from fraudstream.service.errors import FraudstreamError
from fraudstream.service.kafka import DeliveryTracker
from fraudstream.service.pipeline import Outgoing

log = logging.getLogger(__name__)


class InvalidStoredOffsetError(FraudstreamError):
    """An offset to commit went backwards: a bug, never silently accepted."""


class Span(NamedTuple):
    """Offsets of the first and the last record of one partition in a batch."""

    first: int
    last: int


def _log_failed_commit(offsets: Any, response: Any) -> None:
    if isinstance(response, Exception):
        log.warning("asynchronous offset commit failed (a later commit covers it): %s", response)


class Checkpoint:
    """Produces a batch's records, confirms their delivery, then commits its offsets.

    Parameters
    ----------
    consumer
        The consumer whose group commits the offsets.
    producer
        The producer of the records a batch causes (transactional in
        exactly-once mode, ``init_transactions`` already called).
    exactly_once
        Commit offsets inside the producer's transaction (default ``False``:
        commit them to the consumer group).
    flush_timeout_s
        Longest wait for deliveries at each commit (default 60 s).
    """

    def __init__(
        self,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        *,
        exactly_once: bool = False,
        flush_timeout_s: float = 60.0,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.exactly_once = exactly_once
        self.flush_timeout_s = flush_timeout_s
        self._tracker = DeliveryTracker(producer)
        #: Per partition: the offset after the last record handed over.
        self._next: dict[TopicPartition, int] = {}
        #: Per partition: where work not yet flushed begins (resume point after a failure).
        self._start: dict[TopicPartition, int] = {}
        #: Per partition: the offset up to which work is durable (safe to commit).
        self._done: dict[TopicPartition, int] = {}
        #: Per partition: the offset committed (sent to the coordinator or the transaction).
        self._committed: dict[TopicPartition, int] = {}
        self._in_transaction = False

    # -- work handed over --------------------------------------------------------

    def produce(self, outgoing: Iterable[Outgoing]) -> None:
        """Hand records to the producer (asynchronous; confirmed by :meth:`commit`)."""
        for record in outgoing:
            if self.exactly_once and not self._in_transaction:
                self._begin()
            self._tracker.send(record.topic, record.value, key=record.key, headers=record.headers)

    def track(self, spans: Mapping[TopicPartition, Span]) -> None:
        """Mark the records of ``spans`` as processed: committed by the next :meth:`commit`.

        Raises
        ------
        InvalidStoredOffsetError
            When a span starts before records already tracked or committed.
        """
        for tp, span in spans.items():
            floor = self._next.get(tp, self._done.get(tp))
            if span.last < span.first or (floor is not None and span.first < floor):
                raise InvalidStoredOffsetError(
                    f"offset of {tp.topic}[{tp.partition}] would go back from {floor} "
                    f"to {span.first}"
                )
            self._start.setdefault(tp, span.first if floor is None else floor)
            self._next[tp] = span.last + 1

    def pending(self) -> dict[TopicPartition, int]:
        """Offsets tracked and not committed yet."""
        return {tp: off for tp, off in self._next.items() if self._committed.get(tp) != off}

    # -- the order ----------------------------------------------------------------

    def commit(self, *, wait: bool = True) -> dict[TopicPartition, int]:
        """Flush and confirm every delivery, then commit the tracked offsets.

        ``wait=False`` (at-least-once mode) sends the commit without waiting for
        the coordinator's answer: offsets are cumulative, so a failed request is
        covered by the next commit, and at worst a restart replays a batch whose
        effects are idempotent. Returns the offsets committed.

        Raises
        ------
        DeliveryError
            When a record was not delivered: nothing is committed; call
            :meth:`abort` and replay.
        """
        # 1. Every record the tracked batches caused is durable, or nothing is committed.
        self._tracker.flush(timeout_s=self.flush_timeout_s)
        self._done.update(self._next)
        self._start.clear()
        # 2. Offsets.
        offsets = {tp: off for tp, off in self._done.items() if self._committed.get(tp) != off}
        payload: dict[Any, Any] = {
            tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()
        }
        if self.exactly_once:
            if not offsets and not self._in_transaction:
                return {}
            self._begin()
            if payload:
                self.producer.send_offsets_to_transaction(payload, self.consumer.group_metadata())
            self.producer.commit_transaction()
            self._in_transaction = False
        elif wait and self._done:
            # Everything, not only what changed: covers an asynchronous request that was lost.
            self.consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in self._done.items()})
        elif payload:
            self.consumer.commit_async(payload, callback=_log_failed_commit)
        self._committed.update(offsets)
        return offsets

    def abort(self) -> dict[TopicPartition, int]:
        """Give up the work in hand; return where each partition with such work must resume.

        In exactly-once mode the open transaction is aborted, so nothing
        produced since the last commit becomes visible. At-least-once records
        already handed over may still be delivered: the replay repeats them
        with the same ids.
        """
        if self.exactly_once and self._in_transaction:
            self._in_transaction = False
            self.producer.abort_transaction()
        self._tracker = DeliveryTracker(self.producer)
        resume = dict(self._start)
        self._next = dict(self._done)
        self._start.clear()
        return resume

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop partitions this member no longer owns (after a rebalance)."""
        for tp in partitions:
            for offsets in (self._next, self._start, self._done, self._committed):
                offsets.pop(tp, None)

    def _begin(self) -> None:
        if not self._in_transaction:
            self.producer.begin_transaction()
            self._in_transaction = True
