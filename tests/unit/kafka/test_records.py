"""The batch decoder of ``service/kafka/records.py`` against kafka-python's own.

Every test builds raw fetch payloads (record batches as a broker sends them,
with kafka-python's builders or byte by byte), hands identical copies to
kafka-python's ``Fetcher.PartitionRecords`` and to
:class:`BatchDecodingPartitionRecords`, and drives both with the same ``take``
sizes the way the fetcher does, until the partition is drained or raises.
After every ``take`` the two must agree on the records (whole
``ConsumerRecord`` tuples, with the types of their fields), the fetch
position, the leader epoch, whether the partition is still in line, and the
error raised (type and message); at the end on the record and byte counts the
fetch metrics get and on the deserializer calls.

Two differences are meant, and only those are allowed: the new decoder drains
the partition when it raises (kafka-python 3.0.12 keeps it in line and its
fetcher then spins, see the test after an error), and an ``IndexError`` inside a
``CorruptRecordError`` message names ``bytes`` rather than ``bytearray``.

Most cases come from a seeded generator (batch shapes, keys and values around
varint boundaries, headers, timestamps, offsets with gaps, compression,
transactions and control batches, magic 0 and 1, fetch offsets inside and past
batches) and from seeded corruption of those payloads.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from unittest import mock

import kafka
import pytest
from kafka import KafkaConsumer
from kafka.codec import gzip_encode, has_gzip, has_lz4, has_snappy, has_zstd
from kafka.consumer.fetcher import Fetcher, IsolationLevel
from kafka.consumer.subscription_state import SubscriptionState
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.legacy_records import LegacyRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.record.util import calc_crc32c, encode_varint
from kafka.structs import TopicPartition

from fraudstream.service.kafka import make_consumer, records
from fraudstream.service.kafka.records import BatchDecodingPartitionRecords
from fraudstream.service.settings import Settings

TP = TopicPartition("transactions", 3)
STOCK = Fetcher.PartitionRecords
NEW = BatchDecodingPartitionRecords
READ_COMMITTED = IsolationLevel.READ_COMMITTED
READ_UNCOMMITTED = IsolationLevel.READ_UNCOMMITTED

#: v2 batch header: base offset, length, leader epoch, magic, crc, then what the crc covers.
_HEADER = struct.Struct(">qiibIhiqqqhii")
_ATTRIBUTES_AT = 21  # where the CRC-32C of a v2 batch starts
_CRC_AT = 17
_GZIP, _SNAPPY, _LZ4, _ZSTD = 1, 2, 3, 4
_LOG_APPEND_TIME, _TRANSACTIONAL, _CONTROL = 0x08, 0x10, 0x20
#: Every codec Kafka has: their libraries are the service's dependencies (pyproject.toml).
CODECS = [_GZIP, _SNAPPY, _LZ4, _ZSTD]


def test_every_codec_library_is_installed() -> None:
    """A missing codec library would stall the scorer on that codec's batches."""
    assert [has_gzip(), has_snappy(), has_lz4(), has_zstd()] == [True] * 4


class Aborted(NamedTuple):
    """An entry of a fetch response's aborted transactions."""

    producer_id: int
    first_offset: int


# --- building payloads -------------------------------------------------------------


def varint(value: int) -> bytes:
    r"""``value`` as a zigzag varint.

    >>> varint(0), varint(-1), varint(64), varint(8192).hex()
    (b'\x00', b'\x01', b'\x80\x01', '808001')
    """
    out = bytearray()
    encode_varint(value, out.append)
    return bytes(out)


Header = tuple[str | bytes, bytes | None]


@dataclass
class Rec:
    """One v2 record, with optional lies about its own encoding (for corruption)."""

    offset_delta: int
    timestamp_delta: int = 0
    key: bytes | None = None
    value: bytes | None = b"v"
    headers: Sequence[Header] = ()
    attributes: bytes = b"\x00"
    length_fix: int = 0
    header_count: int | None = None

    def encode(self) -> bytes:
        body = bytearray(self.attributes)
        body += varint(self.timestamp_delta) + varint(self.offset_delta)
        for data in (self.key, self.value):
            body += varint(-1) if data is None else varint(len(data)) + data
        count = len(self.headers) if self.header_count is None else self.header_count
        body += varint(count)
        for name, data in self.headers:
            raw_name = name.encode() if isinstance(name, str) else name
            body += varint(len(raw_name)) + raw_name
            body += varint(-1) if data is None else varint(len(data)) + data
        return varint(len(body) + self.length_fix) + bytes(body)


@dataclass
class Batch:
    """One v2 record batch, encoded by hand (every header field settable)."""

    base_offset: int
    records: list[Rec]
    first_timestamp: int = 1_700_000_000_000
    max_timestamp: int | None = None
    attributes: int = 0
    last_offset_delta: int | None = None
    leader_epoch: int = 7
    producer_id: int = -1
    producer_epoch: int = -1
    base_sequence: int = -1
    count: int | None = None
    tail: bytes = b""  # after the records (compressed with them)

    def encode(self) -> bytes:
        body = b"".join(r.encode() for r in self.records) + self.tail
        codec = self.attributes & 0x07
        if codec == _GZIP:
            body = gzip_encode(body)
        elif codec:
            body = _compress(codec, body)
        last = self.last_offset_delta
        if last is None:
            last = self.records[-1].offset_delta if self.records else 0
        max_ts = self.max_timestamp
        if max_ts is None:
            stamps = [self.first_timestamp + r.timestamp_delta for r in self.records]
            max_ts = max(stamps, default=self.first_timestamp)
        header = _HEADER.pack(
            self.base_offset,
            _HEADER.size - 12 + len(body),
            self.leader_epoch,
            2,
            0,
            self.attributes,
            last,
            self.first_timestamp,
            max_ts,
            self.producer_id,
            self.producer_epoch,
            self.base_sequence,
            len(self.records) if self.count is None else self.count,
        )
        return with_crc(bytearray(header + body))


