"""Redis holds a view of the stream; Kafka holds the truth. Lost state is noticed and rebuilt.

Card histories, terminal day buckets, feature snapshots and id claims live in
Redis. A Redis restarted without persistence, or a flushed database, loses
them: a scorer that went on would score every card as new, silently. So:

* a **state marker** (``{prefix}:{state}``, a hash: ``generation``, ``origin``,
  ``created_at_ms``...) is written when the state is first created (a fresh
  deployment: the marker is missing and the scorers' group has committed
  nothing on ``transactions``) and when it is rebuilt;
* every feature script call checks the marker in the same atomic step and
  refuses to count anything when it is gone (:class:`StateLostError`): the
  scorer backs off with nothing committed, reports not ready and says why;
* :func:`rebuild_state` (``fraudstream state rebuild``) replays ``transactions``
  from *now - longest card window - allowed lateness* (by record timestamp)
  into the feature store, with snapshots so that pending labels can still be
  learnt, then ``labels`` from the same time into the label-aware features,
  and writes a new marker: the scorers resume where their offsets are, and
  what the rebuild already counted is recognised as a replay.

Model versions live in Redis too and are not in Kafka: after a loss the
learner starts a fresh model unless versions were exported
(``fraudstream model export``) and imported back. Run Redis with persistence
(``appendonly yes``) in production; the rebuild is the way back, not the plan.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kafka.errors import CorruptRecordError

from fraudstream.service.errors import ConfigurationError, RedisUnavailableError
from fraudstream.service.features.store import FeatureStore, LabelFact
from fraudstream.service.kafka.protocols import Consumer, TopicPartition
from fraudstream.service.kafka.records import seek_past, unreadable_batch
from fraudstream.service.pipeline import BatchValidation, refuse_ahead
from fraudstream.service.redis_cluster import (
    forget_feature_state,
    is_cluster,
    missing_slot_markers,
    write_slot_markers,
)
from fraudstream.service.schemas import Label, Transaction
from fraudstream.service.snapshots import CLAIM_CONFLICT, REBUILT_MODEL_VERSION, SnapshotStore

log = logging.getLogger(__name__)


class StateLostError(RedisUnavailableError):
    """The Redis state fraudstream built is gone (no state marker): nothing is counted.

    A dependency error: the scorer backs off with nothing committed until the
    state is rebuilt (``fraudstream state rebuild``).
    """


def marker_key(prefix: str) -> str:
    """Redis key of the state marker of ``prefix``.

    >>> marker_key("fs")
    'fs:{state}'
    """
    return f"{prefix}:{{state}}"


def lost_message(prefix: str) -> str:
    """What to tell an operator when the state marker is missing."""
    return (
        f"Redis state of prefix {prefix!r} is missing (no marker {marker_key(prefix)}): Redis "
        "restarted without persistence or was flushed. Scoring is paused; run "
        "`fraudstream state rebuild` to rebuild it from Kafka"
    )


@dataclass(frozen=True, slots=True)
class StateMarker:
    """The marker's fields: which state this is, and where it came from."""

    generation: str
    origin: str  # "fresh" (first start) or "rebuilt"
    created_at_ms: int
    details: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, client: Any, prefix: str) -> StateMarker | None:
        """The marker, or ``None`` when it is missing."""
        raw = client.hgetall(marker_key(prefix))
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            generation=fields.pop("generation", ""),
            origin=fields.pop("origin", "unknown"),
            created_at_ms=int(fields.pop("created_at_ms", "0")),
            details=fields,
        )

    @classmethod
    def write(cls, client: Any, prefix: str, origin: str, **details: object) -> StateMarker:
        """Write a new marker (a new generation) and return it."""
        marker = cls(
            generation=uuid.uuid4().hex,
            origin=origin,
            created_at_ms=int(time.time() * 1000),
            details={k: str(v) for k, v in details.items()},
        )
        if is_cluster(client):
            # The slots' markers first: a crash in between leaves the head marker
            # missing (the state reads as lost), never a head without slot markers.
            write_slot_markers(client, prefix, marker.generation)
        key = marker_key(prefix)
        pipe = client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(
            key,
            mapping={
                "generation": marker.generation,
                "origin": marker.origin,
                "created_at_ms": str(marker.created_at_ms),
                **marker.details,
            },
        )
        pipe.execute()
        return marker


