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

At-least-once commits are asynchronous with **at most one request in
flight**: kafka-python sends them on the coordinator connection, which takes
``max_in_flight_requests_per_connection`` (5) requests at a time and refuses
more (``NodeNotReadyError: Node paused: {'max_in_flight'}``). Offsets of
batches finished while a request is out are coalesced into the next one
(offsets are cumulative). The first commit, and the first after a failed
request or a rebalance, is synchronous: it waits for the coordinator to be
known and loaded (``NotCoordinatorError`` right after a broker start) and
retries what the broker calls retriable.

An offset that goes backwards is a bug and raises
:class:`InvalidStoredOffsetError`; after a failure :meth:`Checkpoint.abort`
forgets the work in hand and says where each partition must resume.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from kafka.errors import KafkaError, ProducerFencedError

from fraudstream.service.errors import FraudstreamError
from fraudstream.service.kafka import DeliveryTracker
from fraudstream.service.kafka.protocols import (
    CommitFuture,
    Consumer,
    OffsetAndMetadata,
    Producer,
    TopicPartition,
)
from fraudstream.service.pipeline import Outgoing

log = logging.getLogger(__name__)


class InvalidStoredOffsetError(FraudstreamError):
    """An offset to commit went backwards: a bug, never silently accepted."""


class ProducerFailedError(FraudstreamError):
    """The producer cannot go on.

    The transactional producer was fenced by another scorer, or a producer is in a fatal state:
    the scorer stops, and a restart starts a new one.
    """


def _fatal_error(producer: Producer) -> BaseException | None:
    """The error that left ``producer`` in a fatal state, if it is in one.

    kafka-python's idempotent producer (every producer here is one) turns any
    non-retriable error of a batch (a record above a topic's
    ``max.message.bytes`` lowered meanwhile, an authorisation refused) into a
    fatal state: every later send fails, whatever is fixed on the broker.
    """
    manager = getattr(producer, "_transaction_manager", None)
    has_fatal_error = getattr(manager, "has_fatal_error", None)
    if has_fatal_error is None or not has_fatal_error():
        return None
    error = getattr(manager, "last_error", None)
    return error if isinstance(error, BaseException) else KafkaError("unknown error")


class Span(NamedTuple):
    """Offsets of the first and the last record of one partition in a batch."""

    first: int
    last: int


@dataclass(frozen=True, slots=True)
class _InFlight:
    """An asynchronous commit request the coordinator has not answered yet."""

    future: CommitFuture
    offsets: dict[TopicPartition, int]


def _payload(offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}


