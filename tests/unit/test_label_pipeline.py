"""The learner's batch path with in-memory doubles: validate, learn, dead-letter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

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
    """Learns every label it has a snapshot for; the first of a repeated id only."""

    def __init__(self, scored: set[str]) -> None:
        self.scored = scored
        self.learnt: list[Label] = []

    def learn_many(self, labels: Sequence[Label]) -> LearnOutcome:
        rejected = [
            RejectedLabel(
                lb, "MissingSnapshotError", f"no feature snapshot for {lb.transaction_id}"
            )
            for lb in labels
            if lb.transaction_id not in self.scored
        ]
        seen = {lb.transaction_id for lb in self.learnt}
        fresh = []
        for lb in labels:
            if lb.transaction_id in self.scored and lb.transaction_id not in seen:
                seen.add(lb.transaction_id)
                fresh.append(lb)
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
    ]

    outcome = pipeline.process(records)

    assert (outcome.learnt, outcome.duplicates, outcome.missing_snapshots) == (3, 1, 1)
    assert [(lb.transaction_id, lb.is_fraud) for lb in learner.learnt] == [
        ("0", False),
        ("1", True),
        ("2", False),
    ]
    assert [(o.topic, o.key, o.value) for o in outcome.outgoing] == [
        ("labels.dlq", b"b", b"{not json"),
        ("labels.dlq", b"c", records[2].value),
    ]
    headers = [dict(o.headers or []) for o in outcome.outgoing]
    assert headers[0]["fraudstream.error.class"] == b"DecodeError"
    assert headers[1]["fraudstream.error.class"] == b"MissingSnapshotError"
    assert headers[1]["fraudstream.source.offset"] == b"2"
    assert [x.error_class for x in outcome.dead_letters] == ["DecodeError", "MissingSnapshotError"]
