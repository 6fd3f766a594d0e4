"""Where an interrupted replay resumes: the first record in replay order Kafka did not confirm."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from fraudstream.producers.replayer import ReplayStats, _cancelled
from fraudstream.producers.sink import KafkaSink
from fraudstream.service.kafka import DeliveryError


@dataclass
class _Sink:
    """What ``_cancelled`` reads of a :class:`KafkaSink` after its last flush."""

    delivered: int
    first_undelivered_line: int | None
    last_delivered_line: dict[str, int] = field(default_factory=dict)
    fails: bool = False

    def flush(self, timeout_s: float | None = None) -> int:
        if self.fails:
            raise DeliveryError("1 record(s) not delivered")
        return 0


def _resume(sink: _Sink, skip: int = 0) -> tuple[int, str]:
    error = _cancelled(Path("r.jsonl"), cast(KafkaSink, sink), ReplayStats(), 10, skip)
    return error.resume_skip, str(error)


def test_every_record_handed_over_confirmed_resumes_after_the_last() -> None:
    sink = _Sink(delivered=4, first_undelivered_line=None, last_delivered_line={"a": 4, "b": 3})
    assert _resume(sink) == (
        4,
        "r.jsonl: Kafka confirmed 4 of its 10 records; to resume, replay it again with --skip 4",
    )
    # Resumed once already: the lines count from the start of the recording.
    sink = _Sink(delivered=2, first_undelivered_line=None, last_delivered_line={"a": 6})
    assert _resume(sink, skip=4)[0] == 6
    nothing = _Sink(delivered=0, first_undelivered_line=None)
    assert _resume(nothing, skip=4)[0] == 4


def test_a_record_not_confirmed_is_where_the_replay_resumes() -> None:
    sink = _Sink(delivered=5, first_undelivered_line=3, last_delivered_line={"a": 6}, fails=True)
    assert _resume(sink) == (
        2,
        "r.jsonl: Kafka confirmed 5 of its 10 records; to resume, replay it again with --skip 2 "
        "(records after it that Kafka confirmed are sent again)",
    )
