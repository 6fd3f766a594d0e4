"""One batch of labels, from consumed bytes to learning: the learner's path.

Follow a batch top to bottom in :meth:`LabelPipeline.process`, as a batch of
transactions in :meth:`fraudstream.service.pipeline.Pipeline.process`:

1. **validate** every record against the :class:`Label` contract; bad records
   become :class:`DeadLetter` s with their original bytes;
2. **learn** the valid labels (:meth:`Learner.learn_many`: the snapshot each
   transaction was scored with, each label claimed once, then ``learn_one``);
3. **wait** for the snapshots not there yet (``wait_ms``; the caller keeps
   those labels in :mod:`fraudstream.service.waiting_labels` and hands them
   back with their deadlines), and **dead-letter** the labels that cannot be
   learnt (no snapshot by their deadline, a snapshot of another feature set,
   a verdict opposite to the one learnt) with the reason;
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
from fraudstream.service.pipeline import BatchValidation, ConsumedRecord, Outgoing, dead_letter_of
from fraudstream.service.schemas import Label


@dataclass(slots=True)
class LabelBatchOutcome:
    """What one batch of labels did, for the caller to produce and count."""

    outgoing: list[Outgoing] = field(default_factory=list)
    learnt: int = 0
    duplicates: int = 0
    missing_snapshots: int = 0
    #: Labels saying the opposite of the label learnt for their transaction.
    conflicts: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: Records of labels seen for the first time whose snapshot is not there
    #: yet: the caller keeps them to wait (deadline ``now + wait_ms``).
    waiting: list[ConsumedRecord] = field(default_factory=list)
    #: Of records handed back with deadlines: the indices settled (learnt, a
    #: duplicate or dead-lettered); the others still wait.
    settled: list[int] = field(default_factory=list)


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
    wait_ms
        How long a label may wait for its transaction's snapshot after it was
        first seen (``label_wait_s``); 0: dead-lettered at once.
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
        wait_ms: int = 0,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000.0,
    ) -> None:
        self.learner = learner
        self.topic_dlq = topic_dlq
        self.max_message_bytes = max_message_bytes
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.wait_ms = wait_ms
        self.clock_ms = clock_ms
        self._validate = BatchValidation()

    def process(
        self, records: Sequence[ConsumedRecord], deadlines_ms: Sequence[float] | None = None
    ) -> LabelBatchOutcome:
        """Process one batch; nothing here commits or produces.

        ``deadlines_ms``: the records are waiting labels handed back, each with
        its deadline; without it they are seen for the first time.
        """
        labels: list[Label]
        labels, indices, failures = self._validate(records, self.max_message_bytes, Label)
        now_ms = int(self.clock_ms())
        cap = self.dead_letter_max_bytes
        letters = [dead_letter_of(records[i], error, now_ms, cap) for i, error in failures]

        learnt = self.learner.learn_many(labels)

        index_of = {id(label): i for label, i in zip(labels, indices, strict=True)}
        waiting: list[ConsumedRecord] = []
        still_waiting: set[int] = set()
        missing = conflicts = 0
        for rejected in learnt.rejected:
            i = index_of[id(rejected.label)]
            reason = rejected.reason
            if rejected.waitable and self.wait_ms > 0:
                if deadlines_ms is None:
                    waiting.append(records[i])
                    continue
                if now_ms < deadlines_ms[i]:
                    still_waiting.add(i)
                    continue
                reason += f", after waiting {self.wait_ms / 1000:g} s (label_wait_s)"
            if rejected.error is MissingSnapshotError:
                missing += 1
            else:
                conflicts += 1
            if rejected.waitable:
                self.learner.gave_up(1)
            letters.append(dead_letter_of(records[i], rejected.error(reason), now_ms, cap))
        settled = [] if deadlines_ms is None else sorted(set(range(len(records))) - still_waiting)
        return LabelBatchOutcome(
            outgoing=[Outgoing(self.topic_dlq, x.key, x.value, x.headers) for x in letters],
            learnt=learnt.learnt,
            duplicates=learnt.duplicates,
            missing_snapshots=missing,
            conflicts=conflicts,
            dead_letters=letters,
            waiting=waiting,
            settled=settled,
        )

    def give_up(self, records: Sequence[ConsumedRecord], reason: str) -> LabelBatchOutcome:
        """Dead-letter labels that cannot wait for their snapshot (no room), with ``reason``."""
        now_ms = int(self.clock_ms())
        letters = [
            dead_letter_of(r, MissingSnapshotError(reason), now_ms, self.dead_letter_max_bytes)
            for r in records
        ]
        self.learner.gave_up(len(letters))
        return LabelBatchOutcome(
            outgoing=[Outgoing(self.topic_dlq, x.key, x.value, x.headers) for x in letters],
            missing_snapshots=len(letters),
            dead_letters=letters,
        )
