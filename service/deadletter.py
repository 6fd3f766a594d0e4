"""Dead letters: bad input is kept, with the reason in headers, and always deliverable.

A dead letter carries the original key and value bytes as they were consumed,
plus headers naming the error class and message, the source topic, partition
and offset, and the time it was dead-lettered. Downstream tools can fix and
replay them (``fraudstream replay`` of a recording of the DLQ topic).

A dead letter must always be deliverable, or one record would stall its
partition forever: a record just under the broker's size limit, with our
headers added, would not fit. So a dead letter is kept within ``max_bytes``
(the ``dead_letter_max_bytes`` setting, below the dead-letter topic's
``max.message.bytes``): our own headers always fit, the record's original
headers are dropped when they would take more than a quarter of the room
(``fraudstream.original_headers.dropped`` says how many), and the key and then
the value are cut to fit, each with headers giving its original size and
SHA-256 (``fraudstream.value.truncated``, ``fraudstream.value.original_bytes``,
``fraudstream.value.sha256``; the same for ``key``).

Examples
--------
>>> letter = DeadLetter.of(ValueError("amount must be > 0"), topic="transactions",
...                        partition=3, offset=42, key=b"c1", value=b'{"amount": -1}',
...                        now_ms=1_700_000_000_000)
>>> dict(letter.headers)["fraudstream.error.class"]
b'ValueError'
>>> letter.value
b'{"amount": -1}'
>>> big = DeadLetter.of(ValueError("too big"), topic="t", partition=0, offset=1, key=b"k",
...                     value=b"x" * 100_000, now_ms=0, max_bytes=10_000)
>>> len(big.value) < 10_000, dict(big.headers)["fraudstream.value.original_bytes"]
(True, b'100000')
>>> big.size <= 10_000
True
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

#: Longest error message kept in a header.
MAX_MESSAGE_BYTES = 2048

#: Default bound of a whole dead letter (key, value and headers), in bytes: below
#: Kafka's default ``max.message.bytes`` (1,048,588) with room for framing.
DEFAULT_MAX_BYTES = 1_000_000

#: Bytes set aside for the record's framing (lengths, attributes, varints).
_FRAMING_BYTES = 512

#: Room a record batch needs beyond its one record (batch header, CRC, producer ids).
_BATCH_OVERHEAD_BYTES = 512


def dead_letter_record_limit(max_bytes: int) -> int:
    """The ``max.message.bytes`` a dead-letter topic needs for dead letters of ``max_bytes``.

    A dead letter is sent in a record batch of its own when it is large; the
    batch adds its header to the record.

    >>> dead_letter_record_limit(1_000_000)
    1000512
    """
    return max_bytes + _BATCH_OVERHEAD_BYTES


HEADER_PREFIX = "fraudstream."


def _headers_size(headers: list[tuple[str, bytes]]) -> int:
    # Each header costs its key and value plus a few bytes of varint lengths.
    return sum(len(k.encode("utf-8")) + len(v) + 10 for k, v in headers)


def _cut(name: str, data: bytes | None, room: int, notes: list[tuple[str, bytes]]) -> bytes | None:
    """``data`` cut to ``room`` bytes, noting its original size and hash when cut."""
    if data is None or len(data) <= room:
        return data
    notes += [
        (f"{HEADER_PREFIX}{name}.truncated", b"true"),
        (f"{HEADER_PREFIX}{name}.original_bytes", str(len(data)).encode()),
        (f"{HEADER_PREFIX}{name}.sha256", hashlib.sha256(data).hexdigest().encode()),
    ]
    return data[: max(0, room)]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record to send to a dead-letter topic."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    error_class: str

    @property
    def size(self) -> int:
        """Bytes of key, value and headers (framing excluded)."""
        return len(self.key or b"") + len(self.value or b"") + _headers_size(self.headers)

    @classmethod
    def of(
        cls,
        error: BaseException,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        now_ms: int,
        original_headers: list[tuple[str, bytes]] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> DeadLetter:
        """Build the dead letter of a consumed record that failed with ``error``.

        Parameters
        ----------
        error
            Why the record is dead-lettered (class and message go to headers).
        topic, partition, offset
            Where the record was consumed.
        key, value, original_headers
            The record as consumed.
        now_ms
            Wall-clock time, epoch milliseconds.
        max_bytes
            Bound of the whole dead letter; key, value and original headers are
            cut or dropped to fit (see the module docstring).
        """
        message = str(error).encode("utf-8", errors="replace")[:MAX_MESSAGE_BYTES]
        error_class = type(error).__name__
        ours = [
            (f"{HEADER_PREFIX}error.class", error_class.encode()),
            (f"{HEADER_PREFIX}error.message", message),
            (f"{HEADER_PREFIX}source.topic", topic.encode()),
            (f"{HEADER_PREFIX}source.partition", str(partition).encode()),
            (f"{HEADER_PREFIX}source.offset", str(offset).encode()),
            (f"{HEADER_PREFIX}dead_lettered_at_ms", str(now_ms).encode()),
        ]
        # Room for the notes a cut adds (three headers each for key and value).
        notes_room = 2 * _headers_size([("x" * 40, b"x" * 64)] * 3) + 64
        room = max_bytes - _FRAMING_BYTES - _headers_size(ours) - notes_room
        original = list(original_headers or [])
        if _headers_size(original) > room // 4:
            ours.append((f"{HEADER_PREFIX}original_headers.dropped", str(len(original)).encode()))
            original = []
        room -= _headers_size(original)
        notes: list[tuple[str, bytes]] = []
        key = _cut("key", key, room // 4, notes)
        value = _cut("value", value, room - len(key or b""), notes)
        return cls(key=key, value=value, headers=original + ours + notes, error_class=error_class)
