"""A corpus of hostile transaction records, and what the service must do with each.

Written as an attacker (or a broken producer) would feed the ``transactions``
topic: sizes around every limit, numbers at every edge, encodings, nesting,
duplicate keys and ids. Each case names its expected outcome: ``"scored"``
(a valid event, scored like any other) or the error class of its dead letter.
Used by the unit test of the pipeline (in-memory doubles) and the end-to-end
test on real Kafka and Redis (``tests/e2e/test_hostile_input.py``);
``pythonpath`` in ``pyproject.toml`` makes it importable as ``hostile_corpus``.
"""

# ruff: noqa: E501 - one case a line reads best as a table

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fraudstream.service.schemas import MAX_AMOUNT, MAX_ID_LENGTH

#: Kafka's default ``max.message.bytes`` of a topic (what a broker accepts).
BROKER_MAX_MESSAGE_BYTES = 1_048_588


@dataclass(frozen=True)
class Case:
    """One hostile record and the outcome the service owes it."""

    name: str
    value: bytes | None
    expect: str  # "scored", or the error class of the dead letter
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def _json(document: Any) -> bytes:
    # json, not orjson: orjson refuses integers beyond 64 bits, which are part of the corpus.
    return json.dumps(document, ensure_ascii=False, allow_nan=True).encode("utf-8")


