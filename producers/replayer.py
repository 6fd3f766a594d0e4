"""Replayer: play a recording back to Kafka, paced or as fast as possible.

Order: the recording's partitions are merged by record timestamp, each
partition kept in offset order (``heapq.merge`` never reorders within an
input), so every key's records go out in their original order even when
timestamps within a partition go backwards. Sent by key (or to the original
partition with ``keep_partitions``) through an idempotent producer, they keep
that order on the target topic.

Pacing: the gap between two records' timestamps, divided by ``speed``, is
the gap between their sends (see :class:`fraudstream.producers.pacing.Pacer`).
"""

from __future__ import annotations

import contextlib
import heapq
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraudstream.producers.files import display_name
from fraudstream.producers.pacing import Pacer
from fraudstream.producers.recorder import read_recording
from fraudstream.producers.sink import INTERRUPT_FLUSH_S, KafkaSink, RunCancelledError, progress_bar
from fraudstream.service.errors import ConfigurationError
from fraudstream.service.kafka import DeliveryError, check_reachable, ensure_topics, make_admin
from fraudstream.service.settings import Settings, topic_name_problem


@dataclass
class ReplayStats:
    """What a replay sent."""

    records: int = 0
    wall_s: float = 0.0
    max_lag_s: float = 0.0


class ReplayCancelledError(RunCancelledError):
    """Ctrl-C stopped a replay: what Kafka confirmed, and the ``--skip`` that resumes it.

    ``resume_skip`` is the number of records, in replay order, that Kafka
    confirmed before the first one it did not.
    """

    def __init__(self, message: str, stats: ReplayStats, resume_skip: int) -> None:
        super().__init__(message)
        self.stats = stats
        self.resume_skip = resume_skip


