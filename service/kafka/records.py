"""Record decoding for kafka-python's fetcher: one loop per batch instead of ~10 calls per record.

kafka-python 3.0 turns each fetched record into a :class:`ConsumerRecord`
through a chain of Python calls: seven varint decodes, a ``DefaultRecord``,
about ten property reads, two deserializer calls and a namedtuple
constructor, all behind a generator that ``take`` slices one record at a
time. On this project's benchmark machine that is ~5.7 µs per record, a
quarter of the scorer's CPU per transaction.

:class:`BatchDecodingPartitionRecords` keeps kafka-python's batch logic
(CRC checks, aborted transactions under ``read_committed``, control
batches, records before the fetch offset, the fetch position after each
``take``) and decodes the records of a v2 batch in one loop into the same
``ConsumerRecord`` tuples (~1.7 µs per record). Other batches (message
formats v0 and v1) go through kafka-python's own record objects.
:func:`install` gives one consumer the faster class; the consumer is
otherwise unchanged.

``tests/unit/kafka/test_records.py`` holds it to kafka-python's own
decoder on the installed version: the same records, fetch positions and
errors for every batch shape, ``take`` size and corruption it generates.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import kafka
from kafka.consumer.fetcher import ConsumerRecord, Fetcher, IsolationLevel
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.util import decode_varint
from kafka.structs import TopicPartition

log = logging.getLogger(__name__)

#: kafka-python versions whose fetcher this module was checked against.
SUPPORTED_VERSIONS = ("3.0.",)

_LOG_APPEND_TIME = DefaultRecordBatch.TIMESTAMP_TYPE_MASK
_new_tuple = tuple.__new__


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint at ``pos`` and the position after it (one and two bytes inline).

    >>> _varint(bytes([0x03]), 0), _varint(bytes([0x80, 0x03]), 0)
    ((-2, 1), (192, 2))
    >>> _varint(bytes([0xFF, 0xFF, 0x03]), 0)
    (-32768, 3)
    """
    value = buf[pos]
    if value < 0x80:
        return (value >> 1) ^ -(value & 1), pos + 1
    high = buf[pos + 1]
    if high < 0x80:
        value = (value & 0x7F) | (high << 7)
        return (value >> 1) ^ -(value & 1), pos + 2
    return decode_varint(buf, pos)  # type: ignore[no-any-return]


def _nullable_bytes(buf: bytes, pos: int) -> tuple[bytes | None, int, int]:
    """The bytes at ``pos`` (a varint length, then the data), their length (-1: null), the end.

    >>> _nullable_bytes(bytes([0x06]) + b"abc", 0), _nullable_bytes(bytes([0x01]), 0)
    ((b'abc', 3, 4), (None, -1, 1))
    """
    length, pos = _varint(buf, pos)
    if length < 0:
        return None, -1, pos
    return buf[pos : pos + length], length, pos + length


def _headers(buf: bytes, pos: int, count: int) -> tuple[list[tuple[str, bytes | None]], int, int]:
    """``count`` record headers, their size as kafka-python counts it, and the end position."""
    headers: list[tuple[str, bytes | None]] = []
    size = 0
    for _ in range(count):
        key_len, pos = _varint(buf, pos)
        if key_len < 0:
            raise CorruptRecordError(f"Invalid negative header key size {key_len}")
        key = buf[pos : pos + key_len].decode("utf-8")
        pos += key_len
        value, value_len, pos = _nullable_bytes(buf, pos)
        if value is not None:
            size += value_len
        size += len(key.encode("utf-8"))
        headers.append((key, value))
    return headers, size, pos


