"""Labels that came before their transaction was scored, kept in Redis until it is.

A label is learnt from the feature snapshot its transaction was scored with
(:mod:`fraudstream.service.snapshots`). A label can come first: the scorer is
behind (a backlog after an outage, both topics replayed at once), or the
transaction is still on its way. Such a label waits, up to ``label_wait_s``
after the learner first saw it, in one sorted set in Redis (score: its
deadline in epoch milliseconds; member: the consumed record, so a dead letter
still carries the original bytes, headers and source offset). The learner
looks for the snapshots of the waiting labels every few seconds
(:meth:`WaitingLabels.due`): found, the label is learnt; past its deadline,
it is dead-lettered as a label without a snapshot always was, the wait in
the reason.

Nothing is lost to a crash: a label is added before the offsets past it can be
committed, and taken off (:meth:`WaitingLabels.remove`) only once what became
of it is durable -- the model version that learnt it published, or its dead
letter acknowledged. A learner killed in between finds it again; its label
claim makes a second learning a duplicate.

At most :data:`WAITING_CAPACITY` labels wait, each record of at most
:data:`WAITING_RECORD_MAX_BYTES`; others are dead-lettered at once.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from fraudstream.service.label_pipeline import LabelBatchOutcome, LabelPipeline
from fraudstream.service.pipeline import ConsumedRecord

#: Most labels waiting at once (~200 bytes of Redis each); more are dead-lettered.
WAITING_CAPACITY = 20_000
#: Largest label record (key, value and headers) that may wait: labels keep
#: unknown fields, and 20,000 records of a megabyte would not fit in Redis.
WAITING_RECORD_MAX_BYTES = 4096


@dataclass(slots=True)
class WaitingRecord:
    """A consumed label record as it was kept (a :class:`ConsumedRecord`)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WaitingLabel:
    """One waiting label: its record, its deadline and its member in the set."""

    record: WaitingRecord
    deadline_ms: float
    member: bytes


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def _size(record: ConsumedRecord) -> int:
    """Bytes of a record's key, value and headers."""
    headers = sum(len(name) + len(value or b"") for name, value in record.headers or [])
    return len(record.key or b"") + len(record.value or b"") + headers


def encode_record(record: ConsumedRecord) -> bytes:
    """The set member of ``record``: the same bytes for the same record (so adding twice adds once).

    >>> r = WaitingRecord("labels", 2, 41, 1_700_000_000_000, b"k", b"{}", [("h", b"v")])
    >>> decode_record(encode_record(r)) == r
    True
    """
    return orjson.dumps(
        [
            record.topic,
            record.partition,
            record.offset,
            record.timestamp,
            _b64(record.key),
            _b64(record.value),
            [[name, _b64(value)] for name, value in record.headers or []],
        ]
    )


def decode_record(member: bytes) -> WaitingRecord:
    """The record :func:`encode_record` kept."""
    topic, partition, offset, timestamp, key, value, headers = orjson.loads(member)
    return WaitingRecord(
        topic,
        partition,
        offset,
        timestamp,
        _unb64(key),
        _unb64(value),
        [(name, _unb64(data) or b"") for name, data in headers],
    )


