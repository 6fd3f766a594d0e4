"""The poll → work → commit cycle of one consumer group, and how it survives failures.

A :class:`ConsumeLoop` polls bounded batches, tells the checkpoint which
partitions this member lost in a rebalance, and, when a batch fails because a
dependency is away, has the checkpoint abort, seeks back to where the failed
work began and waits (exponentially, up to 30 s) with its partitions paused,
polling to stay in the group.

Two rules keep every record:

* **No record returned by a poll is dropped.** The caller processes what
  :meth:`ConsumeLoop.poll` returns or hands it back to :meth:`ConsumeLoop.recover`;
  a poll made while backing off (partitions assigned in a rebalance meanwhile
  are not paused yet) seeks back to the first record it returned.
* **After a rebalance, positions come from committed offsets.** Every
  partition is revoked and assigned again (eager protocol), kafka-python
  fetches the group's committed offset for it, and the checkpoint forgets what
  it tracked; partitions assigned during a back-off are paused at once.

:class:`LoopHealth` turns what the loop sees into readiness (partitions
assigned and the last batch committed, or idle with nothing to do) and
liveness (records waiting and no progress for ``stall_after_s`` is a stall).

The work itself (what a batch means, when to commit) is the caller's: the
scorer and learner loops in :mod:`fraudstream.service.app`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, NoReturn, TypeVar

import redis
from kafka.errors import CommitFailedError, CorruptRecordError

from fraudstream.service.checkpoint import Checkpoint, ProducerFailedError, Span
from fraudstream.service.errors import (
    LogReplacedError,
    RedisUnavailableError,
    UnreadableRecordsError,
)
from fraudstream.service.kafka import group_coordinator_known, subscribe
from fraudstream.service.kafka.protocols import (
    Consumer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    MemberState,
    TopicPartition,
)
from fraudstream.service.kafka.records import UnreadableBatch, seek_past, unreadable_batch
from fraudstream.service.kafka.resets import OffsetReset, OffsetResets, TopicIds
from fraudstream.service.metrics import Metrics
from fraudstream.service.pipeline import UnreadableRecord

log = logging.getLogger(__name__)

#: A loop that has not polled for this long is hung, whatever else it says.
_HUNG_AFTER_S = 60.0

#: A loop that has not polled for this long is inside one slow call (a commit, a flush, a
#: Redis round trip waiting on a dependency that went away): not ready, whatever its last
#: turn said, until the call returns. A turn takes milliseconds when all is well.
_BUSY_NOT_READY_S = 5.0

#: Membership while the group coordinator is unknown (no commit can succeed).
_COORDINATOR_UNKNOWN = "coordinator unknown"


def backoff_s(attempt: int) -> float:
    """Seconds to wait after the ``attempt``-th failure (from 0): 0.5 s doubling to 30 s.

    >>> [backoff_s(a) for a in (0, 1, 5, 6, 20)]
    [0.5, 1.0, 16.0, 30.0, 30.0]
    """
    return min(30.0, 0.5 * 2.0**attempt)


@dataclass(frozen=True, slots=True)
class Polled:
    """What one poll returned: the records, and per partition their first and last offset."""

    records: list[ConsumerRecord]
    spans: dict[TopicPartition, Span]


#: What a batch's processing returns (the scorer: its ``BatchOutcome``).
R = TypeVar("R")
#: What a pipelined batch's first step returns (the scorer: the batch waiting for its features).
B = TypeVar("B")
V = TypeVar("V")

#: An empty poll.
_NOTHING = Polled([], {})


@dataclass(frozen=True, slots=True)
class _Flight(Generic[V]):
    """A batch in flight in :meth:`ConsumeLoop.run_pipelined`, with what its step returned."""

    polled: Polled
    value: V
    started: float
    #: The loop's revocation count when the batch was polled.
    revocations: int


class _ReadAgain(Exception):
    """Partitions were revoked while batches were in flight: they are read again."""


@dataclass(frozen=True, slots=True)
class _InHand(Generic[R]):
    """A batch handed to the worker thread and not finished yet."""

    polled: Polled
    future: Future[R]
    started: float
    #: The loop's revocation count when the batch was polled.
    revocations: int
    #: At least half as many records as a poll may return: the loop is behind
    #: the stream, so it reads ahead.
    behind: bool


class LoopHealth:
    """What one loop tells ``/readyz`` and ``/healthz``.

    Parameters
    ----------
    name
        ``scorer`` or ``learner``.
    needs_partitions
        Ready only with partitions assigned (the scorer; a standby learner
        without partitions is healthy).
    stall_after_s
        Records waiting and no batch done for this long is a stall.
    clock
        Monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        name: str,
        *,
        needs_partitions: bool,
        stall_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.needs_partitions = needs_partitions
        self.stall_after_s = stall_after_s
        self.clock = clock
        now = clock()
        self._polled_at = now
        self._progress_at = now
        self._member = "not in the group yet"
        self._partitions = 0
        self._turn = "starting"
        self._failure: str | None = None
        self._lag: int | None = None
        self._lag_problem = "not measured yet"
        #: No commit has succeeded since Kafka was last away (or since the start).
        self.unconfirmed = True

    # -- what the loop reports ------------------------------------------------

    def polled(self, membership: str, partitions: int) -> None:
        """The loop polled; ``membership`` is the member's state, ``partitions`` it owns."""
        self._polled_at = self.clock()
        self._member = membership
        if membership == _COORDINATOR_UNKNOWN:
            self.unconfirmed = True
        if partitions != self._partitions:
            self._progress_at = self._polled_at  # new partitions get a fair start
        self._partitions = partitions

    def done(self, records: int) -> None:
        """A turn ended well: its ``records`` committed (the learner: learnt and tracked)."""
        self._failure = None
        if records:
            self._progress_at = self.clock()
            self._turn = "done"
            self.unconfirmed = False
        else:
            self._turn = "idle"

    def failed(self, reason: str) -> None:
        """A batch failed and will be retried after a back-off."""
        self._turn = "failed"
        self._failure = reason
        self.unconfirmed = True

    def confirmed(self) -> None:
        """A commit succeeded while idle: the group still knows this member."""
        self.unconfirmed = False

    def lag(self, total: int | None, problem: str = "") -> None:
        """Records behind the end of the owned partitions (``None``: unknown, and why)."""
        self._lag = total
        self._lag_problem = problem
        if total is None:
            self.unconfirmed = True
        if total == 0:
            self._progress_at = self.clock()  # caught up: nothing to do is progress

    # -- what it means -------------------------------------------------------------

    @property
    def waiting(self) -> int | None:
        """Records waiting in the owned partitions, as last measured."""
        return self._lag

    def ready(self) -> tuple[bool, str]:
        """Partitions assigned, the last batch committed or nothing to do, and not stuck in a call.

        What the last turn said is stale while the loop is inside a call that
        waits on a dependency: a scorer blocked in a transaction commit while
        the broker restarts would otherwise say ready, and score nothing, for
        as long as the call waits.
        """
        if self.needs_partitions and self._member != MemberState.STABLE:
            return False, f"{self.name}: {self._member_text()}"
        if self.needs_partitions and self._partitions == 0:
            return False, f"{self.name}: no partitions assigned"
        if self._turn == "failed":
            return False, f"{self.name}: retrying a batch ({self._failure})"
        if self._turn == "starting":
            return False, f"{self.name}: starting"
        if self.needs_partitions and self.unconfirmed:
            return False, f"{self.name}: no commit accepted since Kafka was last away"
        if self._turn == "idle" and self._partitions:
            if self._lag is None:
                return False, f"{self.name}: lag unknown ({self._lag_problem})"
            if self._lag > 0:
                return False, f"{self.name}: {self._lag} records waiting, none processed yet"
        busy_s = self.clock() - self._polled_at
        if busy_s > _BUSY_NOT_READY_S:
            return (
                False,
                f"{self.name}: no poll for {busy_s:.0f} s (inside a call to Kafka or Redis)",
            )
        return True, "ready"

    def live(self) -> tuple[bool, str]:
        """Not hung, and not stalled with records waiting."""
        now = self.clock()
        if now - self._polled_at > _HUNG_AFTER_S:
            return False, f"{self.name}: loop has not turned for {now - self._polled_at:.0f} s"
        idle_s = now - self._progress_at
        waiting = self._failure is not None or (self._lag or 0) > 0
        if waiting and idle_s > self.stall_after_s:
            lag = "unknown" if self._lag is None else str(self._lag)
            why = f"; last error: {self._failure}" if self._failure else ""
            return False, (
                f"{self.name}: stalled, no batch done for {idle_s:.0f} s "
                f"with {lag} records waiting{why}"
            )
        return True, "ok"

    def _member_text(self) -> str:
        if self._member == MemberState.REBALANCING:
            return "group rebalancing"
        if self._member == MemberState.UNJOINED:
            return "not in the group yet"
        if self._member == _COORDINATOR_UNKNOWN:
            return "group coordinator unknown (broker away or restarting)"
        return str(self._member)


