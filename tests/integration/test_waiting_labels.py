"""Labels waiting for their transaction's snapshot, against a real Redis."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import redis

from fraudstream.service.errors import MissingSnapshotError
from fraudstream.service.label_pipeline import LabelPipeline
from fraudstream.service.learner import LearnOutcome, RejectedLabel
from fraudstream.service.schemas import Label
from fraudstream.service.waiting_labels import LabelWaits, WaitingLabels, WaitingRecord


def _record(tx: str, offset: int) -> WaitingRecord:
    value = orjson.dumps(
        {"transaction_id": tx, "is_fraud": False, "labeled_at": "2024-01-01T00:00:00Z"}
    )
    return WaitingRecord("labels", 1, offset, 1_700_000_000_000, b"k", value, [("h", b"\x00")])


class Learner:
    """Learns the labels of ``scored`` transactions, once each."""

    def __init__(self) -> None:
        self.scored: set[str] = set()
        self.learnt: list[str] = []
        self.given_up = 0

    def gave_up(self, count: int) -> None:
        self.given_up += count

    def learn_many(self, labels: Sequence[Label]) -> LearnOutcome:
        rejected = [
            RejectedLabel(lb, MissingSnapshotError, "no feature snapshot", waitable=True)
            for lb in labels
            if lb.transaction_id not in self.scored
        ]
        fresh = [
            lb.transaction_id
            for lb in labels
            if lb.transaction_id in self.scored and lb.transaction_id not in self.learnt
        ]
        self.learnt += fresh
        return LearnOutcome(
            len(fresh), 0, len(labels) - len(rejected) - len(fresh), tuple(rejected)
        )


def test_the_set_keeps_each_record_once_in_deadline_order_up_to_its_capacity(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    store = WaitingLabels(redis_client, redis_prefix, capacity=3)
    assert store.add([_record("a", 5), _record("b", 6)], 2_000.0) == []
    assert store.add([_record("a", 5)], 9_000.0) == []  # already waiting: first deadline kept
    assert store.add([_record("z", 1)], 1_000.0) == []
    overflow = store.add([_record("c", 7), _record("d", 8)], 3_000.0)
    assert overflow == [_record("c", 7), _record("d", 8)]
    due = store.due()
    assert [(w.record, w.deadline_ms) for w in due] == [
        (_record("z", 1), 1_000.0),
        (_record("a", 5), 2_000.0),
        (_record("b", 6), 2_000.0),
    ]
    store.remove([due[0].member])
    assert store.count() == 2

    # A record over max_bytes never waits (labels keep unknown fields: it could be a megabyte).
    small = WaitingLabels(redis_client, redis_prefix + "-small", max_bytes=300)
    big = WaitingRecord("labels", 0, 9, 0, b"k", b'{"pad": "' + b"x" * 300 + b'"}', [])
    assert small.add([big, _record("e", 10)], 1.0) == [big]
    assert [w.record for w in small.due()] == [_record("e", 10)]


def test_waiting_labels_are_taken_off_only_once_durable_and_looked_at_again_after_a_failure(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    learner = Learner()
    now_ms, mono = [1.0e12], [0.0]
    pipeline = LabelPipeline(
        learner,  # type: ignore[arg-type]
        topic_dlq="labels.dlq",
        max_message_bytes=10_000,
        wait_ms=60_000,
        clock_ms=lambda: now_ms[0],
    )
    store = WaitingLabels(redis_client, redis_prefix, capacity=2)
    waits = LabelWaits(store, pipeline, clock=lambda: mono[0])

    first = pipeline.process([_record("t1", 0), _record("t2", 1), _record("t3", 2)])
    waits.keep(first)
    assert store.count() == 2  # the third did not fit: dead-lettered at once
    assert [dict(o.headers or [])["fraudstream.source.offset"] for o in first.outgoing] == [b"2"]
    assert first.missing_snapshots == 1

    learner.scored.add("t1")
    again = waits.look_again()
    assert again is not None and again.learnt == 1
    assert waits.look_again() is None  # not before every_s
    assert (store.count(), waits.waiting()) == (2, 1)  # t1 stays until durable

    # A failed turn: t1's learning may not be published, so it is looked at again
    # (the learner's label claim makes it a duplicate, not learnt twice).
    waits.forget()
    mono[0] += waits.every_s
    again = waits.look_again()
    assert again is not None and (again.learnt, again.duplicates) == (0, 1)
    waits.durable()
    assert [w.record for w in store.due()] == [_record("t2", 1)]

    # Its deadline passes: dead-lettered, taken off once durable.
    now_ms[0] += 60_000
    mono[0] += waits.every_s
    again = waits.look_again()
    assert again is not None and again.missing_snapshots == 1
    (letter,) = again.outgoing
    assert letter.value == _record("t2", 1).value
    assert dict(letter.headers or [])["h"] == b"\x00"
    waits.durable()
    assert store.count() == 0
    assert learner.learnt == ["t1"]
    assert learner.given_up == 2  # t3 (no room) and t2 (its deadline)
