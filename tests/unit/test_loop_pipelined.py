"""ConsumeLoop.run_pipelined: the order of a batch's steps, failures and revocations.

Also what a poll that meets a damaged batch in the log returns, and what
recover() commits to the group.

Pure logic: the loop's poll, rewind and back-off are replaced by scripted ones
(the real loop runs against Kafka and Redis in the e2e tests).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

import pytest

from fraudstream.service.checkpoint import Span
from fraudstream.service.kafka.protocols import TopicPartition
from fraudstream.service.loop import ConsumeLoop, Polled


class _Health:
    def __init__(self) -> None:
        self.finished: list[int] = []

    def done(self, records: int) -> None:
        self.finished.append(records)


class ScriptedLoop(ConsumeLoop):
    """A loop whose polls return the given batches, then nothing (and it stops)."""

    def __init__(self, batches: Sequence[list[int]], max_records: int) -> None:
        # Only what run_pipelined reads; no consumer behind it.
        self.name = "scorer"
        self.max_records = max_records
        self.stopping = threading.Event()
        self.revocations = 0
        self.health = _Health()  # type: ignore[assignment]
        self._batches = [self._polled(b) for b in batches]
        self.read_again_records: list[Any] = []
        self.recovered: list[Any] = []

    @staticmethod
    def _polled(offsets: list[int]) -> Polled:
        tp = TopicPartition("t", 0)
        return Polled(list(offsets), {tp: Span(offsets[0], offsets[-1])})  # type: ignore[arg-type]

    def poll(self, *, wait: bool = True) -> Polled:
        if not self._batches:
            self.stopping.set()
            return Polled([], {})
        return self._batches.pop(0)

    def read_again(self, records: Sequence[Any]) -> None:
        self.read_again_records.append(list(records))

    def recover(
        self, polled: Polled, exc: BaseException, attempt: int, healthy: Callable[[], bool]
    ) -> None:
        self.recovered.append((list(polled.records), type(exc).__name__))


def run(
    loop: ScriptedLoop,
    *,
    fail_complete: int | None = None,
    revoke_at_begin: int | None = None,
) -> list[str]:
    """Run the loop with steps that log themselves; batch names are their first offset."""
    events: list[str] = []

    def begin(polled: Polled) -> int:
        first = int(cast(int, polled.records[0]))  # a scripted record is its offset
        events.append(f"begin {first}")
        if first == revoke_at_begin:
            loop.revocations += 1
        return first

    def complete(first: int) -> int:
        events.append(f"complete {first}")
        if first == fail_complete:
            raise ConnectionError("Redis went away")
        return first

    def finish(polled: Polled, first: int, seconds: float) -> None:
        events.append(f"finish {first}")

    loop.run_pipelined(
        begin,
        complete,
        lambda: events.append("settle"),
        finish,
        lambda: events.append("idle"),
        reset=lambda: events.append("reset"),
        transient=lambda exc: isinstance(exc, ConnectionError),
        healthy=lambda: True,
    )
    return events


def test_behind_the_stream_the_next_batch_is_begun_before_the_last_is_completed() -> None:
    loop = ScriptedLoop([[0, 1], [2, 3], [4, 5]], max_records=2)
    assert run(loop) == [
        "begin 0",
        "begin 2",
        "complete 0",
        "begin 4",
        "settle",
        "finish 0",
        "complete 2",
        "settle",
        "finish 2",
        "complete 4",
        "settle",
        "finish 4",
    ]
    assert loop.health.finished == [2, 2, 2]  # type: ignore[attr-defined]


def test_keeping_up_every_batch_is_finished_before_the_next_poll() -> None:
    loop = ScriptedLoop([[0], [1], [2]], max_records=10)
    assert run(loop) == [
        *("begin 0", "complete 0", "settle", "finish 0"),
        *("begin 1", "complete 1", "settle", "finish 1"),
        *("begin 2", "complete 2", "settle", "finish 2"),
        "idle",  # the poll that found nothing
    ]


def test_a_failure_gives_up_every_batch_not_finished_and_finishes_nothing_more() -> None:
    loop = ScriptedLoop([[0, 1], [2, 3], [4, 5]], max_records=2)
    events = run(loop, fail_complete=2)
    assert events[: events.index("complete 2") + 2] == [
        "begin 0",
        "begin 2",
        "complete 0",
        "begin 4",
        "settle",
        "finish 0",
        "complete 2",
        "reset",
    ]
    assert "finish 2" not in events and "finish 4" not in events
    # Batches 2 and 4 (polled, not finished) are read again after the back-off.
    assert loop.recovered == [([2, 3, 4, 5], "ConnectionError")]


def test_partitions_revoked_while_batches_are_in_flight_read_them_all_again() -> None:
    loop = ScriptedLoop([[0, 1], [2, 3], [4, 5]], max_records=2)
    events = run(loop, revoke_at_begin=4)
    assert "finish 0" not in events  # batch 0 was polled before the revocation
    assert events[: events.index("reset") + 1] == [
        "begin 0",
        "begin 2",
        "complete 0",
        "begin 4",
        "settle",
        "reset",
    ]
    assert loop.read_again_records == [[0, 1, 2, 3, 4, 5]]
    assert not loop.recovered


@pytest.mark.parametrize("max_records", [2, 10])
def test_nothing_polled_is_an_idle_turn(max_records: int) -> None:
    loop = ScriptedLoop([], max_records=max_records)
    assert run(loop) == ["idle"]


class _Consumer:
    """The consumer calls recover() makes, with one owned partition at offset 40."""

    def __init__(self) -> None:
        self.tp = TopicPartition("t", 0)
        self.seeks: list[tuple[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...

    def paused(self) -> set[TopicPartition]:
        return set()

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def position(self, tp: TopicPartition, timeout_ms: int = 0) -> int:
        return 40

    def group_metadata(self) -> Any:
        from fraudstream.service.kafka.protocols import MemberState

        class _Meta:
            state = MemberState.STABLE

        return _Meta()


class _Checkpoint:
    """Abort gives the resume point; the group commit of confirm() is refused or accepted."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.confirmed: list[dict[TopicPartition, int]] = []

    def abort(self) -> dict[TopicPartition, int]:
        return {TopicPartition("t", 0): 40}

    def confirm(self, positions: dict[TopicPartition, int]) -> None:
        self.confirmed.append(dict(positions))
        if self.refuse:
            from kafka.errors import CommitFailedError, UnknownMemberIdError

            raise CommitFailedError(UnknownMemberIdError())


