"""The learner's batch path with in-memory doubles: validate, learn, dead-letter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from fraudstream.service.errors import LabelConflictError, MissingSnapshotError
from fraudstream.service.label_pipeline import LabelPipeline
from fraudstream.service.learner import LearnOutcome, RejectedLabel
from fraudstream.service.schemas import Label


@dataclass
class Record:
    value: bytes | None
    offset: int = 0
    key: bytes | None = None
    topic: str = "labels"
    partition: int = 0
    timestamp: int = 1_700_000_000_000
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def _label(tx: str, fraud: bool) -> bytes:
    return orjson.dumps(
        {"transaction_id": tx, "is_fraud": fraud, "labeled_at": "2024-01-01T00:00:00Z"}
    )


class StubLearner:
    """Learns every label it has a snapshot for; the first of a repeated id only.

    A repeated id with the other verdict is rejected as a conflict.
    """

    def __init__(self, scored: set[str], other_set: frozenset[str] = frozenset()) -> None:
        self.scored = scored
        self.other_set = other_set  # scored with another feature set
        self.learnt: list[Label] = []
        self.given_up = 0

    def gave_up(self, count: int) -> None:
        self.given_up += count

    def learn_many(self, labels: Sequence[Label]) -> LearnOutcome:
        rejected = [
            RejectedLabel(
                lb,
                MissingSnapshotError,
                f"no feature snapshot for {lb.transaction_id}",
                waitable=lb.transaction_id not in self.other_set,
            )
            for lb in labels
            if lb.transaction_id not in self.scored
        ]
        seen = {lb.transaction_id: lb.is_fraud for lb in self.learnt}
        fresh = []
        for lb in labels:
            if lb.transaction_id not in self.scored:
                continue
            if lb.transaction_id not in seen:
                seen[lb.transaction_id] = lb.is_fraud
                fresh.append(lb)
            elif seen[lb.transaction_id] != lb.is_fraud:
                rejected.append(RejectedLabel(lb, LabelConflictError, "labelled otherwise"))
        self.learnt += fresh
        duplicates = len(labels) - len(rejected) - len(fresh)
        frauds = sum(lb.is_fraud for lb in fresh)
        return LearnOutcome(len(fresh), frauds, duplicates, tuple(rejected))


def test_labels_are_learnt_bad_and_unlearnable_ones_dead_lettered_with_their_bytes() -> None:
    learner = StubLearner({"0", "1", "2"})
    pipeline = LabelPipeline(
        learner,  # type: ignore[arg-type]
        topic_dlq="labels.dlq",
        max_message_bytes=1024,
        clock_ms=lambda: 1.0e12,
    )
    records = [
        Record(_label("0", False), offset=0, key=b"a"),
        Record(b"{not json", offset=1, key=b"b"),
        Record(_label("never-scored", True), offset=2, key=b"c"),
        Record(_label("1", True), offset=3),
        Record(_label("0", False), offset=4),  # sent twice
        Record(_label("2", False), offset=5),
        Record(_label("1", False), offset=6, key=b"g"),  # the other verdict
    ]

    outcome = pipeline.process(records)

    assert (outcome.learnt, outcome.duplicates, outcome.missing_snapshots) == (3, 1, 1)
    assert outcome.conflicts == 1
    assert [(lb.transaction_id, lb.is_fraud) for lb in learner.learnt] == [
        ("0", False),
        ("1", True),
        ("2", False),
    ]
    assert [(o.topic, o.key, o.value) for o in outcome.outgoing] == [
        ("labels.dlq", b"b", b"{not json"),
        ("labels.dlq", b"c", records[2].value),
        ("labels.dlq", b"g", records[6].value),
    ]
    headers = [dict(o.headers or []) for o in outcome.outgoing]
    assert headers[0]["fraudstream.error.class"] == b"DecodeError"
    assert headers[1]["fraudstream.error.class"] == b"MissingSnapshotError"
    assert headers[1]["fraudstream.source.offset"] == b"2"
    assert headers[2]["fraudstream.error.class"] == b"LabelConflictError"
    assert headers[2]["fraudstream.error.message"] == b"labelled otherwise"
    assert [x.error_class for x in outcome.dead_letters] == [
        "DecodeError",
        "MissingSnapshotError",
        "LabelConflictError",
    ]


def test_a_label_without_its_snapshot_waits_then_is_learnt_or_dead_lettered_at_its_deadline() -> (
    None
):
    learner = StubLearner({"0"}, other_set=frozenset({"other"}))
    now = [1.0e12]
    pipeline = LabelPipeline(
        learner,  # type: ignore[arg-type]
        topic_dlq="labels.dlq",
        max_message_bytes=1024,
        wait_ms=60_000,
        clock_ms=lambda: now[0],
    )
    records = [
        Record(_label("0", False), offset=0),
        Record(_label("late", True), offset=1),  # scored later
        Record(_label("never", True), offset=2),  # never scored
        Record(_label("other", False), offset=3),  # another feature set: cannot wait
    ]

    first = pipeline.process(records)
    assert first.learnt == 1
    assert first.waiting == [records[1], records[2]]
    assert [dict(o.headers or [])["fraudstream.source.offset"] for o in first.outgoing] == [b"3"]
    assert (first.missing_snapshots, first.settled) == (1, [])

    # Looked at again before the deadline: "late" has its snapshot now, "never" waits on.
    learner.scored.add("late")
    deadline = now[0] + 60_000
    now[0] += 5_000
    again = pipeline.process(first.waiting, [deadline, deadline])
    assert (again.learnt, again.settled, again.outgoing, again.waiting) == (1, [0], [], [])
    assert [lb.transaction_id for lb in learner.learnt] == ["0", "late"]

    # At its deadline: dead-lettered with its own bytes and offset, the wait in the reason.
    now[0] = deadline
    last = pipeline.process([records[2]], [deadline])
    assert (last.learnt, last.settled, last.missing_snapshots) == (0, [0], 1)
    (letter,) = last.outgoing
    headers = dict(letter.headers or [])
    assert letter.value == records[2].value
    assert headers["fraudstream.source.offset"] == b"2"
    assert b"after waiting 60 s" in headers["fraudstream.error.message"]
    assert learner.given_up == 1  # counted once, when dead-lettered, not at each look


def test_without_a_wait_a_label_without_its_snapshot_is_dead_lettered_at_once() -> None:
    pipeline = LabelPipeline(
        StubLearner(set()),  # type: ignore[arg-type]
        topic_dlq="labels.dlq",
        max_message_bytes=1024,
        wait_ms=0,
    )
    outcome = pipeline.process([Record(_label("x", True))])
    assert (outcome.waiting, outcome.missing_snapshots, len(outcome.outgoing)) == ([], 1, 1)
    given_up = pipeline.give_up([Record(_label("y", True), offset=7)], "no room")
    assert dict(given_up.outgoing[0].headers or [])["fraudstream.error.message"] == b"no room"