def replay_order(records: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Records merged by timestamp, each (topic, partition) in offset order.

    >>> recs = [{"topic": "t", "partition": 0, "offset": 0, "timestamp_ms": 5},
    ...         {"topic": "t", "partition": 0, "offset": 1, "timestamp_ms": 1},
    ...         {"topic": "t", "partition": 1, "offset": 0, "timestamp_ms": 3}]
    >>> # partition 0 keeps offset order although its second record is older
    >>> [(r["partition"], r["offset"]) for r in replay_order(recs)]
    [(1, 0), (0, 0), (0, 1)]
    """
    by_partition: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for rec in records:
        by_partition.setdefault((rec["topic"], rec["partition"]), []).append(rec)
    streams = [
        sorted(group, key=lambda r: r["offset"]) for _, group in sorted(by_partition.items())
    ]
    return heapq.merge(*streams, key=lambda r: r["timestamp_ms"])


def replay_file(
    settings: Settings,
    path: Path,
    *,
    topic: str | None = None,
    speed: float | None = None,
    keep_partitions: bool = False,
    keep_timestamps: bool = False,
    progress: bool = False,
    pacer: Pacer | None = None,
    skip: int = 0,
) -> ReplayStats:
    """Send a recording's records to Kafka.

    Parameters
    ----------
    topic
        Target topic; default each record's original topic.
    speed
        1 = original pace, 100 = 100x faster, ``None`` = as fast as possible.
    keep_partitions
        Send each record to its original partition number (the target topic
        must have as many); default: partition by key like any producer.
    keep_timestamps
        Keep the original record timestamps; default: the send time, since an
        old timestamp can be deleted at once by the target's retention.
    pacer
        Injected pacer (tests); built from ``speed`` otherwise.
    skip
        Leave out the first ``skip`` records in replay order (to resume a replay
        that was stopped: :class:`ReplayCancelledError` says how many).

    Raises
    ------
    ReplayCancelledError
        On Ctrl-C (``KeyboardInterrupt``), once the records in flight are
        confirmed or :data:`~fraudstream.producers.sink.INTERRUPT_FLUSH_S` has passed.
    """
    meta, records = read_recording(path)
    targets = {topic} if topic else {r["topic"] for r in records} or {meta.get("topic", "")}
    targets.discard("")
    for name in sorted(targets):
        problem = topic_name_problem(name)
        if problem:
            raise ConfigurationError(f"{display_name(path)}: {problem}; replay it with --topic")
    check_reachable(settings)
    if targets:
        ensure_topics(
            settings,
            dict.fromkeys(targets, settings.topic_partitions),
            replication=settings.topic_replication,
            create=settings.create_topics,
        )
    if keep_partitions and records:
        _check_partitions(settings, records, topic)
    pacer = pacer or Pacer(speed)
    stats = ReplayStats()
    start = time.perf_counter()
    linger_ms = 0 if pacer.paced else 20  # paced: send at once, the pace is the point
    to_send = max(0, len(records) - skip)
    with (
        KafkaSink(settings, client_suffix="replayer", linger_ms=linger_ms) as sink,
        progress_bar(to_send, enabled=progress, desc="replay", unit="rec") as bar,
    ):
        try:
            sink.warm_up(targets)
            for index, rec in enumerate(replay_order(records), start=1):
                if index <= skip:
                    continue
                pacer.wait(rec["timestamp_ms"])
                sink.send(
                    topic or rec["topic"],
                    rec["value"],
                    key=rec["key"],
                    headers=rec["headers"],
                    partition=rec["partition"] if keep_partitions else None,
                    timestamp_ms=rec["timestamp_ms"] if keep_timestamps else None,
                    line=index,
                )
                stats.records += 1
                bar.update(1)
            sink.flush()
        except KeyboardInterrupt:
            stats.wall_s = time.perf_counter() - start
            raise _cancelled(path, sink, stats, len(records), skip) from None
        except DeliveryError as exc:
            raise _undelivered(path, sink, exc, len(records), skip, keep_timestamps) from None
    stats.wall_s = time.perf_counter() - start
    stats.max_lag_s = pacer.max_lag_s
    return stats


def _cancelled(
    path: Path, sink: KafkaSink, stats: ReplayStats, total: int, skip: int
) -> ReplayCancelledError:
    """What Kafka confirmed of an interrupted replay, and the ``--skip`` that resumes it.

    Records in flight get :data:`INTERRUPT_FLUSH_S` to be confirmed. The resume
    point is the first record in replay order Kafka did not confirm: records
    after it that it did confirm are sent again by the resumed replay.
    """
    with contextlib.suppress(DeliveryError):
        sink.flush(timeout_s=INTERRUPT_FLUSH_S)
    stats.records = sink.delivered
    confirmed, resume, again = _resume_point(sink, total, skip)
    resumes = f"to resume, replay it again with --skip {resume}{again}"
    return ReplayCancelledError(f"{display_name(path)}: {confirmed}; {resumes}", stats, resume)


def _undelivered(
    path: Path, sink: KafkaSink, exc: DeliveryError, total: int, skip: int, keep_timestamps: bool
) -> DeliveryError:
    """A replay Kafka refused: why, what it confirmed, and the ``--skip`` that resumes it."""
    confirmed, resume, again = _resume_point(sink, total, skip)
    stamped = (
        " (or without --keep-timestamps: the records stamped when sent)"
        if keep_timestamps and "InvalidTimestampError" in str(exc)
        else ""
    )
    return DeliveryError(
        f"{display_name(path)}: {exc}; {confirmed}; once the cause is fixed, replay it again "
        f"with --skip {resume}{again}{stamped}"
    )


def _resume_point(sink: KafkaSink, total: int, skip: int) -> tuple[str, int, str]:
    """What Kafka confirmed of a replay; the ``--skip`` that resumes it; what is then sent again."""
    first_missing = sink.first_undelivered_line
    if first_missing is None:  # every record handed over was confirmed: a prefix
        resume = max([skip, *sink.last_delivered_line.values()])
        again = ""
    else:
        resume = first_missing - 1
        again = " (records after it that Kafka confirmed are sent again)"
    sent_before = f" after the {skip:,} skipped" if skip else ""
    confirmed = f"Kafka confirmed {sink.delivered:,} of its {total:,} records{sent_before}"
    return confirmed, resume, again


def _check_partitions(settings: Settings, records: list[dict[str, Any]], topic: str | None) -> None:
    """Refuse ``keep_partitions`` when a target topic has too few partitions."""
    needed: dict[str, int] = {}
    for rec in records:
        name = topic or rec["topic"]
        needed[name] = max(needed.get(name, 0), rec["partition"] + 1)
    admin = make_admin(settings)
    try:
        described_topics = admin.describe_topics(list(needed))
    finally:
        admin.close()
    have_by_topic: dict[str, int] = {}
    for described in described_topics:
        # kafka-python 3 names the topic ``name``; older versions said ``topic``.
        name = described.get("name", described.get("topic"))
        if isinstance(name, str) and described.get("error_code", 0) == 0:
            have_by_topic[name] = len(described.get("partitions") or [])
    for name, want in sorted(needed.items()):
        have = have_by_topic.get(name, 0)
        if have < want:
            raise ConfigurationError(
                f"topic {name!r} has {have} partition(s), the recording uses {want}: "
                "replay without --keep-partitions, or add partitions to the topic"
            )