def ensure_state(client: Any, prefix: str, group_has_offsets: Callable[[], bool]) -> StateMarker:
    """The state marker at start-up: found, created for a fresh deployment, or lost.

    Parameters
    ----------
    client
        Redis client.
    prefix
        Key prefix of the deployment.
    group_has_offsets
        Whether the scorers' consumer group has committed offsets on the
        transactions topic: called only when the marker is missing. A missing
        marker with committed offsets means the state was built and lost.

    Raises
    ------
    StateLostError
        When the marker is missing but the group has processed transactions.
    """
    marker = StateMarker.read(client, prefix)
    if marker is not None:
        if is_cluster(client):
            _ensure_slot_markers(client, prefix, marker, group_has_offsets)
        return marker
    if group_has_offsets():
        raise StateLostError(lost_message(prefix))
    # HSETNX-style creation: two scorers starting together write one generation.
    generation = uuid.uuid4().hex
    created = client.hsetnx(marker_key(prefix), "generation", generation)
    if created:
        client.hset(
            marker_key(prefix),
            mapping={"origin": "fresh", "created_at_ms": str(int(time.time() * 1000))},
        )
        log.info("new feature state for prefix %r (generation %s)", prefix, generation)
    found = StateMarker.read(client, prefix)
    assert found is not None
    if is_cluster(client):
        _ensure_slot_markers(client, prefix, found, group_has_offsets)
    return found


def _ensure_slot_markers(
    client: Any, prefix: str, marker: StateMarker, group_has_offsets: Callable[[], bool]
) -> None:
    """On a Redis Cluster: every slot has its marker, written now for a fresh deployment.

    Raises
    ------
    StateLostError
        Some slots lost their marker (a master restarted empty, a flushed node)
        and the scorers' group has processed transactions.
    """
    missing = missing_slot_markers(client, prefix)
    if not missing:
        return
    if marker.origin == "fresh" and not group_has_offsets():
        write_slot_markers(client, prefix, marker.generation)
        return
    raise StateLostError(
        f"{lost_message(prefix)} ({len(missing):,} of the cluster's 16,384 slots have no "
        f"state marker, e.g. slot {missing[0]})"
    )


# -- rebuild ---------------------------------------------------------------------------


@dataclass(slots=True)
class RebuildReport:
    """What :func:`rebuild_state` did."""

    since_ms: int
    transactions_read: int = 0
    transactions_counted: int = 0
    transactions_invalid: int = 0
    labels_read: int = 0
    fraud_labels_recorded: int = 0
    labels_without_transaction: int = 0
    #: Records of either topic that could not be read (a batch damaged in the broker's log).
    records_unreadable: int = 0
    seconds: float = 0.0
    generation: str = ""


def _partitions(consumer: Consumer, topic: str) -> list[TopicPartition]:
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise ConfigurationError(f"topic {topic!r} does not exist or has no partitions")
    return [TopicPartition(topic, p) for p in sorted(partitions)]


def read_since(
    consumer: Consumer,
    topic: str,
    since_ms: int,
    batch: int,
    unreadable: Callable[[int], None] = lambda _: None,
) -> Iterator[list[Any]]:
    """Batches of the records of ``topic`` from ``since_ms`` (record time) to its end now.

    The end is the end offset of each partition when the call starts: records
    produced meanwhile are left to the scorers, which see them as new. A batch
    damaged in the broker's log is skipped with an error in the log, its
    offsets told to ``unreadable``: nothing can rebuild from it.
    """
    partitions = _partitions(consumer, topic)
    consumer.assign(partitions)
    starts = consumer.offsets_for_times({tp: since_ms for tp in partitions})
    ends = consumer.end_offsets(partitions)
    remaining: dict[TopicPartition, int] = {}
    for tp in partitions:
        found = starts.get(tp)
        start = ends[tp] if found is None else found.offset
        if start < ends[tp]:
            consumer.seek(tp, start)
            remaining[tp] = ends[tp]
        else:
            consumer.pause(tp)
    while remaining:
        try:
            polled = consumer.poll(timeout_ms=500, max_records=batch)
        except CorruptRecordError as exc:
            damaged = unreadable_batch(exc)
            if damaged is None:
                raise
            last = seek_past(consumer, damaged)
            log.error(
                "%s[%d] offsets %d..%d cannot be read (%s): skipped, nothing rebuilt from them",
                damaged.topic,
                damaged.partition,
                damaged.first_offset,
                last,
                exc,
            )
            unreadable(last + 1 - damaged.first_offset)
            polled = {}
        out = [
            r
            for tp, records in polled.items()
            if tp in remaining
            for r in records
            if r.offset < remaining[tp]
        ]
        for tp, end in list(remaining.items()):
            # Positions, not offsets seen: a transaction's commit marker ends a log unseen.
            if (consumer.position(tp) or 0) >= end:
                del remaining[tp]
                consumer.pause(tp)
        if out:
            yield out