def _compress(codec: int, data: bytes) -> bytes:
    from kafka import codec as codecs

    encode: Callable[[bytes], bytes] = {
        _SNAPPY: codecs.snappy_encode,
        _LZ4: codecs.lz4_encode,
        _ZSTD: codecs.zstd_encode,
    }[codec]
    return encode(data)


def with_crc(batch: bytearray) -> bytes:
    """A v2 batch with its CRC-32C recomputed (after editing what it covers)."""
    struct.pack_into(">I", batch, _CRC_AT, calc_crc32c(bytes(batch[_ATTRIBUTES_AT:])))
    return bytes(batch)


def control_batch(base_offset: int, producer_id: int, *, commit: bool, epoch: int = 7) -> bytes:
    """A transaction marker as the broker writes it (attributes 0x30, key version 0 and type)."""
    key = struct.pack(">hh", 0, 1 if commit else 0)
    value = struct.pack(">hi", 0, 5)  # version, coordinator epoch
    return Batch(
        base_offset,
        [Rec(0, key=key, value=value)],
        attributes=_TRANSACTIONAL | _CONTROL,
        producer_id=producer_id,
        producer_epoch=1,
        leader_epoch=epoch,
    ).encode()


def builder_batch(
    base_offset: int,
    items: Sequence[tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
    *,
    compression: int = 0,
    producer_id: int = -1,
    leader_epoch: int = 0,
    log_append_time: int | None = None,
) -> bytes:
    """A v2 batch made by kafka-python's own builder, then placed as a broker would.

    ``items`` are (offset delta, timestamp, key, value, headers). The base
    offset and leader epoch are outside the CRC; ``log_append_time`` sets
    attribute 0x08 and the max timestamp and recomputes the CRC.
    """
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=producer_id >= 0,
        producer_id=producer_id,
        producer_epoch=0 if producer_id >= 0 else -1,
        base_sequence=0 if producer_id >= 0 else -1,
        batch_size=1 << 30,
    )
    for offset_delta, timestamp, key, value, headers in items:
        assert builder.append(offset_delta, timestamp, key, value, headers) is not None
    raw = bytearray(builder.build())
    struct.pack_into(">qii", raw, 0, base_offset, len(raw) - 12, leader_epoch)
    if log_append_time is not None:
        (attributes,) = struct.unpack_from(">h", raw, _ATTRIBUTES_AT)
        struct.pack_into(">h", raw, _ATTRIBUTES_AT, attributes | _LOG_APPEND_TIME)
        struct.pack_into(">q", raw, 35, log_append_time)
        return with_crc(raw)
    return bytes(raw)


def legacy_batch(
    magic: int,
    base_offset: int,
    items: Sequence[tuple[int | None, bytes | None, bytes | None]],
    *,
    compression: int = 0,
    log_append_time: int | None = None,
) -> bytes:
    """Messages of format v0/v1 (``items``: timestamp, key, value) from kafka-python's builder.

    Uncompressed, each message carries its absolute offset. Compressed, the
    inner offsets are absolute (v0) or relative with the wrapper at the last
    absolute offset (v1), as brokers write them; ``log_append_time`` marks a v1
    wrapper LogAppendTime (attribute 0x08, its timestamp, the CRC-32 redone).
    """
    builder = LegacyRecordBatchBuilder(
        magic=magic, compression_type=compression, batch_size=1 << 30
    )
    relative = compression and magic == 1
    for i, (timestamp, key, value) in enumerate(items):
        offset = i if relative else base_offset + i
        assert builder.append(offset, timestamp, key, value) is not None
    raw = bytearray(builder.build())
    if compression:
        struct.pack_into(">q", raw, 0, base_offset + len(items) - 1)
        if log_append_time is not None and magic == 1:
            raw[17] |= _LOG_APPEND_TIME
            struct.pack_into(">q", raw, 18, log_append_time)
            struct.pack_into(">I", raw, 12, zlib.crc32(bytes(raw[16:])))
    return bytes(raw)


def memory_records_payload(
    items: Sequence[tuple[bytes | None, bytes | None]], offset: int
) -> bytes:
    """One v2 batch from kafka-python's ``MemoryRecordsBuilder`` (as its producer makes them)."""
    builder = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 30, offset=0)
    for i, (key, value) in enumerate(items):
        builder.append(1_700_000_000_000 + i, key, value, [("n", str(i).encode())])
    builder.close()
    raw = bytearray(builder.buffer())
    struct.pack_into(">q", raw, 0, offset)  # the producer writes offsets from 0
    return bytes(raw)


# --- running both decoders --------------------------------------------------------


@dataclass
class Deserializer:
    """A kafka-python deserializer logging its calls; raises on data starting with ``fail_on``."""

    name: str
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    fail_on: bytes | None = None

    def deserialize(self, topic: str, headers: Any, data: bytes | None) -> Any:
        self.calls.append((topic, list(headers), data))
        if self.fail_on is not None and data is not None and data.startswith(self.fail_on):
            raise ValueError(f"{self.name} cannot read {data[:8]!r}")
        return (self.name, data, len(headers))


def plain() -> tuple[Deserializer | None, Deserializer | None]:
    return Deserializer("key"), Deserializer("value")


def failing() -> tuple[Deserializer | None, Deserializer | None]:
    return Deserializer("key", fail_on=b"\xfe"), Deserializer("value", fail_on=b"\xff")


def typed(value: Any) -> Any:
    """``value`` with the type of every part, so ``bytes`` never equals a ``bytearray``."""
    if isinstance(value, list | tuple):
        return (type(value).__name__, [typed(v) for v in value])
    return (type(value).__name__, value)


