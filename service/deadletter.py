"""Dead letters: bad input is kept, untouched, with the reason in headers.

A dead letter carries the original key and value bytes exactly as they were
consumed, plus headers naming the error class and message, the source topic,
partition and offset, and the time it was dead-lettered. Downstream tools can
fix and replay them (``fraudstream replay`` of a recording of the DLQ topic).

Examples
--------
>>> letter = DeadLetter.of(ValueError("amount must be > 0"), topic="transactions",
...                        partition=3, offset=42, key=b"c1", value=b'{"amount": -1}',
...                        now_ms=1_700_000_000_000)
>>> dict(letter.headers)["fraudstream.error.class"]
b'ValueError'
>>> letter.value
b'{"amount": -1}'
"""

from __future__ import annotations

from dataclasses import dataclass

#: Longest error message kept in a header; the value is never truncated.
MAX_MESSAGE_BYTES = 2048

HEADER_PREFIX = "fraudstream."


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record to send to a dead-letter topic."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    error_class: str

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
    ) -> DeadLetter:
        """Build the dead letter of a consumed record that failed with ``error``."""
        message = str(error).encode("utf-8", errors="replace")[:MAX_MESSAGE_BYTES]
        error_class = type(error).__name__
        headers = list(original_headers or [])
        headers += [
            (f"{HEADER_PREFIX}error.class", error_class.encode()),
            (f"{HEADER_PREFIX}error.message", message),
            (f"{HEADER_PREFIX}source.topic", topic.encode()),
            (f"{HEADER_PREFIX}source.partition", str(partition).encode()),
            (f"{HEADER_PREFIX}source.offset", str(offset).encode()),
            (f"{HEADER_PREFIX}dead_lettered_at_ms", str(now_ms).encode()),
        ]
        return cls(key=key, value=value, headers=headers, error_class=error_class)