def rebuild_state(
    client: Any,
    consumer: Consumer,
    features: FeatureStore,
    snapshots: SnapshotStore,
    *,
    prefix: str,
    topic_transactions: str,
    topic_labels: str,
    since_ms: int,
    max_message_bytes: int,
    max_event_ahead_s: int = 0,
    batch: int = 2000,
    progress: Callable[[str], None] = lambda _: None,
) -> RebuildReport:
    """Rebuild the feature state from Kafka (see the module docstring) and write a new marker.

    ``features`` must not check the marker (it is missing until the end). A
    lock key keeps two rebuilds of one prefix from running together.
    """
    lock = f"{marker_key(prefix)}:rebuilding"
    if not client.set(lock, str(uuid.uuid4()), nx=True, ex=6 * 3600):
        raise ConfigurationError(
            f"a rebuild of prefix {prefix!r} is already running (lock {lock}); "
            "wait for it, or delete the lock if that process died"
        )
    report = RebuildReport(since_ms=since_ms)
    started = time.monotonic()
    validate_transactions, validate_labels = BatchValidation(), BatchValidation()
    try:
        if is_cluster(client):
            # Partial loss cannot be replayed slot by slot (see forget_feature_state).
            forget_feature_state(client, prefix)

        def unreadable(count: int) -> None:
            report.records_unreadable += count

        for records in read_since(consumer, topic_transactions, since_ms, batch, unreadable):
            report.transactions_read += len(records)
            transactions: list[Transaction]
            transactions, indices, failures = validate_transactions(records, max_message_bytes)
            # As the scorer did: the same record timestamps, the same refusals.
            transactions, _, ahead = refuse_ahead(
                records, transactions, indices, max_event_ahead_s * 1000
            )
            report.transactions_invalid += len(failures) + len(ahead)
            if not transactions:
                continue
            claims = snapshots.claim_many_ids(transactions)
            conflict = (claims == CLAIM_CONFLICT).tolist()
            usable = [tx for tx, bad in zip(transactions, conflict, strict=True) if not bad]
            computed = features.update_and_compute(usable)
            report.transactions_counted += int((~computed.is_duplicate).sum())
            snapshots.put_many(
                usable,
                computed.values,
                np.full(len(usable), np.nan),
                REBUILT_MODEL_VERSION,
                computed.names,
                keep_existing=computed.is_duplicate,
            )
            progress(f"transactions: {report.transactions_read:,} read")
        for records in read_since(consumer, topic_labels, since_ms, batch, unreadable):
            report.labels_read += len(records)
            labels: Sequence[Label]
            labels, _, _ = validate_labels(records, max_message_bytes, Label)
            frauds = [lb for lb in labels if lb.is_fraud]
            snaps = snapshots.get_many([lb.transaction_id for lb in frauds])
            facts = [
                LabelFact(lb.transaction_id, s.card_id, s.terminal_id, s.event_time_ms, True)
                for lb, s in zip(frauds, snaps, strict=True)
                if s is not None
            ]
            report.labels_without_transaction += len(frauds) - len(facts)
            features.record_labels(facts)
            report.fraud_labels_recorded += len(facts)
            progress(f"labels: {report.labels_read:,} read")
        report.seconds = time.monotonic() - started
        marker = StateMarker.write(
            client,
            prefix,
            "rebuilt",
            rebuilt_since_ms=since_ms,
            transactions_counted=report.transactions_counted,
            fraud_labels_recorded=report.fraud_labels_recorded,
        )
        report.generation = marker.generation
        return report
    finally:
        client.delete(lock)