def message(exc: Exception) -> str:
    """The text of ``exc``, with the one wording the two decoders may differ in made one.

    kafka-python reads a record from a ``bytearray``, the new decoder from
    ``bytes``: a read past the end is the same ``CorruptRecordError("Found
    invalid record structure: IndexError(...)")`` with the index error worded
    after the buffer type. That difference is harmless (same error, same place).
    """
    return str(exc).replace("IndexError('bytearray index", "IndexError('index")


@dataclass
class Outcome:
    """What one decoder did with a payload: one row per ``take`` and the final counters."""

    steps: list[tuple[Any, ...]]
    records_read: int
    bytes_read: int
    drains: int
    calls: list[Any]
    records: list[Any]


def run(
    cls: type,
    payload: bytes,
    fetch_offset: int,
    takes: Sequence[int | None],
    *,
    check_crcs: bool = True,
    isolation: Any = READ_UNCOMMITTED,
    aborted: Sequence[Aborted] = (),
    deserializers: Callable[[], tuple[Deserializer | None, Deserializer | None]] | None = None,
    max_steps: int = 10_000,
) -> Outcome:
    """Feed ``payload`` to ``cls`` and ``take`` from it as the fetcher does, to its end or error.

    ``takes`` cycles. A run ends when the partition is drained or ``take``
    raises: kafka-python's generator is then spent, so its later ``take`` calls
    return ``[]`` (what happens next is
    :func:`test_after_an_error_the_fetcher_moves_on_where_kafka_python_spins`).
    """
    key_deserializer, value_deserializer = deserializers() if deserializers else (None, None)
    drained: list[Any] = []
    part = cls(
        fetch_offset,
        TP,
        MemoryRecords(payload),
        key_deserializer,
        value_deserializer,
        check_crcs=check_crcs,
        isolation_level=isolation,
        aborted_transactions=list(aborted),
        on_drain=drained.append,
    )
    steps: list[tuple[Any, ...]] = []
    got: list[Any] = []
    for step in range(max_steps):
        if not part:
            break
        n = takes[step % len(takes)]
        try:
            taken = part.take(n)
        except Exception as exc:  # compared, type and message, with the other decoder's
            steps.append((n, ("raised", type(exc).__name__, message(exc)), *position(part)))
            break
        got.extend(taken)
        steps.append((n, ("records", typed(taken)), *position(part)))
    else:
        raise AssertionError(f"{cls.__name__} still not drained after {max_steps} takes")
    assert drained in ([], [part])
    calls = [d.calls for d in (key_deserializer, value_deserializer) if d is not None]
    return Outcome(steps, part.records_read, part.bytes_read, len(drained), calls, got)


def position(part: Any) -> tuple[int, int, bool]:
    """Where the fetcher goes on from: the next offset, its leader epoch, still in line."""
    return part.next_fetch_offset, part.leader_epoch, bool(part)


def raised(outcome: Outcome) -> bool:
    return bool(outcome.steps[-1][1][0] == "raised")


def assert_alike(
    payload: bytes, fetch_offset: int, takes: Sequence[int | None], **options: Any
) -> Outcome:
    """Both decoders on ``payload``: the same steps, counters and calls; the new one's outcome.

    One difference is meant: on an error the new decoder drains the partition's
    records (kafka-python keeps them in line, spent, and its fetcher spins).
    """
    stock = run(STOCK, payload, fetch_offset, takes, **options)
    new = run(NEW, payload, fetch_offset, takes, **options)
    expected = list(stock.steps)
    drains = stock.drains
    if raised(stock):
        *last, in_line = expected[-1]
        assert in_line and not drains
        expected[-1], drains = (*last, False), 1
    assert new.steps == expected
    assert (new.records_read, new.bytes_read, new.drains) == (
        stock.records_read,
        stock.bytes_read,
        drains,
    )
    assert new.calls == stock.calls
    return new


#: ``take`` sizes, cycled; 3, 4 and 6 are the sizes of the explicit cases' batches.
TAKE_PLANS: list[list[int | None]] = [
    [1],
    [2],
    [3],
    [4],
    [6],
    [7],
    [None],
    [3, None],
    [1, 2, 7, 500],
]


def assert_alike_for_all_takes(payload: bytes, fetch_offset: int, **options: Any) -> list[Outcome]:
    return [assert_alike(payload, fetch_offset, plan, **options) for plan in TAKE_PLANS]


# --- explicit cases ---------------------------------------------------------------

BOUNDARY_LENGTHS = [0, 1, 63, 64, 65, 127, 128, 8191, 8192, 8193, 16383, 16384, 20_000]


