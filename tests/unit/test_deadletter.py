"""Dead letters are always deliverable: cut to fit, with what was cut said in headers."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from fraudstream.service.deadletter import DeadLetter


def _letter(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]], max_bytes: int
) -> DeadLetter:
    return DeadLetter.of(
        ValueError("bad"),
        topic="transactions",
        partition=1,
        offset=7,
        key=key,
        value=value,
        now_ms=1,
        original_headers=headers,
        max_bytes=max_bytes,
    )


@settings(max_examples=200, deadline=None)
@given(
    key=st.one_of(st.none(), st.binary(max_size=40_000)),
    value=st.one_of(st.none(), st.binary(max_size=120_000)),
    headers=st.lists(st.tuples(st.text(max_size=30), st.binary(max_size=3000)), max_size=40),
    max_bytes=st.integers(min_value=16 * 1024, max_value=200_000),
)
def test_a_dead_letter_always_fits_and_keeps_what_fits(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]], max_bytes: int
) -> None:
    letter = _letter(key, value, headers, max_bytes)
    assert letter.size <= max_bytes
    notes = dict(letter.headers)
    assert notes["fraudstream.error.class"] == b"ValueError"
    for name, original in (("key", key), ("value", value)):
        kept = getattr(letter, name)
        if f"fraudstream.{name}.truncated" in notes:
            assert original is not None and kept is not None
            assert original.startswith(kept) and len(kept) < len(original)
            assert notes[f"fraudstream.{name}.original_bytes"] == str(len(original)).encode()
            assert (
                notes[f"fraudstream.{name}.sha256"] == hashlib.sha256(original).hexdigest().encode()
            )
        else:
            assert kept == original
    if "fraudstream.original_headers.dropped" in notes:
        assert notes["fraudstream.original_headers.dropped"] == str(len(headers)).encode()
    else:
        assert letter.headers[: len(headers)] == headers


def test_a_small_dead_letter_is_untouched() -> None:
    letter = _letter(b"c1", b'{"amount": -1}', [("trace", b"abc")], 1_000_000)
    assert letter.key == b"c1" and letter.value == b'{"amount": -1}'
    assert letter.headers[0] == ("trace", b"abc")
    assert not any(k.endswith(".truncated") for k, _ in letter.headers)