def _recovering_loop(consumer: _Consumer, checkpoint: _Checkpoint) -> ConsumeLoop:
    """A loop on the fakes whose back-off does not wait (it is stopping)."""
    from fraudstream.service.loop import LoopHealth
    from fraudstream.service.metrics import Metrics

    stopping = threading.Event()
    stopping.set()
    return ConsumeLoop(
        "scorer",
        consumer,  # type: ignore[arg-type]
        checkpoint,  # type: ignore[arg-type]
        LoopHealth("scorer", needs_partitions=True, stall_after_s=60),
        max_records=50,
        wait_ms=10,
        stopping=stopping,
        metrics=Metrics(),
    )


@pytest.mark.parametrize("refused", [True, False])
def test_a_refused_transactional_commit_makes_the_consumer_prove_its_membership(
    refused: bool,
) -> None:
    """After a broker restart forgot the member, the group commit makes the consumer rejoin."""
    from kafka.errors import CommitFailedError, UnknownMemberIdError

    consumer, checkpoint = _Consumer(), _Checkpoint(refuse=refused)
    loop = _recovering_loop(consumer, checkpoint)
    failure = CommitFailedError(
        "Transaction offset commit failed due to consumer group metadata mismatch: "
        f"{UnknownMemberIdError.__name__}"
    )
    loop.recover(Polled([], {}), failure, 0, lambda: True)
    assert consumer.seeks == [(consumer.tp, 40)]  # the batch is read again from 40
    # The positions (what is done: nothing is in hand) went to the group, refused or not.
    assert checkpoint.confirmed == [{consumer.tp: 40}]


def test_other_failures_do_not_commit_to_the_group() -> None:
    consumer, checkpoint = _Consumer(), _Checkpoint(refuse=False)
    loop = _recovering_loop(consumer, checkpoint)
    loop.recover(Polled([], {}), ConnectionError("Redis went away"), 0, lambda: True)
    assert checkpoint.confirmed == []