@pytest.mark.parametrize("length", BOUNDARY_LENGTHS)
def test_keys_and_values_around_varint_boundaries(length: int) -> None:
    data = bytes(range(256)) * (length // 256 + 1)
    recs = [
        Rec(0, key=data[:length], value=None),
        Rec(1, key=None, value=data[:length]),
        Rec(2, key=b"", value=data[:length][::-1]),
        Rec(3, key=data[:length], value=b"\x00"),
    ]
    payload = Batch(100, recs).encode()
    (outcome, *_) = assert_alike_for_all_takes(payload, 100)
    assert [(r.key, r.value) for r in outcome.records] == [(r.key, r.value) for r in recs]
    assert [(r.serialized_key_size, r.serialized_value_size) for r in outcome.records] == [
        (length, -1),
        (-1, length),
        (0, length),
        (length, 1),
    ]


def test_headers_none_several_null_values_and_non_ascii_keys() -> None:
    headers: list[Header] = [("trace-id", b"abc"), ("", b""), ("clé", None), ("日本", b"\xff" * 70)]
    recs = [
        Rec(0, headers=[]),
        Rec(1, headers=headers),
        Rec(2, headers=[("k", None)]),
        Rec(3, headers=[("x" * 200, b"y" * 9000)]),
    ]
    (outcome, *_) = assert_alike_for_all_takes(Batch(0, recs).encode(), 0)
    assert [r.headers for r in outcome.records] == [[], headers, [("k", None)], recs[3].headers]
    assert [r.serialized_header_size for r in outcome.records] == [-1, 8 + 3 + 4 + 6 + 70, 1, 9200]


def test_timestamps_large_and_negative_deltas_and_log_append_time() -> None:
    deltas = [0, -1, 1 << 40, -(1 << 40), 1 << 31, -(1 << 62)]
    recs = [Rec(i, timestamp_delta=d) for i, d in enumerate(deltas)]
    create = Batch(0, recs, first_timestamp=1 << 62).encode()
    (outcome, *_) = assert_alike_for_all_takes(create, 0)
    assert [(r.timestamp, r.timestamp_type) for r in outcome.records] == [
        ((1 << 62) + d, 0) for d in deltas
    ]
    appended = Batch(
        10, recs, first_timestamp=5, max_timestamp=123_456, attributes=_LOG_APPEND_TIME
    ).encode()
    (outcome, *_) = assert_alike_for_all_takes(appended, 10)
    assert {(r.timestamp, r.timestamp_type) for r in outcome.records} == {(123_456, 1)}


def test_batches_of_kafka_pythons_builders_with_log_append_time_and_gzip() -> None:
    items = [
        (0, 1_000, b"k0", b"v0", []),
        (1, 999, None, b"", [("h", b"1"), ("h", None)]),
        (5, 5_000, b"k5", None, []),
    ]
    payload = b"".join(
        [
            builder_batch(40, items, leader_epoch=3),
            builder_batch(46, items, compression=_GZIP, leader_epoch=4),
            builder_batch(60, items, log_append_time=77_777, leader_epoch=5),
            memory_records_payload([(b"a", b"b"), (None, b"c" * 300)], 80),
        ]
    )
    outcomes = assert_alike_for_all_takes(payload, 40)
    assert [r.offset for r in outcomes[0].records] == [40, 41, 45, 46, 47, 51, 60, 61, 65, 80, 81]
    assert [r.leader_epoch for r in outcomes[0].records][-3:] == [5, 0, 0]
    assert outcomes[0].records[6].timestamp == 77_777


@pytest.mark.parametrize("codec", CODECS)
def test_compressed_batches(codec: int) -> None:
    recs = [Rec(i * 2, timestamp_delta=i, key=b"k%d" % i, value=b"v" * i * 40) for i in range(30)]
    payload = Batch(1000, recs[:10], attributes=codec).encode()
    payload += Batch(1100, recs, attributes=codec, last_offset_delta=90).encode()
    for fetch_offset in (1000, 1007, 1100, 1101, 1150, 1190, 1191):
        assert_alike_for_all_takes(payload, fetch_offset)


def test_fetch_offsets_inside_and_past_batches_and_compacted_tails() -> None:
    batches = [
        Batch(10, [Rec(0), Rec(2), Rec(5)], last_offset_delta=9),  # 10 12 15, next 20
        Batch(20, [Rec(1), Rec(2)]),  # 21 22
        Batch(30, [Rec(0), Rec(3)], last_offset_delta=4),  # 30 33, next 35
    ]
    payload = b"".join(b.encode() for b in batches)
    positions = set()
    for fetch_offset in [*range(8, 37), 1 << 40]:
        for outcome in assert_alike_for_all_takes(payload, fetch_offset):
            positions.add((fetch_offset, outcome.steps[-1][2]))
    # From past the last record the position is the last batch's end, as in kafka-python.
    assert {(11, 35), (23, 35), (36, 35), (1 << 40, 35)} <= positions


def test_transactions_committed_aborted_and_control_batches_under_both_isolation_levels() -> None:
    def txn(base: int, pid: int, n: int) -> bytes:
        recs = [Rec(i, value=b"p%d-%d" % (pid, base + i)) for i in range(n)]
        return Batch(
            base,
            recs,
            attributes=_TRANSACTIONAL,
            producer_id=pid,
            producer_epoch=1,
            base_sequence=0,
        ).encode()

    payload = b"".join(
        [
            txn(0, 1, 3),  # 0-2 pid 1, aborted
            txn(3, 2, 2),  # 3-4 pid 2, committed
            control_batch(5, 1, commit=False),
            txn(6, 1, 2),  # 6-7 pid 1, committed this time
            control_batch(8, 2, commit=True),
            Batch(9, [Rec(0), Rec(1)], producer_id=3, producer_epoch=0, base_sequence=0).encode(),
            control_batch(11, 1, commit=True),
            txn(12, 2, 4),  # 12-15 pid 2, aborted, and no marker in this fetch
        ]
    )
    aborted = [Aborted(1, 0), Aborted(2, 12), Aborted(9, 100)]
    committed = assert_alike_for_all_takes(payload, 0, isolation=READ_COMMITTED, aborted=aborted)
    assert [r.offset for r in committed[0].records] == [3, 4, 6, 7, 9, 10]
    everything = assert_alike_for_all_takes(payload, 0, isolation=READ_UNCOMMITTED, aborted=aborted)
    assert [r.offset for r in everything[0].records] == [0, 1, 2, 3, 4, 6, 7, 9, 10, 12, 13, 14, 15]
    for fetch_offset in range(17):
        assert_alike(payload, fetch_offset, [1], isolation=READ_COMMITTED, aborted=aborted)
        assert_alike(payload, fetch_offset, [None], isolation=READ_COMMITTED, aborted=aborted[1:])


def test_control_batches_without_their_record_or_with_a_bad_key() -> None:
    data = Batch(0, [Rec(0), Rec(1)]).encode()
    empty = Batch(2, [], count=0, attributes=_TRANSACTIONAL | _CONTROL, producer_id=1).encode()
    short_key = Batch(
        2, [Rec(0, key=b"\x00")], attributes=_TRANSACTIONAL | _CONTROL, producer_id=1
    ).encode()
    for control in (empty, short_key):
        payload = data + control + Batch(3, [Rec(0)]).encode()
        for isolation in (READ_COMMITTED, READ_UNCOMMITTED):
            for fetch_offset in (0, 2, 3):
                assert_alike_for_all_takes(payload, fetch_offset, isolation=isolation)
    # read_committed reads the marker: kafka-python words a missing one so
    (outcome, *_) = assert_alike_for_all_takes(data + empty, 0, isolation=READ_COMMITTED)
    assert outcome.steps[-1][1] == (
        "raised",
        "RuntimeError",
        "StopIteration raised unpacking messageset",
    )


@pytest.mark.parametrize("magic", [0, 1])
def test_legacy_message_formats(magic: int) -> None:
    items: list[tuple[int | None, bytes | None, bytes | None]] = [
        (1_000 + i, None if i % 3 == 0 else b"k%d" % i, None if i == 4 else b"v" * (i * 30))
        for i in range(6)
    ]
    payload = b"".join(
        [
            legacy_batch(magic, 100, items),
            legacy_batch(magic, 200, items, compression=_GZIP),
            legacy_batch(magic, 300, items, compression=_GZIP, log_append_time=55_555),
            Batch(400, [Rec(0), Rec(1)], leader_epoch=9).encode(),  # a v2 batch after them
            legacy_batch(magic, 500, items[:2]),
        ]
    )
    for fetch_offset in (0, 100, 103, 200, 204, 300, 301, 305, 400, 401, 500, 502):
        assert_alike_for_all_takes(payload, fetch_offset)
    outcome = assert_alike(payload, 100, [None])
    assert [r.offset for r in outcome.records] == [
        *range(100, 106),
        *range(200, 206),
        *range(300, 306),
        400,
        401,
        500,
        501,
    ]
    if magic == 1:
        assert {r.timestamp for r in outcome.records[12:18]} == {55_555}
        assert [r.timestamp_type for r in outcome.records[:18]] == [0] * 12 + [1] * 6
    else:
        assert {r.timestamp for r in outcome.records[:18]} == {None}


def test_a_batch_with_a_magic_above_2() -> None:
    # kafka-python reads it as v2 records without the v2 batch logic (no leader
    # epoch, no control or aborted check, no position from its last offset).
    recs = [Rec(0, headers=[("h", b"123"), ("é", None)]), Rec(4, key=b"k")]
    odd = bytearray(Batch(10, recs, leader_epoch=3, last_offset_delta=9).encode())
    odd[16] = 3
    payload = Batch(0, [Rec(0)], leader_epoch=1).encode() + bytes(odd)
    for isolation in (READ_COMMITTED, READ_UNCOMMITTED):
        for fetch_offset in (0, 10, 11, 14, 15, 20):
            assert_alike_for_all_takes(payload, fetch_offset, isolation=isolation)
    outcome = assert_alike(payload, 0, [None], deserializers=plain)
    assert [(r.offset, r.leader_epoch, r.serialized_header_size) for r in outcome.records] == [
        (0, 1, -1),
        (10, 1, 6),
        (14, 1, -1),
    ]
    assert outcome.steps[-1][2] == 15


def test_deserializers_get_topic_headers_and_data_in_kafka_pythons_order() -> None:
    recs = [Rec(i, key=b"k%d" % i, headers=[("h", b"%d" % i)]) for i in range(5)]
    payload = Batch(0, recs).encode() + legacy_batch(1, 5, [(1, b"k", b"v")])

    outcome = assert_alike(payload, 2, [2], deserializers=plain)
    assert [r.key for r in outcome.records] == [("key", b"k%d" % i, 1) for i in (2, 3, 4)] + [
        ("key", b"k", 0)
    ]
    assert len(outcome.calls[0]) == 6  # records before the fetch offset are deserialized too
    for only_value in (True, False):

        def one(only_value: bool = only_value) -> tuple[Deserializer | None, Deserializer | None]:
            return (None, Deserializer("v")) if only_value else (Deserializer("k"), None)

        assert_alike_for_all_takes(payload, 0, deserializers=one)


def test_a_failing_deserializer_leaves_the_records_before_it() -> None:
    recs = [Rec(i, value=b"\xffbad" if i in (3, 12) else b"ok%d" % i) for i in range(10)]
    payload = Batch(0, recs).encode() + Batch(10, recs).encode()
    payload += legacy_batch(1, 20, [(1, b"k", b"ok"), (2, b"k", b"\xffno"), (3, None, b"ok")])

    for fetch_offset in (0, 2, 3, 4, 10, 20, 21, 22):
        outcomes = assert_alike_for_all_takes(payload, fetch_offset, deserializers=failing)
        assert any(step[1][0] == "raised" for step in outcomes[0].steps)
    outcome = assert_alike(payload, 0, [2], deserializers=failing)
    assert [r.offset for r in outcome.records] == [0, 1, 2]


def test_a_batch_failing_its_crc_check() -> None:
    good = Batch(0, [Rec(0), Rec(1)]).encode()
    bad = bytearray(Batch(2, [Rec(0), Rec(1, value=b"xyz")]).encode())
    bad[-2] ^= 0x01  # a byte of the value: only the CRC can tell
    payload = good + bytes(bad) + Batch(4, [Rec(0)]).encode()
    for fetch_offset in (0, 2, 3):
        for outcome in assert_alike_for_all_takes(payload, fetch_offset):
            assert outcome.steps[-1][1] == (
                "raised",
                "CorruptRecordError",
                "[Error 2] CorruptRecordError: Record batch for partition"
                f" {TP} at offset 2 failed crc check",
            )
            assert [r.offset for r in outcome.records] == [0, 1][fetch_offset:]
    outcome = assert_alike(payload, 0, [None], check_crcs=False)
    assert [r.value for r in outcome.records] == [b"v", b"v", b"v", b"xy{", b"v"]


def _the_error(payload: bytes, fetch_offset: int, take: int | None = None) -> CorruptRecordError:
    """The error our decoder raises taking ``take`` records at a time from ``fetch_offset``."""
    part = BatchDecodingPartitionRecords(
        fetch_offset,
        TP,
        MemoryRecords(payload),
        None,
        None,
        check_crcs=True,
        isolation_level=READ_UNCOMMITTED,
        aborted_transactions=[],
        on_drain=lambda _: None,
    )
    while part:
        try:
            part.take(take)
        except CorruptRecordError as exc:
            return exc
    raise AssertionError("no error")


@pytest.mark.parametrize("take", [None, 1])
def test_the_error_of_a_damaged_batch_says_where_the_unread_records_lie(take: int | None) -> None:
    """From the fetch position (past what was taken) to the batch's end, with its bytes."""
    good = Batch(0, [Rec(0), Rec(1)]).encode()
    bad = bytearray(Batch(2, [Rec(0), Rec(1, value=b"xyz"), Rec(2)]).encode())
    bad[-10] ^= 0x01
    payload = good + bytes(bad) + Batch(5, [Rec(0)]).encode()
    for fetch_offset, first in ((0, 2), (2, 2), (3, 3), (4, 4)):
        damaged = records.unreadable_batch(_the_error(payload, fetch_offset, take))
        assert damaged == records.UnreadableBatch(
            topic=TP.topic,
            partition=TP.partition,
            first_offset=first,
            next_offset=5,
            raw=bytes(bad),
        )
    # A broken record inside a batch whose CRC holds: the records before it were taken.
    # The batch's end is its header's word: base offset 50, last offset delta 2.
    broken = _negative_header_key()  # a good record (offset 50), then the broken one
    damaged = records.unreadable_batch(_the_error(good + broken, 0, take))
    assert damaged is not None
    assert (damaged.first_offset, damaged.next_offset, damaged.raw) == (51, 53, broken)
    # Other errors, and kafka-python's own, say nothing of where.
    assert records.unreadable_batch(CorruptRecordError("x")) is None


def corrupt_batches() -> Iterator[tuple[str, bytes]]:
    """Batches whose records lie about themselves (the CRC is recomputed to match)."""
    ok = [Rec(0, key=b"key", headers=[("h", b"x")]), Rec(1, value=b"v" * 100)]

    def batch(*recs: Rec, **fields: Any) -> bytes:
        return Batch(50, [ok[0], *recs, ok[1]], **fields).encode()

    yield "record too long", batch(Rec(5, length_fix=1))
    yield "record too short", batch(Rec(5, length_fix=-1))
    yield "length far past the end", batch(Rec(5, length_fix=1000))
    yield "negative length", batch(Rec(5, length_fix=-100))
    yield "negative header count", batch(Rec(5, header_count=-1))
    yield "header count too high", batch(Rec(5, headers=[("a", b"b")], header_count=3))
    yield "header key not utf-8", batch(Rec(5, headers=[(b"\xff\xfe", b"b")]))
    yield "multi-byte attributes", batch(Rec(5, attributes=b"\x80\x01"))
    yield "attributes varint too long", batch(Rec(5, attributes=b"\xff" * 10 + b"\x01"))
    yield "more records counted than present", batch(count=4)
    yield "fewer records counted than present", batch(count=1)
    yield "negative record count", batch(count=-1)
    yield "bytes after the records", batch(tail=b"\x00\x00")
    yield "gzip bytes after the records", batch(tail=b"\x02", attributes=_GZIP)
    long_key = b"\x00\x00\x0a" + varint(1000) + b"abc"
    yield (
        "key longer than the batch",
        _raw_batch(50, ok[0].encode() + varint(len(long_key)) + long_key, 2),
    )
    long_value = b"\x00\x00\x0a\x01" + varint(1000) + b"abc"
    yield "value longer than the batch", _raw_batch(50, varint(len(long_value)) + long_value, 1)
    truncated = Rec(5, headers=[("abc", b"def")]).encode()[:-2]
    yield "record cut short", _raw_batch(50, ok[0].encode() + truncated, 2)
    yield "varint cut short", _raw_batch(50, ok[0].encode() + b"\x80", 2)
    yield "empty batch", Batch(50, [], count=0).encode()
    raw = bytearray(batch(Rec(5)))
    raw[_ATTRIBUTES_AT + 1] |= 0x07  # an unknown codec
    yield "unknown codec", with_crc(raw)
    raw = bytearray(Batch(50, ok, attributes=_GZIP).encode())
    raw[-20] ^= 0xFF
    yield "gzip data damaged", with_crc(raw)


def _negative_header_key() -> bytes:
    rec = bytearray(Rec(5, headers=[("k", b"v")]).encode())
    # the header key length (varint 1 -> 0x02) becomes -1 (0x01)
    at = rec.rindex(b"\x02k")
    rec[at] = 0x01
    body = rec
    ok = Rec(0).encode()
    return _raw_batch(50, ok + bytes(body), 2)


def _raw_batch(base_offset: int, records_bytes: bytes, count: int) -> bytes:
    header = _HEADER.pack(
        base_offset,
        _HEADER.size - 12 + len(records_bytes),
        0,
        2,
        0,
        0,
        count,
        0,
        0,
        -1,
        -1,
        -1,
        count,
    )
    return with_crc(bytearray(header + records_bytes))


@pytest.mark.parametrize(("case", "payload"), list(corrupt_batches()), ids=lambda c: str(c)[:40])
def test_records_that_lie_about_their_encoding(case: str, payload: bytes) -> None:
    full = Batch(0, [Rec(0), Rec(1)]).encode() + payload + Batch(100, [Rec(0)]).encode()
    for check_crcs in (True, False):
        for fetch_offset in (0, 2, 50, 51, 55, 56):
            assert_alike_for_all_takes(full, fetch_offset, check_crcs=check_crcs)


def test_a_negative_header_key_size() -> None:
    payload = _negative_header_key()
    (outcome, *_) = assert_alike_for_all_takes(payload, 0)
    assert outcome.steps[-1][1] == (
        "raised",
        "CorruptRecordError",
        "[Error 2] CorruptRecordError: Invalid negative header key size -1",
    )


# --- generated cases ----------------------------------------------------------------


def random_data(rng: random.Random) -> bytes | None:
    pick = rng.random()
    if pick < 0.1:
        return None
    if pick < 0.2:
        return b""
    if pick < 0.3:
        return bytes([rng.randrange(256)])
    if pick < 0.36:
        return rng.randbytes(rng.choice(BOUNDARY_LENGTHS))
    return rng.randbytes(rng.randrange(2, 60))


HEADER_KEYS = ["", "a", "trace-id", "clé", "日本語", "ключ", "x" * 70]


def random_headers(rng: random.Random) -> list[Header]:
    if rng.random() < 0.5:
        return []
    return [
        (rng.choice(HEADER_KEYS), None if rng.random() < 0.2 else random_data(rng) or b"")
        for _ in range(rng.randint(1, 4))
    ]


TIMESTAMPS = [-1, 0, 1_700_000_000_000, 1 << 40, -(1 << 40)]


def random_v2_batch(rng: random.Random, base: int, pids: list[int]) -> tuple[Batch, int]:
    """A v2 batch at ``base`` and the offset after it."""
    delta, recs = -1, []
    for _ in range(rng.choice([1, 1, 2, 3, 5, 8, 20])):
        delta += 1 if rng.random() < 0.8 else rng.randint(2, 50)
        ts_delta = rng.choice([0, 1, -1, rng.randint(-(1 << 35), 1 << 35), 1 << 45])
        recs.append(Rec(delta, ts_delta, random_data(rng), random_data(rng), random_headers(rng)))
    attributes = rng.choice(CODECS) if rng.random() < 0.3 else 0
    if rng.random() < 0.2:
        attributes |= _LOG_APPEND_TIME
    pid = -1
    if rng.random() < 0.4:
        pid = rng.choice(pids)
        if rng.random() < 0.8:
            attributes |= _TRANSACTIONAL
    last = delta + (rng.randint(1, 5) if rng.random() < 0.15 else 0)
    batch = Batch(
        base,
        recs,
        first_timestamp=rng.choice(TIMESTAMPS),
        max_timestamp=rng.choice([None, 42, 1_800_000_000_000]),
        attributes=attributes,
        last_offset_delta=last,
        leader_epoch=rng.choice([-1, 0, 5, 1 << 20]),
        producer_id=pid,
        producer_epoch=1 if pid >= 0 else -1,
        base_sequence=0 if pid >= 0 else -1,
    )
    return batch, base + last + 1


def random_payload(rng: random.Random) -> tuple[bytes, list[int], list[Aborted]]:
    """A fetch payload, the offsets a fetch could start from, and aborted transactions."""
    pids = [1, 2, 1 << 40]
    base = rng.choice([0, 1, 1000, 1 << 33])
    first = base
    chunks: list[bytes] = []
    aborted: list[Aborted] = []
    starts = [base]
    for _ in range(rng.choice([1, 1, 2, 3, 4, 6])):
        kind = rng.random()
        if kind < 0.1:
            magic = rng.choice([0, 1])
            n = rng.randint(1, 4)
            items = [
                (rng.randint(0, 1 << 41), random_data(rng), random_data(rng)) for _ in range(n)
            ]
            compression = _GZIP if rng.random() < 0.5 else 0
            chunks.append(legacy_batch(magic, base, items, compression=compression))
            base += n
        elif kind < 0.2:
            chunks.append(control_batch(base, rng.choice(pids), commit=rng.random() < 0.5))
            base += 1
        else:
            batch, base = random_v2_batch(rng, base, pids)
            chunks.append(batch.encode())
            if batch.producer_id >= 0 and rng.random() < 0.4:
                aborted.append(Aborted(batch.producer_id, batch.base_offset))
        starts.append(base)
        base += rng.choice([0, 0, 0, 1, 17])
    inside = [rng.randint(first, base) for _ in range(2)]
    return b"".join(chunks), sorted({first - 1, *starts, *inside, base + 5}), aborted


def random_takes(rng: random.Random) -> list[int | None]:
    return [rng.choice([1, 1, 2, 3, 7, 20, 500, None]) for _ in range(rng.randint(1, 4))]


SEEDS = range(16)
CASES_PER_SEED = 100


@pytest.mark.parametrize("seed", SEEDS)
def test_generated_payloads_decode_alike(seed: int) -> None:
    rng = random.Random(f"payloads-{seed}")
    for _ in range(CASES_PER_SEED):
        payload, offsets, aborted = random_payload(rng)
        isolation = rng.choice([READ_COMMITTED, READ_UNCOMMITTED])
        for fetch_offset in rng.sample(offsets, min(3, len(offsets))):
            assert_alike(
                payload,
                fetch_offset,
                random_takes(rng),
                isolation=isolation,
                aborted=aborted,
                check_crcs=rng.random() < 0.8,
                deserializers=rng.choice([None, None, plain, failing]),
            )


def flip(rng: random.Random, payload: bytes) -> bytes:
    """``payload`` with a few bytes changed, a cut, or a record length edited."""
    raw = bytearray(payload)
    how = rng.random()
    if how < 0.6:
        for _ in range(rng.randint(1, 3)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    elif how < 0.8:
        raw[rng.randrange(len(raw))] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF])
    else:  # cut the first batch's records short, with its length saying so
        del raw[rng.randrange(min(_HEADER.size, len(raw) - 1), len(raw)) :]
        struct.pack_into(">i", raw, 8, len(raw) - 12)
    return bytes(raw)


