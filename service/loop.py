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

The work itself (what a batch means, when to commit) is the caller's: the
scorer and learner loops in :mod:`fraudstream.service.app`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition

from fraudstream.service.checkpoint import Checkpoint, Span
from fraudstream.service.kafka import subscribe
from fraudstream.service.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Polled:
    """What one poll returned: the records, and per partition their first and last offset."""

    records: list[Any]
    spans: dict[TopicPartition, Span]


class _Rebalance(ConsumerRebalanceListener):
    """Forgets the offsets of partitions this member loses; pauses new ones during a back-off.

    kafka-python calls it on its network thread while the loop's thread waits in ``poll``.
    """

    def __init__(self, loop: ConsumeLoop) -> None:
        self._loop = loop

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._loop.checkpoint.forget(revoked)

    def on_partitions_assigned(self, assigned: Any) -> None:
        if self._loop.backing_off and assigned:
            self._loop.consumer.pause(*assigned)
        log.info(
            "%s assigned %s%s",
            self._loop.name,
            sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned),
            " (paused: backing off)" if self._loop.backing_off else "",
        )


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
        consumer: KafkaConsumer,
        checkpoint: Checkpoint,
        *,
        max_records: int,
        wait_ms: int,
        stopping: threading.Event,
        metrics: Metrics,
    ) -> None:
        self.name = name
        self.consumer = consumer
        self.checkpoint = checkpoint
        self.max_records = max_records
        self.wait_ms = wait_ms
        self.stopping = stopping
        self.metrics = metrics
        self.backing_off = False
        self._next_lag_s = 0.0

    def subscribe(self, topics: list[str]) -> None:
        """Join the group for ``topics``, with this loop's rebalance listener."""
        subscribe(self.consumer, topics, listener=_Rebalance(self))

    def poll(self) -> Polled:
        """One bounded batch (possibly empty): process it, or hand it to :meth:`recover`."""
        return self._poll(self.wait_ms)

    def _poll(self, timeout_ms: int) -> Polled:
        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.max_records)
        records = [r for batch in batches.values() for r in batch]
        # Records of a partition come in offset order.
        spans = {
            tp: Span(batch[0].offset, batch[-1].offset) for tp, batch in batches.items() if batch
        }
        self.metrics.last_loop_s.set(time.time())
        return Polled(records, spans)

    def recover(
        self, polled: Polled, exc: BaseException, attempt: int, healthy: Callable[[], bool]
    ) -> None:
        """After a failed batch: abort, seek back to where the work began, back off."""
        dependency = "redis" if isinstance(exc, redis.RedisError) else "kafka"
        self.metrics.errors.labels(dependency).inc()
        log.warning(
            "%s batch of %d not committed (%s: %s); retrying after back-off",
            self.name,
            len(polled.records),
            type(exc).__name__,
            exc,
        )
        resume: dict[TopicPartition, int] = {}
        try:
            resume = self.checkpoint.abort()
        except Exception as abort_exc:  # the batch is replayed either way
            log.warning("%s: abort failed (%s)", self.name, abort_exc)
        self._rewind(polled.records, resume)
        self._back_off(attempt, healthy)

    def _rewind(self, records: Sequence[Any], resume: dict[TopicPartition, int]) -> None:
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
        delay = min(30.0, 0.5 * 2**attempt)
        deadline = time.monotonic() + delay
        self.backing_off = True
        try:
            while time.monotonic() < deadline and not self.stopping.is_set():
                # Partitions assigned in a rebalance meanwhile are paused too...
                self.consumer.pause(*self.consumer.assignment())
                polled = self._poll(200)  # keeps the membership alive
                # ...and whatever a poll returns anyway is read again later, never dropped.
                self._rewind(polled.records, {})
                if healthy():
                    break
        finally:
            self.backing_off = False
            self.consumer.resume(*self.consumer.paused())

    def report_lag(self, every_s: float = 5.0) -> None:
        """Set the lag gauge of every owned partition (at most every ``every_s``)."""
        if time.monotonic() < self._next_lag_s:
            return
        self._next_lag_s = time.monotonic() + every_s
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            if highwater is None:
                continue
            with contextlib.suppress(Exception):
                position = self.consumer.position(tp, timeout_ms=1000)
                if position is not None:
                    self.metrics.lag.labels(tp.topic, str(tp.partition)).set(highwater - position)