def decode_batch(
    batch: DefaultRecordBatch, topic: str, partition: int, leader_epoch: int
) -> tuple[list[ConsumerRecord], int, Exception | None]:
    """The records of a v2 data batch, their payload bytes, and the error that stopped decoding.

    On a corrupt record the records before it are returned with the error, as
    kafka-python's generator yields them before raising.
    """
    iter(batch)  # decompresses a compressed batch in place
    buf = bytes(batch._buffer)
    pos: int = batch._pos
    base_offset: int = batch.base_offset
    log_append = bool(batch.attributes & _LOG_APPEND_TIME)
    timestamp_type = 1 if log_append else 0
    first_timestamp: int = batch.first_timestamp
    max_timestamp: int = batch.max_timestamp
    records: list[ConsumerRecord] = []
    append = records.append
    payload = 0
    try:
        for _ in range(batch.records_count):
            length, pos = _varint(buf, pos)
            start = pos
            if buf[pos] < 0x80:  # attributes, unused
                pos += 1
            else:
                _, pos = decode_varint(buf, pos)
            timestamp_delta, pos = _varint(buf, pos)
            offset_delta, pos = _varint(buf, pos)
            key, key_len, pos = _nullable_bytes(buf, pos)
            value, value_len, pos = _nullable_bytes(buf, pos)
            header_count, pos = _varint(buf, pos)
            if header_count == 0:
                headers: list[tuple[str, bytes | None]] = []
                header_size = -1
            elif header_count > 0:
                headers, header_size, pos = _headers(buf, pos, header_count)
            else:
                raise CorruptRecordError(f"Found invalid number of record headers {header_count}")
            if pos - start != length:
                raise CorruptRecordError(
                    f"Invalid record size: expected to read {length} bytes in record payload,"
                    f" but instead read {pos - start}"
                )
            payload += length
            append(
                _new_tuple(
                    ConsumerRecord,
                    (
                        topic,
                        partition,
                        leader_epoch,
                        base_offset + offset_delta,
                        max_timestamp if log_append else first_timestamp + timestamp_delta,
                        timestamp_type,
                        key,
                        value,
                        headers,
                        None,
                        key_len,
                        value_len,
                        header_size,
                    ),
                )
            )
        if pos != len(buf):
            raise CorruptRecordError(
                f"{len(buf) - pos} unconsumed bytes after all records consumed"
            )
    except CorruptRecordError as exc:
        return _failed(records, payload, exc)
    except (ValueError, IndexError) as exc:
        return _failed(
            records, payload, CorruptRecordError(f"Found invalid record structure: {exc!r}")
        )
    return records, payload, None


def _failed(
    records: list[ConsumerRecord], payload: int, error: Exception
) -> tuple[list[ConsumerRecord], int, Exception]:
    """What :func:`decode_batch` returns on an error, the last record's sizes as kafka-python's.

    The key, value or a header value of the last record may run past the end
    of the batch (the error comes after it): it then holds fewer bytes than its
    length said, and kafka-python's serialized sizes measure the bytes it holds.
    """
    if not records:
        return records, payload, error
    record = records[-1]
    headers = record.headers
    records[-1] = record._replace(
        serialized_key_size=-1 if record.key is None else len(record.key),
        serialized_value_size=-1 if record.value is None else len(record.value),
        serialized_header_size=sum(
            len(name.encode("utf-8")) + (0 if value is None else len(value))
            for name, value in headers
        )
        if headers
        else -1,
    )
    return records, payload, error


def _payload_of_first(batch: DefaultRecordBatch, count: int) -> int:
    """The payload bytes of the first ``count`` records of a decoded v2 batch."""
    buf, pos, payload = batch._buffer, batch._pos, 0
    for _ in range(count):
        length, pos = _varint(buf, pos)
        payload += length
        pos += length
    return payload


@dataclass(frozen=True, slots=True)
class UnreadableBatch:
    """Records of a v2 batch the consumer cannot read (its CRC check failed, or a record is broken).

    A broker checks every batch it is sent, so such a batch was damaged after
    it was written (a disk, a copy of the log). Fetching from any of its
    offsets fails the same way again: the consumer must seek past it.
    """

    topic: str
    partition: int
    #: The first offset not read (records before it in the batch were returned).
    first_offset: int
    #: The offset after the batch, as its header says.
    next_offset: int
    #: The batch's bytes as fetched (its records decompressed when the batch was
    #: compressed and the damage was found decoding them).
    raw: bytes


def unreadable_batch(error: BaseException) -> UnreadableBatch | None:
    """Where the records ``error`` left unread lie, when it is a damaged v2 batch's error.

    >>> unreadable_batch(CorruptRecordError("x")) is None
    True
    """
    found = getattr(error, "unreadable_batch", None)
    return found if isinstance(found, UnreadableBatch) else None


def seek_past(consumer: Any, damaged: UnreadableBatch) -> int:
    """Seek ``consumer`` past ``damaged``; the last offset it covers.

    That is the batch's end as its header says, which the damage may have
    reached, kept within the partition's end (the header's word when the
    broker does not answer).
    """
    tp = TopicPartition(damaged.topic, damaged.partition)
    last = damaged.next_offset - 1
    with contextlib.suppress(Exception):
        end = consumer.end_offsets([tp]).get(tp)
        if end is not None and end > damaged.first_offset:
            last = min(last, end - 1)
    consumer.seek(tp, last + 1)
    return last