def resign_first(payload: bytes) -> bytes:
    """``payload`` with a CRC matching its first batch when it is a v2 one of sane length.

    The damage then reaches the record parser even with ``check_crcs``.
    """
    length = struct.unpack_from(">i", payload, 8)[0] + 12
    if payload[16] != 2 or not _HEADER.size <= length <= len(payload):
        return payload
    return with_crc(bytearray(payload[:length])) + payload[length:]


@pytest.mark.parametrize("seed", SEEDS)
def test_corrupted_payloads_fail_alike(seed: int) -> None:
    rng = random.Random(f"flips-{seed}")
    for _ in range(CASES_PER_SEED):
        payload, offsets, aborted = random_payload(rng)
        damaged = flip(rng, payload)
        damaged = resign_first(damaged) if rng.random() < 0.7 else damaged
        for check_crcs in (False, True):
            assert_alike(
                damaged,
                rng.choice(offsets),
                random_takes(rng),
                isolation=rng.choice([READ_COMMITTED, READ_UNCOMMITTED]),
                aborted=aborted,
                check_crcs=check_crcs,
            )


# --- after an error, and install() --------------------------------------------------


class _Counted:
    """A ``take`` that fails the test when a poll keeps calling it for nothing."""

    takes = 0

    def take(self, n: int | None = None) -> list[Any]:
        self.takes += 1
        if self.takes > 50:
            raise _Spinning
        return super().take(n)  # type: ignore[misc,no-any-return]