class _Rebalance(ConsumerRebalanceListener):
    """Forgets the offsets of partitions this member loses; pauses new ones during a back-off.

    kafka-python calls it on its network thread while the loop's thread waits in ``poll``.
    """

    def __init__(self, loop: ConsumeLoop) -> None:
        self._loop = loop

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        if revoked:
            self._loop.revocations += 1
        self._loop.checkpoint.forget(revoked)
        self._loop.forget_lag(revoked)

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        if self._loop.backing_off and assigned:
            self._loop.consumer.pause(*assigned)
        log.info(
            "%s assigned %s%s",
            self._loop.name,
            sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned),
            " (paused: backing off)" if self._loop.backing_off else "",
        )


class FailureLog:
    """Warns of each failed batch; the same failure again within ``every_s`` is only counted.

    A failure that cannot pass (a poll failing the same way every time) is
    retried every few hundred milliseconds while the dependencies answer: one
    warning per ``every_s`` says so, with how often it came meanwhile.

    >>> now = [0.0]
    >>> failures = FailureLog(every_s=30.0, clock=lambda: now[0])
    >>> [failures.warn("scorer", 0, "E: x") for _ in range(3)]
    [True, False, False]
    >>> now[0] = 31.0
    >>> failures.warn("scorer", 0, "E: x"), failures.repeated
    (True, 0)
    >>> failures.warn("scorer", 5, "F: y")  # another failure: warned at once
    True
    """

    def __init__(self, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self._reason: str | None = None
        self._warned_at = -math.inf
        #: Times the failure last warned of came again since its warning.
        self.repeated = 0

    def warn(self, name: str, records: int, reason: str) -> bool:
        """Warn of a failed batch of ``records`` (``False``: a repeat, only counted)."""
        now = self.clock()
        if reason == self._reason and now - self._warned_at < self.every_s:
            self.repeated += 1
            log.debug("%s batch of %d not committed (%s), again", name, records, reason)
            return False
        since = ""
        if self.repeated:
            since = f" (the failure before came {self.repeated} more times after its warning)"
        log.warning(
            "%s batch of %d not committed (%s); retrying after back-off%s",
            name,
            records,
            reason,
            since,
        )
        self._reason, self._warned_at, self.repeated = reason, now, 0
        return True


class ConsumeLoop:
    """Polling, rebalances and retries of one consumer, for the scorer or the learner.

    Parameters
    ----------
    name
        ``scorer`` or ``learner`` (logs and metrics).
    consumer
        The group consumer (auto-commit off).
    checkpoint
        Commits what the caller hands it; told about lost partitions.
    health
        Where the loop reports what it sees.
    max_records
        Most records per poll (bounds the time per batch).
    wait_ms
        Longest wait for a batch to fill.
    stopping
        Set when the application stops; ends a back-off early.
    metrics
        Dependency errors, lag and loop liveness.
    """

    def __init__(
        self,
        name: str,
        consumer: Consumer,
        checkpoint: Checkpoint,
        health: LoopHealth,
        *,
        max_records: int,
        wait_ms: int,
        stopping: threading.Event,
        metrics: Metrics,
    ) -> None:
        self.name = name
        self.consumer = consumer
        self.checkpoint = checkpoint
        self.health = health
        self.max_records = max_records
        self.wait_ms = wait_ms
        self.stopping = stopping
        self.metrics = metrics
        self.backing_off = False
        self._failures = FailureLog()
        #: Times partitions were revoked (a batch in hand across one is read again).
        self.revocations = 0
        self._lag_at = -1e9
        self._lag_stale = True
        self._lag_labels: set[TopicPartition] = set()
        self._resets = OffsetResets(consumer)
        self._topic_ids = TopicIds(consumer)

    def subscribe(self, topics: list[str]) -> None:
        """Join the group for ``topics``, with this loop's rebalance listener."""
        for topic in topics:
            # Exported at 0 from the start, so that an alert can fire on its first increase.
            self.metrics.records_lost.labels(topic)
        subscribe(self.consumer, topics, listener=_Rebalance(self))

    def run(
        self,
        turn: Callable[[Polled], None],
        *,
        transient: Callable[[BaseException], bool],
        healthy: Callable[[], bool],
    ) -> None:
        """Poll and hand every batch (possibly empty) to ``turn`` until stopped.

        ``turn`` processes the batch and commits what it finished. When it raises
        what ``transient`` accepts, the batch is given up, sought back and retried
        after a back-off (:meth:`recover`, until ``healthy()``); anything else
        ends the loop.
        """
        attempt = 0
        while not self.stopping.is_set():
            polled = self.poll()
            try:
                turn(polled)
            except Exception as exc:
                if not transient(exc):
                    raise
                self.recover(polled, exc, attempt, healthy)
                attempt += 1
                continue
            self.health.done(len(polled.records))
            attempt = 0

    def run_ahead(
        self,
        process: Callable[[Polled], R],
        finish: Callable[[Polled, R, float], None],
        idle: Callable[[], None],
        *,
        transient: Callable[[BaseException], bool],
        healthy: Callable[[], bool],
    ) -> None:
        """Like :meth:`run`, but behind the stream process batch ``k`` while ``k + 1`` is polled.

        ``process`` runs in a worker thread (the scorer: Redis round trips and
        scoring, no Kafka); ``finish`` then runs here with its result and the
        seconds since the batch was handed over (produce, track, commit), and
        only after it is the next batch handed over: a batch's offsets are
        committed after its effects, in order. ``idle`` runs for an empty poll.
        The loop reads ahead only after a large batch (at least half of
        ``max_records``: records are waiting); keeping up, it finishes each
        batch before polling again, so its results do not wait for the next
        poll. A batch in hand while partitions were revoked is given up with
        the batch polled meanwhile, and both are read again. A transient error
        gives up both as well, and :meth:`recover` backs off.
        """
        attempt = 0
        in_hand: _InHand[R] | None = None
        with ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-batch") as worker:
            while in_hand is not None or not self.stopping.is_set():
                polled = self._poll_ahead(in_hand)
                batch, in_hand = in_hand, None
                try:
                    if batch is not None and not self._finish(batch, polled, finish):
                        continue  # both read again
                    batch = None
                    if polled is None:
                        continue  # the next turn polls
                    if polled.records:
                        in_hand = _InHand(
                            polled,
                            worker.submit(process, polled),
                            time.perf_counter(),
                            self.revocations,
                            2 * len(polled.records) >= self.max_records,
                        )
                    else:
                        idle()
                        self.health.done(0)
                    attempt = 0
                except Exception as exc:
                    if not transient(exc):
                        raise
                    earlier = batch.polled.records if batch is not None else []
                    failed = Polled(earlier + (polled or _NOTHING).records, {})
                    self.recover(failed, exc, attempt, healthy)
                    attempt += 1

    def run_pipelined(
        self,
        begin: Callable[[Polled], B],
        complete: Callable[[B], R],
        settle: Callable[[], None],
        finish: Callable[[Polled, R, float], None],
        idle: Callable[[], None],
        *,
        reset: Callable[[], None],
        transient: Callable[[BaseException], bool],
        healthy: Callable[[], bool],
    ) -> None:
        """Like :meth:`run`, with up to two batches in flight in this one thread.

        ``begin`` starts a batch and sends its requests (the scorer: validate,
        send the feature script) without waiting; ``complete`` takes their
        replies and sends the batch's writes (features, scoring, snapshots
        sent); ``settle`` waits for every write sent so far; ``finish`` then
        produces, tracks and commits (with the seconds since the batch was
        polled). While batch ``k``'s requests run on the servers, batch
        ``k + 1`` is polled, decoded and begun: no thread shares the
        interpreter, and a batch's offsets are committed after its effects, in
        order. Batches are begun, completed and finished in poll order. Only
        behind the stream (a batch of at least half ``max_records``) does a
        batch wait in flight for the next poll; keeping up, each is finished
        at once, so its results do not wait for the next batch.

        After a failure ``reset`` drops what is in flight (replies not read);
        a transient failure gives up every batch in flight, and :meth:`recover`
        seeks back and backs off, as do partitions revoked meanwhile (the
        batches are read again).
        """
        attempt = 0
        begun: deque[_Flight[B]] = deque()
        done: _Flight[R] | None = None
        #: Every batch polled and not finished, oldest first (read again after a failure).
        unfinished: deque[Polled] = deque()
        while unfinished or not self.stopping.is_set():
            try:
                polled = None
                if not self.stopping.is_set():
                    polled = self.poll(wait=not unfinished)
                    if polled.records:
                        unfinished.append(polled)
                        started = time.perf_counter()
                        begun.append(_Flight(polled, begin(polled), started, self.revocations))
                    elif not unfinished:
                        idle()
                        self.health.done(0)
                        attempt = 0
                        continue
                # Behind the stream (a large batch came), the newest batch stays in
                # flight while the one before it is completed; keeping up, every
                # batch is completed and finished at once (its results wait for nothing).
                behind = polled is not None and 2 * len(polled.records) >= self.max_records
                if done is not None:
                    self._settle_and_finish(done, unfinished, settle, finish)
                    done = None
                while begun and (len(begun) == 2 or not behind):
                    oldest = begun.popleft()
                    value = complete(oldest.value)
                    done = _Flight(oldest.polled, value, oldest.started, oldest.revocations)
                    if not behind:
                        self._settle_and_finish(done, unfinished, settle, finish)
                        done = None
                attempt = 0
            except _ReadAgain:
                reset()
                self.read_again([r for batch in unfinished for r in batch.records])
                begun.clear()
                unfinished.clear()
                done = None
            except Exception as exc:
                if not transient(exc):
                    raise
                reset()
                failed = Polled([r for batch in unfinished for r in batch.records], {})
                begun.clear()
                unfinished.clear()
                done = None
                self.recover(failed, exc, attempt, healthy)
                attempt += 1

    def _settle_and_finish(
        self,
        done: _Flight[R],
        unfinished: deque[Polled],
        settle: Callable[[], None],
        finish: Callable[[Polled, R, float], None],
    ) -> None:
        """Wait for a completed batch's writes, finish it and take it off ``unfinished``.

        Partitions revoked since it was polled: nothing is finished, every batch
        in flight is read again (:class:`_ReadAgain`).
        """
        settle()
        if self.revocations != done.revocations:
            log.info("%s: batches processed in a rebalance are read again", self.name)
            raise _ReadAgain
        finish(done.polled, done.value, time.perf_counter() - done.started)
        unfinished.popleft()
        self.health.done(len(done.polled.records))

    def _poll_ahead(self, in_hand: _InHand[R] | None) -> Polled | None:
        """The next batch, or ``None``: first finish the batch in hand, or stop."""
        if self.stopping.is_set():
            return None
        if in_hand is None:
            return self.poll()
        # Only what is fetched already: the batch in hand must not wait for the next.
        return self.poll(wait=False) if in_hand.behind else None

    def _finish(
        self,
        batch: _InHand[R],
        polled: Polled | None,
        finish: Callable[[Polled, R, float], None],
    ) -> bool:
        """Finish a processed batch; ``False`` when it (and ``polled``) must be read again."""
        result = batch.future.result()
        if self.revocations != batch.revocations:
            # Positions of revoked partitions were reset or moved to another member.
            log.info("%s: a batch processed during a rebalance is read again", self.name)
            self.read_again(batch.polled.records + (polled or _NOTHING).records)
            return False
        finish(batch.polled, result, time.perf_counter() - batch.started)
        self.health.done(len(batch.polled.records))
        return True

    def poll(self, *, wait: bool = True) -> Polled:
        """One bounded batch (possibly empty): process it, or hand it to :meth:`recover`.

        ``wait=False`` returns at once with what is already fetched (a batch is
        in hand and waits to be finished).
        """
        # The positions are where processing stands, or (a batch in hand, the
        # scorer overlapping batches) one batch ahead of it: lag is that much low.
        self.measure_lag(every_s=5.0)
        polled = self._poll(self.wait_ms if wait else 0)
        if wait and not polled.records:
            # Idle: nothing in hand either; readiness needs a fresh "nothing to do".
            self.measure_lag(every_s=0.0 if self._lag_stale else 1.0)
        self._lag_stale = bool(polled.records)
        return polled

    def _poll(self, timeout_ms: int) -> Polled:
        try:
            batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.max_records)
        except CorruptRecordError as exc:
            damaged = unreadable_batch(exc)
            if damaged is None:
                raise
            polled = self._set_aside(damaged, exc)
        else:
            records = [r for batch in batches.values() for r in batch]
            # Records of a partition come in offset order.
            spans = {
                tp: Span(batch[0].offset, batch[-1].offset)
                for tp, batch in batches.items()
                if batch
            }
            polled = Polled(records, spans)
        self.metrics.last_loop_s.set(time.time())
        for topic, old_id, new_id in self._topic_ids.changed():
            self._recreated(topic, old_id, new_id)
        for reset in self._resets.take():
            self._report_reset(reset)
        membership = self.consumer.group_metadata().state
        if not group_coordinator_known(self.consumer):
            membership = _COORDINATOR_UNKNOWN
        self.health.polled(membership, len(self.consumer.assignment()))
        return polled

    def _set_aside(self, damaged: UnreadableBatch, error: CorruptRecordError) -> Polled:
        """Records the log cannot give (a damaged batch) as one dead letter; the partition goes on.

        Every fetch from the batch fails the same way, so the consumer seeks
        past it and the caller gets one :class:`UnreadableRecord` holding its
        bytes, which becomes a dead letter; its span covers the batch, so the
        offsets past it are committed only once that dead letter is durable,
        like any other record's. A read again (a failed batch, a restart)
        finds the batch damaged again and sets it aside again. Where the batch
        ends: :func:`~fraudstream.service.kafka.records.seek_past`.
        """
        tp = TopicPartition(damaged.topic, damaged.partition)
        last = seek_past(self.consumer, damaged)
        reason = (
            f"{tp.topic}[{tp.partition}] offsets {damaged.first_offset}..{last} cannot be read"
            f" ({error}); their {len(damaged.raw)} bytes are this dead letter's value,"
            f" and the partition goes on from offset {last + 1}"
        )
        log.error("%s: %s", self.name, reason)
        record = UnreadableRecord(
            topic=tp.topic,
            partition=tp.partition,
            offset=damaged.first_offset,
            value=damaged.raw,
            error=UnreadableRecordsError(reason),
        )
        return Polled([record], {tp: Span(damaged.first_offset, last)})

    def _recreated(self, topic: str, old_id: object, new_id: object) -> NoReturn:
        """``topic`` was deleted and created again: a restart reads it from its start."""
        partitions = [tp for tp in self.consumer.assignment() if tp.topic == topic]
        self._start_over(
            self.consumer.beginning_offsets(partitions),
            f"topic {topic} was deleted and created again while {self.name} read it (topic id"
            f" {old_id} -> {new_id}): its records before this member's position would never be"
            " read",
        )

    def _start_over(self, positions: Mapping[TopicPartition, int], why: str) -> NoReturn:
        """Commit ``positions`` (their logs were replaced) and stop, for a restart to read on.

        What this member did on those partitions is forgotten (the batch just
        polled included) and the loop stops: a new member (what the supervisor
        or the orchestrator starts) reads from ``positions``, and what was
        processed already is recognised as a replay. Going on here instead would
        mix offsets of the old and the new log in batches still in flight.
        """
        self.checkpoint.start_over(positions)
        where = ", ".join(
            f"{tp.topic}[{tp.partition}] {offset}"
            for tp, offset in sorted(positions.items(), key=lambda item: item[0].partition)
        )
        raise LogReplacedError(
            f"{why}; the group's offsets now point at {where}, and this process stops so that"
            " a restart reads on from there"
        )

    def _report_reset(self, reset: OffsetReset) -> None:
        """Report a position Kafka moved on (records skipped); start over from one moved back."""
        tp = reset.partition
        if reset.skipped:
            self.metrics.records_lost.labels(tp.topic).inc(reset.skipped)
            log.error(
                "%s: %s partition %d: %d records (offsets %d to %d) were deleted from Kafka "
                "before this group read them (retention, delete-records or a truncated "
                "partition) and are never processed; reading on from offset %d",
                self.name,
                tp.topic,
                tp.partition,
                reset.skipped,
                reset.old,
                reset.new - 1,
                reset.new,
            )
        elif reset.new < reset.old:
            self._start_over(
                {tp: reset.new},
                f"{tp.topic} partition {tp.partition} no longer reaches offset {reset.old}"
                " (the topic created again, or the partition truncated)",
            )

    def recover(
        self, polled: Polled, exc: BaseException, attempt: int, healthy: Callable[[], bool]
    ) -> None:
        """After a failed batch: abort, seek back to where the work began, back off."""
        redis_failed = isinstance(exc, redis.RedisError | RedisUnavailableError)
        dependency = "redis" if redis_failed else "kafka"
        self.metrics.dependency_error(dependency)
        reason = f"{type(exc).__name__}: {exc}"
        self.health.failed(reason)
        self._failures.warn(self.name, len(polled.records), reason)
        resume: dict[TopicPartition, int] = {}
        try:
            resume = self.checkpoint.abort()
        except ProducerFailedError:
            raise  # no retry can help: the scorer stops
        except Exception as abort_exc:  # the batch is replayed either way
            log.warning("%s: abort failed (%s)", self.name, abort_exc)
        self._rewind(polled.records, resume)
        if isinstance(exc, CommitFailedError):
            self._prove_membership()
        self._back_off(attempt, healthy)

    def _prove_membership(self) -> None:
        """After a refused commit, let the consumer learn whether its group still knows it.

        A transactional offset commit that the group refuses (a broker restart
        forgot this member) tells the producer only; the consumer goes on
        with its old generation until a heartbeat fails, and every retry is
        refused meanwhile. A group commit of the positions (nothing is in
        hand) is refused the same way and makes the consumer rejoin at its
        next poll.
        """
        try:
            self.confirm_membership()
        except Exception as exc:
            log.info("%s: the group does not know this member (%s); it joins again", self.name, exc)

    def read_again(self, records: Sequence[ConsumerRecord]) -> None:
        """Seek the owned partitions of ``records`` back to their first record."""
        self._rewind(records, {})

    def _rewind(self, records: Sequence[ConsumerRecord], resume: dict[TopicPartition, int]) -> None:
        """Seek back to where unfinished work began so it is processed again."""
        first = dict(resume)
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            first[tp] = min(first.get(tp, r.offset), r.offset)
        assigned = self.consumer.assignment()
        for tp, offset in first.items():
            # A partition lost meanwhile starts, for its next owner, from the committed offset.
            if tp in assigned:
                self.consumer.seek(tp, offset)

    def _back_off(self, attempt: int, healthy: Callable[[], bool]) -> None:
        """Wait (exponentially, up to 30 s) with partitions paused, staying in the group."""
        delay = backoff_s(attempt)
        deadline = time.monotonic() + delay
        self.backing_off = True
        try:
            while time.monotonic() < deadline and not self.stopping.is_set():
                # Partitions assigned in a rebalance meanwhile are paused too...
                self.consumer.pause(*self.consumer.assignment())
                polled = self._poll(200)  # keeps the membership alive
                # ...and whatever a poll returns anyway is read again later, never dropped.
                self._rewind(polled.records, {})
                self.measure_lag(every_s=1.0)
                if healthy():
                    break
        finally:
            self.backing_off = False
            self.consumer.resume(*self.consumer.paused())

    def confirm_membership(self) -> None:
        """When idle after Kafka was away, commit the positions.

        This proves the group still knows this member (after a broker restart it may not, until a
        heartbeat says so).

        Call only with no work in hand: the positions are then what is committed anyway.
        """
        if (
            not self.health.unconfirmed
            or self.consumer.group_metadata().state != MemberState.STABLE
        ):
            return
        owned = list(self.consumer.assignment())
        if not owned:
            return
        positions = self._positions(owned)
        if positions is None:
            return  # not known within the timeout: the next idle turn tries again
        self.checkpoint.confirm(positions)
        self.health.confirmed()

    def _positions(self, owned: Sequence[TopicPartition]) -> dict[TopicPartition, int] | None:
        """The position of every owned partition, or ``None`` when one is not known yet."""
        positions: dict[TopicPartition, int] = {}
        for tp in owned:
            position = self.consumer.position(tp, timeout_ms=2000)
            if position is None:
                return None
            positions[tp] = position
        return positions

    def measure_lag(self, every_s: float = 5.0) -> None:
        """Records behind the log end per owned partition (at most every ``every_s``).

        Call with no batch in hand, so positions say where processing stands.
        Measured against the broker's end offsets, not the last fetch's high
        watermark, so paused partitions and a stuck batch show their true lag.
        """
        now = time.monotonic()
        if now - self._lag_at < every_s:
            return
        self._lag_at = now
        owned = list(self.consumer.assignment())
        if not owned:
            self.health.lag(0)
            return
        try:
            ends = self.consumer.end_offsets(owned, timeout_ms=2000)
            positions = self._positions(owned)
        except Exception as exc:  # broker away, or positions not fetched yet
            self.health.lag(None, f"{type(exc).__name__}: {exc}")
            return
        if positions is None:
            self.health.lag(None, "positions not fetched yet")
            return
        behind = {tp: ends[tp] - positions[tp] for tp in owned}
        self.metrics.report_lag(
            self.name, {(tp.topic, tp.partition): max(0, lag) for tp, lag in behind.items()}
        )
        self._lag_labels.update(behind)
        self.health.lag(sum(max(0, lag) for lag in behind.values()))

    def forget_lag(self, partitions: Sequence[TopicPartition]) -> None:
        """Drop the lag gauges of partitions this member no longer owns."""
        for tp in partitions:
            if tp in self._lag_labels:
                self._lag_labels.discard(tp)
                with contextlib.suppress(KeyError):
                    self.metrics.lag.remove(self.name, tp.topic, str(tp.partition))