def fenced_reason(transactional_id: str | None, open_s: float, timeout_s: float) -> str:
    """Why the broker fenced this transactional producer, for the one line the scorer stops with.

    Either another producer started with the same transactional id, or this
    one's transaction, open for ``open_s``, outlived the transaction timeout
    (``timeout_s``) and the broker aborted it.

    >>> fenced_reason("pod-a", 0.1, 60.0).split(":")[0]
    'another scorer took over transactional id pod-a'
    >>> print(fenced_reason("pod-a", 75.0, 60.0)[:96])
    the transaction of pod-a was open for 75 s, longer than FRAUDSTREAM_TRANSACTION_TIMEOUT_S (60 s)
    """
    if open_s >= timeout_s:
        return (
            f"the transaction of {transactional_id} was open for {open_s:.0f} s, longer than "
            f"FRAUDSTREAM_TRANSACTION_TIMEOUT_S ({timeout_s:g} s), and the broker aborted it "
            "(or another scorer took over the id); this one stops: a restart replays what "
            "was not committed"
        )
    return (
        f"another scorer took over transactional id {transactional_id}: give each "
        "scorer its own FRAUDSTREAM_TRANSACTIONAL_ID; this one stops"
    )


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
    commit_timeout_s
        Longest wait for a synchronous commit (default 30 s).
    """

    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        *,
        exactly_once: bool = False,
        flush_timeout_s: float = 60.0,
        commit_timeout_s: float = 30.0,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.exactly_once = exactly_once
        self.flush_timeout_s = flush_timeout_s
        self.commit_timeout_s = commit_timeout_s
        self._tracker = DeliveryTracker(producer)
        #: Per partition: the offset after the last record handed over.
        self._next: dict[TopicPartition, int] = {}
        #: Per partition: where work not yet flushed begins (resume point after a failure).
        self._start: dict[TopicPartition, int] = {}
        #: Per partition: the offset up to which work is durable (safe to commit).
        self._done: dict[TopicPartition, int] = {}
        #: Per partition: the offset the coordinator (or the transaction) confirmed.
        self._committed: dict[TopicPartition, int] = {}
        self._in_flight: _InFlight | None = None
        #: When the open transaction began (monotonic seconds).
        self._began_at = 0.0
        #: The next group commit waits for the coordinator (first, or after a failure).
        self._sync_next = True
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
        """Offsets tracked and not confirmed committed yet."""
        self._settle()
        return {tp: off for tp, off in self._next.items() if self._committed.get(tp) != off}

    # -- the order ----------------------------------------------------------------

    def commit(self, *, wait: bool = True) -> dict[TopicPartition, int]:
        """Flush and confirm every delivery, then commit the tracked offsets.

        ``wait=False`` (at-least-once mode) sends the commit without waiting for
        the coordinator's answer, unless a request is still out: then the
        offsets go with the next call (call it when idle too). Offsets are
        cumulative, so a failed request is covered by the next commit, and at
        worst a restart replays a batch whose effects are idempotent. Returns
        the offsets committed or sent.

        Raises
        ------
        DeliveryError
            When a record was not delivered: nothing is committed; call
            :meth:`abort` and replay.
        KafkaError
            When the commit (or the transaction) failed, e.g. this member was
            fenced after a rebalance: call :meth:`abort` and replay.
        """
        # 1. Every record the tracked batches caused is delivered, or nothing is committed.
        self._tracker.flush(timeout_s=self.flush_timeout_s)
        if self.exactly_once:
            # 2. The offsets go into the transaction; its records and offsets become
            # durable together when it commits, and not before.
            offsets = {tp: off for tp, off in self._next.items() if self._committed.get(tp) != off}
            if not offsets and not self._in_transaction:
                return {}
            self._begin()
            if offsets:
                self.producer.send_offsets_to_transaction(
                    _payload(offsets), self.consumer.group_metadata()
                )
            self.producer.commit_transaction()
            self._in_transaction = False
            self._mark_done()
            self._confirm(offsets)
            return offsets
        # Delivered is durable at least once: later failures replay from here.
        self._mark_done()
        # 2. Offsets.
        self._settle()
        offsets = {tp: off for tp, off in self._done.items() if self._committed.get(tp) != off}
        if not offsets:
            return {}
        elif wait or self._sync_next:
            # Synchronous: waits for the coordinator and retries what is retriable.
            self.consumer.commit(_payload(offsets), timeout_ms=int(self.commit_timeout_s * 1000))
            self._sync_next = False
        elif self._in_flight is not None:
            return {}  # coalesced: sent once the request out is answered
        else:
            future = self.consumer.commit_async(_payload(offsets))
            self._in_flight = _InFlight(future, offsets)
            return offsets
        self._confirm(offsets)
        return offsets

    def _mark_done(self) -> None:
        self._done.update(self._next)
        self._start.clear()

    def _settle(self) -> None:
        """Take in the answer to the asynchronous request out, if it came."""
        in_flight = self._in_flight
        if in_flight is None or not in_flight.future.is_done:
            return
        self._in_flight = None
        if in_flight.future.succeeded():
            self._confirm(in_flight.offsets)
            return
        exc = in_flight.future.exception
        self._sync_next = True
        log.warning(
            "offset commit not accepted (%s: %s); the offsets go again with the next "
            "commit, which waits for the coordinator",
            type(exc).__name__,
            exc,
        )

    def _confirm(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            if tp in self._done:  # still ours: not forgotten after a rebalance meanwhile
                self._committed[tp] = max(offset, self._committed.get(tp, offset))

    def confirm(self, positions: Mapping[TopicPartition, int]) -> None:
        """Commit ``positions`` synchronously with no work in hand.

        An idle scorer proves its membership this way after Kafka was away; a refusal raises as a
        commit does.

        In both modes this is a group commit: the positions are what the last
        commit (or transaction) left, and it cannot block for ever.

        Raises
        ------
        InvalidStoredOffsetError
            When work is in hand, or a position is behind what is done.
        """
        if self._next != self._done or self._in_transaction:
            raise InvalidStoredOffsetError("confirm() with work in hand would commit past it")
        for tp, offset in positions.items():
            if offset < self._done.get(tp, offset):
                raise InvalidStoredOffsetError(
                    f"offset of {tp.topic}[{tp.partition}] would go back from "
                    f"{self._done[tp]} to {offset}"
                )
        # A group commit in both modes: nothing was produced since the last commit, and
        # unlike kafka-python's transactional calls it has a timeout.
        self.consumer.commit(_payload(positions), timeout_ms=int(self.commit_timeout_s * 1000))
        self._sync_next = False
        self._done.update(positions)
        self._next.update(positions)
        self._confirm(positions)

    def abort(self) -> dict[TopicPartition, int]:
        """Give up the work in hand; return where each partition with such work must resume.

        In exactly-once mode the open transaction is aborted, so nothing
        produced since the last commit becomes visible. At-least-once records
        already handed over may still be delivered: the replay repeats them
        with the same ids.
        """
        fatal = _fatal_error(self.producer)
        if fatal is not None and not self.exactly_once:
            raise ProducerFailedError(
                f"the producer cannot go on ({type(fatal).__name__}: {fatal}); stopping: a"
                " restart starts a new one and replays what was not committed"
            )
        if self.exactly_once and self._in_transaction:
            self._in_transaction = False
            try:
                self.producer.abort_transaction()
            except KafkaError as exc:  # only a producer in a fatal state cannot abort
                raise ProducerFailedError(self._fatal_reason(exc)) from exc
        self._tracker = DeliveryTracker(self.producer)
        resume = dict(self._start)
        self._next = dict(self._done)
        self._start.clear()
        return resume

    def start_over(self, positions: Mapping[TopicPartition, int]) -> None:
        """Commit ``positions`` to the group, forgetting what was done there before.

        For partitions whose offsets mean nothing any more (their topic was
        created again): the work on them, in hand or done, is dropped.
        """
        # Committed first: should the commit fail, the offsets done stay, and the next
        # batch of the new log is refused as going backwards (the loop stops).
        self.consumer.commit(_payload(positions), timeout_ms=int(self.commit_timeout_s * 1000))
        self.forget(positions)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop partitions this member no longer owns (after a rebalance)."""
        for tp in partitions:
            for offsets in (self._next, self._start, self._done, self._committed):
                offsets.pop(tp, None)
        self._sync_next = True

    def _fatal_reason(self, exc: KafkaError) -> str:
        config = getattr(self.producer, "config", {})
        transactional_id = config.get("transactional_id")
        manager = getattr(self.producer, "_transaction_manager", None)
        if isinstance(getattr(manager, "last_error", None), ProducerFencedError):
            return fenced_reason(
                transactional_id,
                time.monotonic() - self._began_at,
                config.get("transaction_timeout_ms", 60_000) / 1000,
            )
        return f"the transactional producer {transactional_id} cannot go on ({exc}); stopping"

    def _begin(self) -> None:
        if not self._in_transaction:
            self.producer.begin_transaction()
            self._in_transaction = True
            self._began_at = time.monotonic()
