"""Recorder: capture a topic to a file so that a live incident can be replayed later.

Recording format (JSON Lines, optionally gzipped): a first line of metadata
``{"fraudstream_recording": 1, "topic": ..., "recorded_at": ..., ...}``, then
one line per record::

    {"topic": "transactions", "partition": 0, "offset": 42,
     "timestamp_ms": 1712345678901, "timestamp_type": 0,
     "key": "QzAwMDEyMw==", "value": "eyJ0cmFu...",
     "headers": [["source", "c2lt"]]}

Keys, values and header values are base64 so that any bytes survive
untouched (``null`` stays ``null``). Within a partition, records are in
offset order; partitions are interleaved as they were fetched.

Records are written whole: each fetched batch is written and flushed (a gzip
file with a sync flush) before the next poll, and a stop asked for (Ctrl-C,
SIGTERM: ``should_stop``) is honoured between batches, so the file ends with
the last record read and a gzip file is closed complete. A process killed
outright leaves the records of the batches flushed before; its last line may
be cut short, which :func:`read_recording` reports as such. A batch damaged in
the broker's log is skipped as the scorer skips it (one warning naming its
topic, partition and offsets; counted in :attr:`RecordStats.unreadable`).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from kafka.errors import CorruptRecordError

from fraudstream.producers.files import FileFormatError, display_name, json_lines, open_output
from fraudstream.producers.sink import progress_bar
from fraudstream.service.errors import ConfigurationError
from fraudstream.service.kafka import check_reachable, make_consumer
from fraudstream.service.kafka.protocols import Consumer, ConsumerRecord, TopicPartition
from fraudstream.service.kafka.records import seek_past, unreadable_batch
from fraudstream.service.settings import Settings

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class RecordStats:
    """What a recording captured."""

    records: int = 0
    partitions: int = 0
    wall_s: float = 0.0
    #: Records of the range that could not be read (a batch damaged in the broker's log).
    unreadable: int = 0
    #: ``should_stop`` ended the recording before its end (the file is complete up to there).
    stopped: bool = False


def _never() -> bool:
    return False


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def encode_record(record: ConsumerRecord) -> bytes:
    """One consumed record (kafka-python ``ConsumerRecord``) as a recording line (no newline)."""
    return orjson.dumps(
        {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp_ms": record.timestamp,
            "timestamp_type": record.timestamp_type,
            "key": _b64(record.key),
            "value": _b64(record.value),
            "headers": [[k, _b64(v)] for k, v in (record.headers or [])],
        }
    )


def record_topic(
    settings: Settings,
    topic: str,
    output: Path,
    *,
    from_time_ms: int | None = None,
    from_offset: int | None = None,
    to_time_ms: int | None = None,
    to_offset: int | None = None,
    partitions: list[int] | None = None,
    follow: bool = False,
    max_records: int | None = None,
    idle_timeout_s: float = 10.0,
    progress: bool = False,
    should_stop: Callable[[], bool] = _never,
) -> RecordStats:
    """Copy a range of ``topic`` into a recording file.

    Parameters
    ----------
    from_time_ms, from_offset
        Start of the range: the first offset at or after a time
        (``offsets_for_times``), or an offset applied to every partition
        (clamped to what the log still holds). Default: the beginning.
    to_time_ms, to_offset
        End of the range (exclusive): the first offset at or after a time, or
        an offset. Default: the end offsets when the recording starts.
    follow
        Ignore the end and keep recording new records until ``max_records``,
        ``idle_timeout_s`` without records, or ``should_stop``.
    partitions
        Only these partitions (default: all).
    idle_timeout_s
        Give up waiting after this long without a record (a safety net: the
        end offsets are normally reached first).
    should_stop
        Asked between fetched batches (every 200 ms at most): ``True`` ends the
        recording there, every record read so far written and the file closed
        complete (``stats.stopped``). The CLI sets it on SIGINT and SIGTERM.
    """
    check_reachable(settings)
    consumer = make_consumer(
        settings,
        client_id=f"{settings.client_id}-recorder",
        group_id=None,
    )
    stats = RecordStats()
    start = time.perf_counter()
    try:
        chosen = _chosen_partitions(consumer, settings, topic, partitions)
        tps = [TopicPartition(topic, p) for p in chosen]
        consumer.assign(tps)
        first, stop = _range(
            consumer,
            tps,
            from_time_ms=from_time_ms,
            from_offset=from_offset,
            to_time_ms=to_time_ms,
            to_offset=to_offset,
            follow=follow,
        )
        for tp in tps:
            consumer.seek(tp, first[tp])
        active = {tp for tp in tps if stop[tp] is None or first[tp] < (stop[tp] or 0)}
        header = {
            "fraudstream_recording": FORMAT_VERSION,
            "topic": topic,
            "recorded_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "partitions": chosen,
            "from_offsets": {str(tp.partition): first[tp] for tp in tps},
            "to_offsets": {str(tp.partition): stop[tp] for tp in tps},
        }
        with (
            open_output(output) as out,
            progress_bar(
                None if follow else sum((stop[tp] or 0) - first[tp] for tp in active),
                enabled=progress,
                desc=f"record {topic}",
                unit="rec",
            ) as bar,
        ):
            out.write(orjson.dumps(header) + b"\n")
            out.flush()
            copy = _Copy(consumer, out, bar, stop, stats, should_stop)
            try:
                copy.run(active, max_records, idle_timeout_s)
            except KeyboardInterrupt:  # no should_stop given: what was written is kept
                stats.stopped = True
    finally:
        consumer.close()
    stats.partitions = len(chosen)
    stats.wall_s = time.perf_counter() - start
    return stats


def _chosen_partitions(
    consumer: Consumer, settings: Settings, topic: str, partitions: list[int] | None
) -> list[int]:
    """The partitions to record (default: all), refused when the topic or one is missing."""
    found = consumer.partitions_for_topic(topic)
    if not found:
        raise ConfigurationError(f"topic {topic!r} does not exist on {settings.bootstrap_servers}")
    chosen = sorted(found) if partitions is None else sorted(partitions)
    unknown = set(chosen) - set(found)
    if unknown:
        raise ConfigurationError(f"topic {topic!r} has no partition(s) {sorted(unknown)}")
    return chosen


def _range(
    consumer: Consumer,
    tps: list[TopicPartition],
    *,
    from_time_ms: int | None,
    from_offset: int | None,
    to_time_ms: int | None,
    to_offset: int | None,
    follow: bool,
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int | None]]:
    """First offset and end offset (exclusive; None: no end) of each partition to record."""
    begin = consumer.beginning_offsets(tps)
    end = consumer.end_offsets(tps)
    if from_time_ms is not None:
        first = _offsets_at(consumer, tps, from_time_ms, end)
    elif from_offset is not None:
        first = {tp: max(begin[tp], min(from_offset, end[tp])) for tp in tps}
    else:
        first = {tp: begin[tp] for tp in tps}
    stop: dict[TopicPartition, int | None]
    if follow:
        stop = dict.fromkeys(tps)
    elif to_time_ms is not None:
        stop = dict(_offsets_at(consumer, tps, to_time_ms, end))
    elif to_offset is not None:
        stop = {tp: min(to_offset, end[tp]) for tp in tps}
    else:
        stop = dict(end)
    return first, stop


class _Copy:
    """Polled records written to the recording, batch by batch, until the range is done."""

    def __init__(
        self,
        consumer: Consumer,
        out: BinaryIO,
        bar: Any,
        stop: dict[TopicPartition, int | None],
        stats: RecordStats,
        should_stop: Callable[[], bool],
    ) -> None:
        self.consumer = consumer
        self.out = out
        self.bar = bar
        self.stop = stop
        self.stats = stats
        self.should_stop = should_stop

    def run(self, active: set[TopicPartition], max_records: int | None, idle_s: float) -> None:
        """Write polled records until every partition reached its end, a limit, or a stop."""
        stats = self.stats
        last_data = time.monotonic()
        while active:
            if self.should_stop():
                stats.stopped = True
                break
            if max_records is not None and stats.records >= max_records:
                break
            batch = self._poll()
            if batch:
                last_data = time.monotonic()
            written = 0
            for tp, records in batch.items():
                room = None if max_records is None else max_records - stats.records
                lines = _lines_within(records, self.stop[tp], room)
                self.out.write(b"".join(lines))
                stats.records += len(lines)
                written += len(lines)
                self.bar.update(len(lines))
            if written:
                self.out.flush()  # whole records on disk before the next poll
            for tp in list(active):
                limit = self.stop[tp]
                # Positions, not offsets seen: transaction markers leave gaps.
                position = self.consumer.position(tp)
                if limit is not None and position is not None and position >= limit:
                    active.discard(tp)
            if time.monotonic() - last_data > idle_s:
                break

    def _poll(self) -> dict[TopicPartition, list[ConsumerRecord]]:
        """One poll; a batch damaged in the broker's log is skipped, counted and warned of.

        As the scorer and ``state rebuild`` do (``seek_past``): the records before
        it were returned by earlier polls, those after it come with the next ones.
        """
        try:
            return self.consumer.poll(timeout_ms=200, max_records=5000)
        except CorruptRecordError as exc:
            damaged = unreadable_batch(exc)
            if damaged is None:
                raise
            last = seek_past(self.consumer, damaged)
            limit = self.stop.get(TopicPartition(damaged.topic, damaged.partition))
            in_range = last if limit is None else min(last, limit - 1)
            self.stats.unreadable += max(0, in_range + 1 - damaged.first_offset)
            log.warning(
                "%s partition %d offsets %d..%d cannot be read (damaged in the broker's log: "
                "%s): skipped, not recorded",
                damaged.topic,
                damaged.partition,
                damaged.first_offset,
                last,
                exc,
            )
            return {}


def _lines_within(
    records: Iterable[ConsumerRecord], limit: int | None, room: int | None
) -> list[bytes]:
    """Recording lines of the records before offset ``limit``, at most ``room`` of them."""
    lines: list[bytes] = []
    for rec in records:
        if limit is not None and rec.offset >= limit:
            break
        if room is not None and len(lines) >= room:
            break
        lines.append(encode_record(rec) + b"\n")
    return lines


def _offsets_at(
    consumer: Consumer, tps: list[TopicPartition], time_ms: int, end: dict[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """First offset at or after ``time_ms`` per partition (the end when there is none)."""
    found = consumer.offsets_for_times(dict.fromkeys(tps, time_ms))
    return {tp: end[tp] if (at := found.get(tp)) is None else at.offset for tp in tps}


def read_recording(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The metadata and the records of a recording (keys/values decoded to bytes).

    Raises
    ------
    FileFormatError
        A line is not a recording line; a last line without its newline is
        said to be cut short (a recorder killed while writing it).
    """
    meta: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    for line_no, line in json_lines(path):
        if not line.endswith(b"\n"):  # only the last line can end without one
            try:
                orjson.loads(line)
            except orjson.JSONDecodeError:
                raise FileFormatError(
                    f"{display_name(path)}:{line_no}: the last line is cut short (the recorder "
                    f"was killed while writing it); the {len(records):,} records before it are "
                    "whole: remove that line to replay them"
                ) from None
        try:
            row = orjson.loads(line)
            if line_no == 1 and "fraudstream_recording" in row:
                meta = row
                continue
            records.append(
                {
                    "topic": row["topic"],
                    "partition": int(row["partition"]),
                    "offset": int(row["offset"]),
                    "timestamp_ms": int(row["timestamp_ms"]),
                    "key": _unb64(row.get("key")),
                    "value": _unb64(row.get("value")),
                    "headers": [(str(k), _unb64(v) or b"") for k, v in row.get("headers") or []],
                }
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise FileFormatError(
                f"{display_name(path)}:{line_no}: not a recording line "
                f"({_line_problem(line, exc)}); replay reads the files `fraudstream record` writes"
            ) from None
    return meta, records


#: JSON's names of the values a recording line can be instead of an object.
_JSON_TYPES = {list: "an array", str: "a string", bool: "a boolean", int: "a number"}


def _line_problem(line: bytes, exc: Exception) -> str:
    """What is wrong with a recording ``line`` that raised ``exc`` when read.

    Parameters
    ----------
    line
        The line as read.
    exc
        What reading it raised.
    """
    if isinstance(exc, orjson.JSONDecodeError):
        return f"not JSON: {exc}"
    row = orjson.loads(line)
    if not isinstance(row, dict):
        kind = "null" if row is None else _JSON_TYPES.get(type(row), "a number")
        return f"{kind}, not a JSON object"
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r} field"
    return f"{type(exc).__name__}: {exc}"


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text, validate=True)