class WaitingLabels:
    """The waiting labels of one deployment (``{prefix}:{labels-waiting}``, one key).

    Parameters
    ----------
    client
        A Redis client, single node or cluster (the set is one key in one slot).
    prefix
        Key prefix (``Settings.redis_prefix``).
    capacity
        Most labels waiting at once.
    max_bytes
        Largest record that may wait (key, value and headers).
    """

    def __init__(
        self,
        client: Any,
        prefix: str,
        capacity: int = WAITING_CAPACITY,
        max_bytes: int = WAITING_RECORD_MAX_BYTES,
    ) -> None:
        self.client = client
        self.key = f"{prefix}:{{labels-waiting}}"
        self.capacity = capacity
        self.max_bytes = max_bytes

    def add(self, records: Sequence[ConsumedRecord], deadline_ms: float) -> list[ConsumedRecord]:
        """Keep ``records`` until ``deadline_ms``; returns those that cannot wait.

        They cannot when :attr:`capacity` labels wait already or their record is
        over :attr:`max_bytes`. A record already waiting keeps its first deadline.
        """
        if not records:
            return []
        small = [r for r in records if _size(r) <= self.max_bytes]
        room = max(0, self.capacity - int(self.client.zcard(self.key)))
        kept = small[:room]
        if kept:
            self.client.zadd(self.key, {encode_record(r): deadline_ms for r in kept}, nx=True)
        chosen = {id(r) for r in kept}
        return [r for r in records if id(r) not in chosen]

    def due(self) -> list[WaitingLabel]:
        """Every waiting label, earliest deadline first."""
        members = self.client.zrange(self.key, 0, self.capacity - 1, withscores=True)
        return [
            WaitingLabel(decode_record(member), float(score), member) for member, score in members
        ]

    def remove(self, members: Iterable[bytes]) -> None:
        """Take settled labels off (after what became of them is durable)."""
        chosen = list(members)
        if chosen:
            self.client.zrem(self.key, *chosen)

    def count(self) -> int:
        """Labels waiting now."""
        return int(self.client.zcard(self.key))


class LabelWaits:
    """The learner's side of the waiting labels: keep, look again, take off once durable.

    Parameters
    ----------
    store
        The waiting labels in Redis.
    pipeline
        The learner's label pipeline (its ``wait_ms`` is the wait; 0: no waiting).
    clock
        Monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        store: WaitingLabels,
        pipeline: LabelPipeline,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.clock = clock
        #: Looked for again every few seconds (and at once after a start).
        self.every_s = min(5.0, max(0.5, pipeline.wait_ms / 10_000))
        self._next_s = 0.0
        #: Settled (learnt, or dead-lettered) and taken off only once that is
        #: durable: after the next publish and commit (:meth:`durable`).
        self._settled: set[bytes] = set()

    def keep(self, outcome: LabelBatchOutcome) -> None:
        """Keep the labels of ``outcome`` that wait; those that do not fit go to its dead letters.

        Call before the offsets past them can be committed.
        """
        if not outcome.waiting:
            return
        deadline_ms = self.pipeline.clock_ms() + self.pipeline.wait_ms
        full = self.store.add(outcome.waiting, deadline_ms)
        if full:
            reason = (
                f"no feature snapshot, and it cannot wait for one: {self.store.capacity} labels "
                f"wait already, or its record is over {self.store.max_bytes} bytes"
            )
            given_up = self.pipeline.give_up(full, reason)
            outcome.outgoing += given_up.outgoing
            outcome.dead_letters += given_up.dead_letters
            outcome.missing_snapshots += given_up.missing_snapshots

    def look_again(self) -> LabelBatchOutcome | None:
        """Every few seconds: the waiting labels through the pipeline again (``None``: not now).

        The returned outcome's records (dead letters) are to be produced with the batch's.
        """
        if self.pipeline.wait_ms <= 0 or self.clock() < self._next_s:
            return None
        self._next_s = self.clock() + self.every_s
        due = [w for w in self.store.due() if w.member not in self._settled]
        if not due:
            return LabelBatchOutcome()
        outcome = self.pipeline.process([w.record for w in due], [w.deadline_ms for w in due])
        self._settled.update(due[i].member for i in outcome.settled)
        return outcome

    def settled(self) -> int:
        """Labels settled (learnt or dead-lettered) and not taken off yet (:meth:`durable`)."""
        return len(self._settled)

    def waiting(self) -> int:
        """Labels waiting and not settled."""
        return self.store.count() - len(self._settled)

    def durable(self) -> None:
        """What became of the settled labels is durable (published and committed): take them off."""
        self.store.remove(self._settled)
        self._settled.clear()

    def forget(self) -> None:
        """A turn failed: what it settled may not be durable, so look at those labels again."""
        self._settled.clear()