class _Spinning(BaseException):  # not caught by the fetcher's ``except Exception``
    pass


class _CountedStock(_Counted, Fetcher.PartitionRecords):  # type: ignore[misc]
    pass


class _CountedNew(_Counted, NEW):
    pass


def _fetcher_with(part: Any) -> Any:
    subscriptions = SubscriptionState()
    subscriptions.assign_from_user([TP])
    subscriptions.seek(TP, 50)
    fetcher = Fetcher(mock.MagicMock(), subscriptions)
    fetcher._next_partition_records = part
    return fetcher


def test_after_an_error_the_fetcher_moves_on_where_kafka_python_spins() -> None:
    payload = next(corrupt_batches())[1]  # offset 50, then a record whose length lies
    # kafka-python 3.0.12: the error leaves its spent records in line, truthy,
    # and the fetcher's next poll calls ``take`` (``[]``) forever. Not copied.
    fetcher = _fetcher_with(_CountedStock(50, TP, MemoryRecords(payload), None, None))
    assert [r.offset for r in fetcher.fetched_records(10)[0][TP]] == [50]
    with pytest.raises(CorruptRecordError):
        fetcher.fetched_records(10)
    with pytest.raises(_Spinning):
        fetcher.fetched_records(10)
    # The new decoder drains on the error: the position stays at the bad record,
    # the next poll goes on (nothing else was fetched here), and a new fetch from
    # that position would raise the error again, as Kafka's Java consumer does.
    part = _CountedNew(50, TP, MemoryRecords(payload), None, None)
    fetcher = _fetcher_with(part)
    assert [r.offset for r in fetcher.fetched_records(10)[0][TP]] == [50]
    with pytest.raises(CorruptRecordError, match="Invalid record size"):
        fetcher.fetched_records(10)
    assert not part and fetcher._subscriptions.position(TP).offset == 51
    assert fetcher.fetched_records(10) == ({}, False)
    assert part.takes == 2