class _DamagedLog(_Consumer):
    """Every poll fails on a damaged batch of offsets 40..44 (header's word) of ``t[0]``."""

    def __init__(self, end: int | Exception, *, located: bool = True) -> None:
        super().__init__()
        self.end, self.located = end, located

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> Any:
        from kafka.errors import CorruptRecordError

        from fraudstream.service.kafka.records import UnreadableBatch

        error = CorruptRecordError("Record batch for partition t-0 at offset 40 failed crc check")
        if self.located:
            error.unreadable_batch = UnreadableBatch("t", 0, 40, 45, b"\x00raw")
        raise error

    def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        if isinstance(self.end, Exception):
            raise self.end
        return {tp: self.end for tp in partitions}


@pytest.mark.parametrize(
    ("end", "last"),
    [(100, 44), (43, 42), (ConnectionError("no broker"), 44)],
    ids=["within the partition", "past its end", "end unknown"],
)
def test_a_damaged_batch_is_polled_as_one_unreadable_record_and_sought_past(
    end: int | Exception, last: int
) -> None:
    """Its offsets up to the batch's end (kept within the partition's) make one dead letter."""
    from fraudstream.service.pipeline import UnreadableRecord

    consumer = _DamagedLog(end)
    polled = _recovering_loop(consumer, _Checkpoint(refuse=False)).poll()
    (record,) = polled.records
    assert isinstance(record, UnreadableRecord)
    assert (record.topic, record.partition, record.offset, record.value) == ("t", 0, 40, b"\x00raw")
    assert polled.spans == {consumer.tp: Span(40, last)}
    assert consumer.seeks == [(consumer.tp, last + 1)]
    assert type(record.error).__name__ == "UnreadableRecordsError"
    assert str(record.error).startswith(f"t[0] offsets 40..{last} cannot be read (")
    assert f"goes on from offset {last + 1}" in str(record.error)


def test_a_corrupt_batch_the_decoder_could_not_locate_fails_the_poll() -> None:
    """kafka-python's own decoder (another version): the error is raised, as before."""
    from kafka.errors import CorruptRecordError

    consumer = _DamagedLog(100, located=False)
    with pytest.raises(CorruptRecordError):
        _recovering_loop(consumer, _Checkpoint(refuse=False)).poll()
    assert consumer.seeks == []


class _Cluster:
    def __init__(self) -> None:
        self.ids = {"t": "id-1"}

    def topic_id(self, topic: str) -> str | None:
        return self.ids.get(topic)


class _Recreated(_Consumer):
    """``t`` is created again between two polls; its new log starts at offset 0."""

    def __init__(self) -> None:
        super().__init__()
        self._client = type("Client", (), {"cluster": _Cluster()})()

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> Any:
        return {}

    def beginning_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, 0)


def test_a_topic_created_again_stops_the_loop_with_the_group_at_its_start() -> None:
    from fraudstream.service.errors import LogReplacedError

    consumer, checkpoint = _Recreated(), _StartingOver()
    loop = _recovering_loop(consumer, checkpoint)
    loop.poll()  # the id is noted
    loop.poll()  # the same id: nothing to say
    assert checkpoint.started_over == []
    consumer._client.cluster.ids["t"] = "id-2"
    with pytest.raises(LogReplacedError, match=r"topic t was deleted and created again .*t\[0\] 0"):
        loop.poll()
    assert checkpoint.started_over == [{consumer.tp: 0}]


class _StartingOver(_Checkpoint):
    def __init__(self) -> None:
        super().__init__(refuse=False)
        self.started_over: list[dict[TopicPartition, int]] = []

    def start_over(self, positions: dict[TopicPartition, int]) -> None:
        self.started_over.append(dict(positions))


def test_a_position_kafka_moved_back_stops_the_loop_with_the_group_there() -> None:
    """A truncated partition (or a topic created again, seen by its position first)."""
    from fraudstream.service.errors import LogReplacedError
    from fraudstream.service.kafka.resets import OffsetReset

    consumer, checkpoint = _Recreated(), _StartingOver()
    loop = _recovering_loop(consumer, checkpoint)
    loop._resets.take = lambda: [OffsetReset(consumer.tp, 30, 0)]  # type: ignore[method-assign]
    with pytest.raises(LogReplacedError, match=r"t partition 0 no longer reaches offset 30"):
        loop.poll()
    assert checkpoint.started_over == [{consumer.tp: 0}]
