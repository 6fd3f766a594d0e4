"""Damage written to a real broker's log, for the tests of what readers do with it.

A broker checks a batch's CRC when it is written, not when it is read: a byte
flipped in a log segment afterwards shows only to consumers, as kafka-python's
``CorruptRecordError`` at every fetch from that batch. The same way as
``tests/e2e/test_damaged_log.py``, importable by any test.
"""

from __future__ import annotations

from pathlib import Path

from kafka_extras import delivered

from fraudstream.service.kafka import make_producer


def write_one_batch_each(
    bootstrap: str, topic: str, records: list[tuple[int, bytes, bytes]]
) -> dict[bytes, int]:
    """Write ``(partition, key, value)`` records a batch each; the offset of each value."""
    producer = make_producer(bootstrap, client_id="test-writer")
    try:
        offsets = {}
        for partition, key, value in records:
            sent = producer.send(topic, key=key, value=value, partition=partition)
            producer.flush(timeout=30)
            offsets[value] = delivered(sent, 30).offset
        return offsets
    finally:
        producer.close(timeout=10)


def flip_a_byte(log_dir: Path, topic: str, inside: bytes, partition: int = 0) -> None:
    """Flip one byte in the middle of ``inside`` (a record's value) in a partition's log.

    ``log_dir`` is the broker's ``log.dirs`` (``KafkaServer.data_dir / "logs"``).
    The byte is written in place: a running broker serves the damaged batch
    from then on (it reads segments through the page cache and never checks
    them again), a stopped one after its start.
    """
    (segment,) = (log_dir / f"{topic}-{partition}").glob("*.log")
    data = segment.read_bytes()
    at = data.find(inside)
    assert at >= 0 and data.find(inside, at + 1) < 0, f"{inside!r} is not once in {segment}"
    position = at + len(inside) // 2
    with segment.open("r+b") as log:
        log.seek(position)
        log.write(bytes([data[position] ^ 0x20]))