def test_install_sets_the_decoder_on_a_consumer_of_this_kafka_python() -> None:
    consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:1", api_version=(2, 5))
    try:
        assert consumer._fetcher.PartitionRecords is STOCK
        assert records.install(consumer) is True
        assert consumer._fetcher.PartitionRecords is NEW
        assert records.install(consumer) is False  # already replaced: left alone
        assert consumer._fetcher.PartitionRecords is NEW
    finally:
        consumer.close()


class _Stub:
    def __init__(self) -> None:
        self.PartitionRecords = STOCK


class _Holder:
    def __init__(self, fetcher: Any) -> None:
        self._fetcher = fetcher


@pytest.mark.parametrize("version", ["2.2.15", "3.1.0", "4.0.0", ""])
def test_install_refuses_a_kafka_python_it_was_not_checked_against(
    version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka, "__version__", version)
    holder = _Holder(_Stub())
    assert records.install(holder) is False
    assert holder._fetcher.PartitionRecords is STOCK
    assert records.install(_Holder(None)) is False
    assert records.install(object()) is False


@pytest.mark.parametrize(("setting", "decoder"), [(True, NEW), (False, STOCK)])
def test_make_consumer_follows_the_setting_when_given_the_settings(
    setting: bool, decoder: type
) -> None:
    settings = Settings(
        _env_file=None, bootstrap_servers="127.0.0.1:1", kafka_batch_decoding=setting
    )
    consumer = make_consumer(settings, client_id="t", group_id=None, api_version=(2, 5))
    try:
        assert consumer._fetcher.PartitionRecords is decoder  # type: ignore[attr-defined]
    finally:
        consumer.close()


def test_make_consumer_decides_without_the_settings_and_when_told() -> None:
    for target, told, decoder in (
        ("127.0.0.1:1", None, NEW),  # no settings: on
        (Settings(_env_file=None, bootstrap_servers="127.0.0.1:1"), False, STOCK),
    ):
        consumer = make_consumer(
            target, client_id="t", group_id=None, batch_decoding=told, api_version=(2, 5)
        )
        try:
            assert consumer._fetcher.PartitionRecords is decoder  # type: ignore[attr-defined]
        finally:
            consumer.close()