class BatchDecodingPartitionRecords(Fetcher.PartitionRecords):  # type: ignore[misc]
    """kafka-python's ``PartitionRecords`` with each v2 batch decoded in one loop.

    ``take`` hands out slices of the decoded batch; the fetch position, the
    error raised after the records before it, and the drain at the end are
    kafka-python's. One thing is not: raising an error drains the records.
    kafka-python 3.0.12 keeps its spent records in line, and its fetcher's next
    poll then calls ``take`` (``[]``) forever; drained, the fetcher goes on,
    the position stays at the bad record and the next fetch from it raises the
    error again, as Kafka's Java consumer does until the application seeks past.
    A damaged v2 batch's error also says where its unread records lie
    (:func:`unreadable_batch`), so the application can seek past them.
    """

    _next_inline_exception: Exception | None  # kafka-python's, set by its __init__

    def __init__(
        self,
        fetch_offset: int,
        tp: Any,
        records: Any,
        key_deserializer: Any = None,
        value_deserializer: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            fetch_offset, tp, records, key_deserializer, value_deserializer, *args, **kwargs
        )
        self._chunks = self._decoded_batches(tp, records, key_deserializer, value_deserializer)
        self._chunk: list[ConsumerRecord] = []
        self._taken = 0
        self._skipping = True

    def take(self, n: int | None = None) -> list[ConsumerRecord]:
        """Up to ``n`` records (all when ``None``); the fetch position moves past them."""
        if self._next_inline_exception:  # drained with it: see the class docstring
            error, self._next_inline_exception = self._next_inline_exception, None
            self.drain()
            raise error
        records: list[ConsumerRecord] = []
        try:
            while self.record_iterator is not None and (n is None or len(records) < n):
                if self._taken == len(self._chunk):
                    chunk = next(self._chunks, None)
                    if chunk is None:
                        break
                    self._chunk, self._taken = chunk, 0
                    continue
                end = len(self._chunk)
                if n is not None:
                    end = min(end, self._taken + n - len(records))
                records.extend(self._chunk[self._taken : end])
                self._taken = end
                self.next_fetch_offset = records[-1].offset + 1
        except Exception as exc:
            if not records:
                self.drain()
                raise
            self._next_inline_exception = exc  # raised by the next take, as kafka-python does
        return records

    def _decoded_batches(
        self, tp: Any, records: Any, key_deserializer: Any, value_deserializer: Any
    ) -> Iterator[list[ConsumerRecord]]:
        """The records of each batch in turn: kafka-python's ``_unpack_records`` by batch."""
        try:
            batch = records.next_batch()
            last_batch = None
            while batch is not None:
                last_batch = batch
                try:
                    chunk, error = self._batch_records(
                        batch, tp, key_deserializer, value_deserializer
                    )
                except CorruptRecordError as exc:  # its CRC check failed
                    self._mark_unreadable(exc, batch, tp)
                    raise
                if chunk:
                    yield chunk
                if error is not None:
                    if isinstance(error, CorruptRecordError):
                        self._mark_unreadable(error, batch, tp)
                    raise error
                batch = records.next_batch()
            if last_batch is not None and last_batch.magic == 2:
                self.next_fetch_offset = last_batch.next_offset
            self.drain()
        except StopIteration:  # e.g. a control batch without its record: as kafka-python words it
            log.exception("StopIteration raised unpacking messageset")
            raise RuntimeError("StopIteration raised unpacking messageset") from None

    def _mark_unreadable(self, error: CorruptRecordError, batch: Any, tp: Any) -> None:
        """Tell ``error`` where the records it leaves unread lie (:func:`unreadable_batch`).

        A v2 batch's only. They run from the fetch position (past the records already taken) to
        the batch's end as its header gives it, which the CRC may not vouch for:
        the consumer bounds it by the partition's end.
        """
        if batch.magic != 2:
            return
        first = max(batch.base_offset, self.fetch_offset, self.next_fetch_offset)
        error.unreadable_batch = UnreadableBatch(
            topic=tp.topic,
            partition=tp.partition,
            first_offset=first,
            next_offset=max(first + 1, batch.next_offset),
            raw=bytes(batch._buffer),
        )

    def _batch_records(
        self, batch: Any, tp: Any, key_deserializer: Any, value_deserializer: Any
    ) -> tuple[list[ConsumerRecord], Exception | None]:
        """The records of one batch from the fetch offset on, and the error that ended them."""
        if self.check_crcs and not batch.validate_crc():
            raise CorruptRecordError(
                f"Record batch for partition {self.topic_partition} at offset"
                f" {batch.base_offset} failed crc check"
            )
        if batch.magic != 2:
            chunk, error = self._legacy_records(batch, tp, key_deserializer, value_deserializer)
            return self._from_fetch_offset(chunk), error
        self.leader_epoch = batch.leader_epoch
        if self._skip_batch(batch):
            self.next_fetch_offset = batch.next_offset
            return [], None
        chunk, payload, error = decode_batch(batch, tp.topic, tp.partition, self.leader_epoch)
        if key_deserializer is not None or value_deserializer is not None:
            chunk, failure = self._deserialized(chunk, key_deserializer, value_deserializer)
            if failure is not None:  # the records before it, then its error
                error = failure
                payload = _payload_of_first(batch, len(chunk))
        self.records_read += len(chunk)
        self.bytes_read += payload
        return self._from_fetch_offset(chunk), error

    def _skip_batch(self, batch: DefaultRecordBatch) -> bool:
        """Whether a v2 batch is a control batch or belongs to an aborted transaction."""
        if self.isolation_level == IsolationLevel.READ_COMMITTED and batch.has_producer_id():
            self._consume_aborted_transactions_up_to(batch.last_offset)
            producer_id = batch.producer_id
            if self._contains_abort_marker(batch):
                self.aborted_producer_ids.discard(producer_id)
            elif self._is_batch_aborted(batch):
                return True
        return bool(batch.is_control_batch)

    def _from_fetch_offset(self, chunk: list[ConsumerRecord]) -> list[ConsumerRecord]:
        """Drop the records before the fetch offset (a fetch may start mid-batch)."""
        if not self._skipping or not chunk:
            return chunk
        for i, record in enumerate(chunk):
            if record.offset >= self.fetch_offset:
                self._skipping = False
                if i:
                    self.next_fetch_offset = chunk[i - 1].offset + 1
                return chunk[i:]
        self.next_fetch_offset = chunk[-1].offset + 1
        return []

    def _legacy_records(
        self, batch: Any, tp: Any, key_deserializer: Any, value_deserializer: Any
    ) -> tuple[list[ConsumerRecord], Exception | None]:
        """Records of a batch that is not v2, step for step as kafka-python makes them.

        v0/v1 messages, and a corrupt magic above 2 (read by kafka-python as v2
        records, headers included, without the v2 batch logic).
        """
        records: list[ConsumerRecord] = []
        try:
            for record in batch:
                if self.check_crcs and not record.validate_crc():
                    raise CorruptRecordError(
                        f"Record for partition {self.topic_partition} at offset"
                        f" {record.offset} failed crc check"
                    )
                key, value = record.key, record.value
                key_size = len(key) if key is not None else -1
                value_size = len(value) if value is not None else -1
                headers = record.headers
                key = self._deserialize(key_deserializer, tp.topic, headers, key)
                value = self._deserialize(value_deserializer, tp.topic, headers, value)
                header_size = (
                    sum(
                        len(k.encode("utf-8")) + (len(v) if v is not None else 0)
                        for k, v in headers
                    )
                    if headers
                    else -1
                )
                self.records_read += 1
                self.bytes_read += record.size_in_bytes
                records.append(
                    ConsumerRecord(
                        tp.topic,
                        tp.partition,
                        self.leader_epoch,
                        record.offset,
                        record.timestamp,
                        record.timestamp_type,
                        key,
                        value,
                        record.headers,
                        record.checksum,
                        key_size,
                        value_size,
                        header_size,
                    )
                )
        except Exception as exc:
            return records, exc
        return records, None

    def _deserialized(
        self, chunk: list[ConsumerRecord], key_deserializer: Any, value_deserializer: Any
    ) -> tuple[list[ConsumerRecord], Exception | None]:
        """``chunk`` deserialized, up to the record whose deserializer failed, and its error."""
        deserialize: Callable[..., Any] = self._deserialize
        done: list[ConsumerRecord] = []
        try:
            for record in chunk:
                topic, headers = record.topic, record.headers
                done.append(
                    record._replace(
                        key=deserialize(key_deserializer, topic, headers, record.key),
                        value=deserialize(value_deserializer, topic, headers, record.value),
                    )
                )
        except Exception as exc:
            return done, exc
        return done, None


def install(consumer: Any) -> bool:
    """Make ``consumer`` decode fetched batches with :class:`BatchDecodingPartitionRecords`.

    Returns ``False`` (the consumer keeps kafka-python's decoder) on a
    kafka-python version this module was not checked against.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    version = getattr(kafka, "__version__", "")
    if (
        not version.startswith(SUPPORTED_VERSIONS)
        or fetcher is None
        or getattr(fetcher, "PartitionRecords", None) is not Fetcher.PartitionRecords
    ):
        log.info("kafka-python %s: records are decoded by kafka-python itself", version)
        return False
    fetcher.PartitionRecords = BatchDecodingPartitionRecords
    return True
