"""One batch of labels, from consumed bytes to learning: the learner's path.

Follow a batch top to bottom in :meth:`LabelPipeline.process`, as a batch of
transactions in :meth:`fraudstream.service.pipeline.Pipeline.process`:

1. **validate** every record against the :class:`Label` contract; bad records
   become :class:`DeadLetter` s with their original bytes;
2. **learn** the valid labels (:meth:`Learner.learn_many`: the snapshot each
   transaction was scored with, each label claimed once, then ``learn_one``);
3. **dead-letter** the labels that cannot be learnt (no snapshot, or one of
   another feature set) with the reason;
4. return the records to produce (dead letters) and what was learnt.

Kafka stays outside: the learner loop polls, hands the records here, hands the
outgoing records and the offsets to the checkpoint, and commits only once a
published model version holds what was learnt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fraudstream.service.deadletter import DeadLetter
from fraudstream.service.errors import MissingSnapshotError
from fraudstream.service.learner import Learner
from fraudstream.service.pipeline import ConsumedRecord, Outgoing, dead_letter_of, validate_records
from fraudstream.service.schemas import LABEL_BATCH, Label


@dataclass(slots=True)
class LabelBatchOutcome:
    """What one batch of labels did, for the caller to produce and count."""

    outgoing: list[Outgoing] = field(default_factory=list)
    learnt: int = 0
    duplicates: int = 0
    missing_snapshots: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)


class LabelPipeline:
    """Validates a batch of label records and has the learner learn it.

    Parameters
    ----------
    learner
        Learns the valid labels.
    topic_dlq
        Where bad and unlearnable labels go.
    max_message_bytes
        Larger records are dead-lettered.
    dead_letter_max_bytes
        Dead-letter values are cut to fit this size (see :func:`dead_letter_of`).
    clock_ms
        Wall clock in epoch milliseconds (injectable for tests).
    """

    def __init__(
        self,
        learner: Learner,
        *,
        topic_dlq: str,
        max_message_bytes: int,
        dead_letter_max_bytes: int = 1_000_000,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000.0,
    ) -> None:
        self.learner = learner
        self.topic_dlq = topic_dlq
        self.max_message_bytes = max_message_bytes
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.clock_ms = clock_ms

    def process(self, records: Sequence[ConsumedRecord]) -> LabelBatchOutcome:
        """Process one batch; nothing here commits or produces."""
        labels: list[Label]
        labels, indices, failures = validate_records(
            records, self.max_message_bytes, Label, LABEL_BATCH
        )
        now_ms = int(self.clock_ms())
        cap = self.dead_letter_max_bytes
        letters = [dead_letter_of(records[i], error, now_ms, cap) for i, error in failures]

        learnt = self.learner.learn_many(labels)

        record_of = {id(label): records[i] for label, i in zip(labels, indices, strict=True)}
        for rejected in learnt.rejected:
            record = record_of[id(rejected.label)]
            letters.append(
                dead_letter_of(record, MissingSnapshotError(rejected.reason), now_ms, cap)
            )
        return LabelBatchOutcome(
            outgoing=[Outgoing(self.topic_dlq, x.key, x.value, x.headers) for x in letters],
            learnt=learnt.learnt,
            duplicates=learnt.duplicates,
            missing_snapshots=len(learnt.rejected),
            dead_letters=letters,
        )
