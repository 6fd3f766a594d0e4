"""ConsumeLoop.run_pipelined: the order of a batch's steps, failures and revocations.

Pure logic: the loop's poll, rewind and back-off are replaced by scripted ones
(the real loop runs against Kafka and Redis in the e2e tests).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

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
        first = int(polled.records[0])
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