def corpus(max_message_bytes: int, *, prefix: str = "h") -> list[Case]:
    """The corpus, for a service with the given ``max_message_bytes``.

    Every case that should be scored has its own transaction id and card
    (``{prefix}-<name>``), so its score can be found downstream.
    """
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    stamp = now.isoformat().replace("+00:00", "Z")
    now_ms = int(now.timestamp() * 1000)

    def later(seconds: int) -> str:
        """``seconds`` after ``now`` (an hour before the records are produced)."""
        return (now + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")

    def tx(name: str, **overrides: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "transaction_id": f"{prefix}-{name}",
            "card_id": f"{prefix}-card-{name}",
            "terminal_id": "T-hostile",
            "amount": 42.5,
            "timestamp": stamp,
        }
        base.update(overrides)
        return base

    def raw(name: str, text: str) -> bytes:
        # A document whose fields are spliced in by hand (bytes JSON cannot carry otherwise).
        return text.replace("@ID", f"{prefix}-{name}").replace("@TS", str(now_ms)).encode()

    def padded(name: str, size: int) -> bytes:
        """A valid transaction of exactly ``size`` bytes (an unknown field pads it)."""
        document = tx(name, pad="")
        bare = len(_json(document))
        document["pad"] = "x" * (size - bare)
        value = _json(document)
        assert len(value) == size, (len(value), size)
        return value

    cases = [
        # -- sizes ----------------------------------------------------------------------
        Case("empty_value", None, "DecodeError", key=b"a tombstone needs a key"),
        Case("empty_bytes", b"", "DecodeError"),
        Case("whitespace_only", b" \n\t ", "DecodeError"),
        Case("at_size_limit", padded("at_size_limit", max_message_bytes), "scored"),
        Case(
            "over_size_limit",
            padded("over_size_limit", max_message_bytes + 1),
            "OversizeEventError",
        ),
        # Just under what the broker accepts: its dead letter (with headers) would not
        # fit unless cut, and an undeliverable dead letter used to stall the scorer.
        Case(
            "near_broker_limit",
            b'{"pad": "' + b"x" * (BROKER_MAX_MESSAGE_BYTES - 400) + b'"}',
            "OversizeEventError",
        ),
        Case(
            "huge_key_bad_value",
            b"{oops",
            "DecodeError",
            key=b"k" * 200_000,
        ),
        Case(
            "many_headers_bad_value",
            b"[]",
            "ValidationFailedError",
            headers=[(f"h{i}", b"v" * 100) for i in range(2000)],
        ),
        Case(
            "id_at_length_limit",
            _json(tx("x", transaction_id="L" * MAX_ID_LENGTH, card_id=f"{prefix}-card-idmax")),
            "scored",
        ),
        Case(
            "id_over_length_limit",
            _json(tx("id_over", transaction_id="L" * (MAX_ID_LENGTH + 1))),
            "ValidationFailedError",
        ),
        Case("id_empty", _json(tx("id_empty", transaction_id="")), "ValidationFailedError"),
        Case("id_whitespace", _json(tx("id_ws", transaction_id="   ")), "ValidationFailedError"),
        # -- numbers ----------------------------------------------------------------------
        Case("amount_zero", _json(tx("amount_zero", amount=0)), "scored"),
        Case("amount_at_max", _json(tx("amount_at_max", amount=MAX_AMOUNT)), "scored"),
        Case(
            "amount_over_max",
            _json(tx("amount_over_max", amount=MAX_AMOUNT * 1.0001)),
            "ValidationFailedError",
        ),
        Case("amount_1e39", _json(tx("amount_1e39", amount=1e39)), "ValidationFailedError"),
        Case("amount_1e300", _json(tx("amount_1e300", amount=1e300)), "ValidationFailedError"),
        Case(
            "amount_negative", _json(tx("amount_negative", amount=-0.01)), "ValidationFailedError"
        ),
        Case("amount_tiny", _json(tx("amount_tiny", amount=5e-324)), "scored"),
        Case("amount_true", _json(tx("amount_true", amount=True)), "ValidationFailedError"),
        Case("amount_false", _json(tx("amount_false", amount=False)), "ValidationFailedError"),
        Case("amount_string", _json(tx("amount_string", amount="12.5")), "ValidationFailedError"),
        Case("amount_null", _json(tx("amount_null", amount=None)), "ValidationFailedError"),
        Case(
            "amount_object",
            _json(tx("amount_object", amount={"value": 1})),
            "ValidationFailedError",
        ),
        Case(
            "amount_nan",
            raw(
                "amount_nan",
                '{"transaction_id": "@ID", "card_id": "c", "terminal_id": "m", "amount": NaN, "timestamp": @TS}',
            ),
            "DecodeError",
        ),
        Case(
            "amount_infinity",
            raw(
                "amount_inf",
                '{"transaction_id": "@ID", "card_id": "c", "terminal_id": "m", "amount": Infinity, "timestamp": @TS}',
            ),
            "DecodeError",
        ),
        Case("amount_bigint", _json(tx("amount_bigint", amount=10**400)), "DecodeError"),
        Case("timestamp_1e20", _json(tx("ts_1e20", timestamp=10**20)), "ValidationFailedError"),
        Case("timestamp_1e30", _json(tx("ts_1e30", timestamp=10**30)), "ValidationFailedError"),
        Case("timestamp_1e300", _json(tx("ts_1e300", timestamp=1e300)), "ValidationFailedError"),
        Case(
            "timestamp_negative", _json(tx("ts_neg", timestamp=-(10**20))), "ValidationFailedError"
        ),
        Case("timestamp_zero", _json(tx("ts_zero", timestamp=0)), "ValidationFailedError"),
        Case(
            "timestamp_seconds",
            _json(tx("ts_seconds", timestamp=now_ms // 1000)),
            "ValidationFailedError",
        ),
        Case(
            "timestamp_digit_string",
            _json(tx("ts_digits", timestamp=str(now_ms))),
            "ValidationFailedError",
        ),
        Case("timestamp_bool", _json(tx("ts_bool", timestamp=True)), "ValidationFailedError"),
        Case(
            "timestamp_year_2100",
            _json(tx("ts_2100", timestamp="2100-01-01T00:00:00Z")),
            "ValidationFailedError",
        ),
        # Within the limit of max_event_ahead_s (1 day): a local time sent as UTC.
        Case(
            "timestamp_ahead_13h", _json(tx("ts_ahead_13h", timestamp=later(14 * 3600))), "scored"
        ),
        Case(
            "timestamp_ahead_3_days",
            _json(tx("ts_ahead_3d", timestamp=later(3 * 86400))),
            "EventTimeAheadError",
        ),
        Case(
            "timestamp_year_2099",
            _json(tx("ts_2099", timestamp="2099-12-31T23:59:59Z")),
            "EventTimeAheadError",
        ),
        Case(
            "timestamp_bad_date",
            _json(tx("ts_bad_date", timestamp="2018-02-30T00:00:00Z")),
            "ValidationFailedError",
        ),
        Case(
            "timestamp_bad_offset",
            _json(tx("ts_bad_offset", timestamp="2018-04-01T00:00:00+25:00")),
            "ValidationFailedError",
        ),
        Case(
            "timestamp_naive",
            _json(tx("ts_naive", timestamp="2018-04-01T00:00:00")),
            "ValidationFailedError",
        ),
        Case("timestamp_fractional_ms", _json(tx("ts_frac", timestamp=now_ms + 0.7)), "scored"),
        Case("lat_without_lon", _json(tx("lat_only", lat=10.0)), "ValidationFailedError"),
        Case("lat_out_of_range", _json(tx("lat_91", lat=91.0, lon=0.0)), "ValidationFailedError"),
        Case("lat_boolean", _json(tx("lat_bool", lat=True, lon=0.0)), "ValidationFailedError"),
        Case("currency_lowercase", _json(tx("cur_lower", currency="eur")), "ValidationFailedError"),
        # -- encodings and characters ---------------------------------------------------------
        Case(
            "bad_utf8",
            raw("bad_utf8", '{"transaction_id": "@ID')
            + b"\xff\xfe"
            + b'", "card_id": "c", "terminal_id": "m", "amount": 1, "timestamp": 1}',
            "DecodeError",
        ),
        Case("utf8_bom", b"\xef\xbb\xbf" + _json(tx("bom")), "DecodeError"),
        Case("utf16", json.dumps(tx("utf16")).encode("utf-16"), "DecodeError"),
        Case(
            "lone_surrogate_escape",
            raw(
                "surrogate",
                '{"transaction_id": "@ID", "card_id": "a\\ud800b", "terminal_id": "m", "amount": 1, "timestamp": @TS}',
            ),
            "DecodeError",
        ),
        Case("nul_in_id", _json(tx("nul", card_id="card\x00x")), "ValidationFailedError"),
        Case("newline_in_id", _json(tx("newline", terminal_id="T\nx")), "ValidationFailedError"),
        Case(
            "bidi_override_in_id", _json(tx("bidi", card_id="card\u202ex")), "ValidationFailedError"
        ),
        Case(
            "zero_width_space_in_id",
            _json(tx("zwsp", card_id="card\u200bx")),
            "ValidationFailedError",
        ),
        Case(
            "control_char_in_text_field",
            _json(tx("ctrl_text", channel="pos\x1b[31m")),
            "ValidationFailedError",
        ),
        Case(
            "unicode_ids",
            _json(tx("unicode", card_id=f"{prefix}-карта-💳", terminal_id="términal-東京")),
            "scored",
        ),
        Case(
            "braces_in_ids",
            _json(tx("braces", card_id=f"{prefix}-{{c:x}}}}", terminal_id="{t:y}")),
            "scored",
        ),
        # -- structure ------------------------------------------------------------------------
        Case("not_json", b"\x00\x01garbage", "DecodeError"),
        Case("truncated_json", _json(tx("trunc"))[:-5], "DecodeError"),
        Case("json_array", b"[1, 2, 3]", "ValidationFailedError"),
        Case("json_string", b'"a string"', "ValidationFailedError"),
        Case("json_number", b"42", "ValidationFailedError"),
        Case("json_null", b"null", "ValidationFailedError"),
        Case("two_documents", _json(tx("two_a")) + _json(tx("two_b")), "DecodeError"),
        Case("trailing_garbage", _json(tx("trailing")) + b" }", "DecodeError"),
        Case("comment", b"// hi\n" + _json(tx("comment")), "DecodeError"),
        Case(
            "deep_nesting",
            _json(tx("deep", extra=None))[:-1] + b', "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            "DecodeError",
        ),
        Case("missing_fields", b'{"amount": 5}', "ValidationFailedError"),
        # Duplicate keys: the last one wins (as in every JSON parser fraudstream uses).
        Case(
            "duplicate_key_last_bad",
            raw(
                "dupkey_bad",
                '{"transaction_id": "@ID", "card_id": "c-dup", "terminal_id": "m", "amount": 5, "amount": -1, "timestamp": @TS}',
            ),
            "ValidationFailedError",
        ),
        Case(
            "duplicate_key_last_good",
            raw(
                "dupkey_good",
                '{"transaction_id": "@ID", "card_id": "@ID-card", "terminal_id": "m", "amount": -1, "amount": 5, "timestamp": @TS}',
            ),
            "scored",
        ),
        Case(
            "unknown_fields_kept",
            _json(tx("unknown", loyalty={"tier": "gold", "n": [1, 2, 3]}, big=1e308)),
            "scored",
        ),
        # -- ids --------------------------------------------------------------------------------
        Case("id_first_use", _json(tx("reused", card_id=f"{prefix}-card-A")), "scored"),
        Case("id_replayed_same_content", _json(tx("reused", card_id=f"{prefix}-card-A")), "scored"),
        Case(
            "id_reused_on_other_card",
            _json(tx("reused", card_id=f"{prefix}-card-B")),
            "IdConflictError",
        ),
        Case(
            "id_reused_with_other_amount",
            _json(tx("reused", card_id=f"{prefix}-card-A", amount=999.0)),
            "IdConflictError",
        ),
        Case("null_key_good_value", _json(tx("null_key")), "scored", key=None),
    ]
    assert len({c.name for c in cases}) == len(cases)
    return cases
