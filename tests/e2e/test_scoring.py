"""End to end on real Kafka and Redis: transactions in, alerts and dead letters out."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from conftest import AppUnderTest

from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.schemas import Alert
from fraudstream.service.settings import Settings

NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)


def _quiet_history(
    tx: Callable[..., tuple[bytes, bytes]], cards: int, per_card: int
) -> list[tuple[bytes, bytes]]:
    """Cards that spend 15 to 30 at their two usual terminals, around noon, for days."""
    records = []
    for c in range(cards):
        card = f"quiet-{c}"
        for i in range(per_card):
            at = NOW - timedelta(days=per_card - i, minutes=7 * c)
            amount = 15 + (c * 7 + i * 3) % 16
            records.append(tx(f"{card}-{i}", card, f"T{c % 5}-{i % 2}", amount, at))
    return records


def test_planted_pattern_alerts_with_reasons_and_quiet_cards_do_not(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
) -> None:
    tx = make_transaction
    settings = make_settings()
    run_app(settings)
    history = _quiet_history(tx, cards=20, per_card=10)
    victim = "victim-1"
    victim_history = [
        tx(f"{victim}-h{i}", victim, "T-home", 20 + i % 5, NOW - timedelta(days=10 - i))
        for i in range(10)
    ]
    # The card is stolen: large purchases at terminals it never used, minutes apart.
    attack = [
        tx(f"{victim}-a{i}", victim, f"T-new-{i}", 2500.0 + 10 * i, NOW + timedelta(minutes=5 * i))
        for i in range(3)
    ]
    produce(
        settings.bootstrap_servers, settings.topic_transactions, history + victim_history + attack
    )

    alerts = [
        Alert.model_validate_json(r.value or b"")
        for r in consume(
            settings.bootstrap_servers, settings.topic_alerts, at_least=2, timeout_s=180, settle_s=3
        )
    ]

    assert alerts, "no alert for the planted pattern"
    assert {a.card_id for a in alerts} == {victim}
    first = min(alerts, key=lambda a: a.event_time)
    assert first.transaction_id == f"{victim}-a0"
    assert first.scorer == "rules" and first.model_version == 0
    assert first.score >= settings.alert_threshold
    reason_names = {r.feature for r in first.reasons}
    assert {"card_amount_zscore", "card_new_terminal"} <= reason_names
    assert first.alert_id == Alert.id_for(first.transaction_id)
    assert first.latency_ms >= 0


BAD_INPUTS: dict[str, bytes | None] = {
    "malformed_json": b'{"transaction_id": "x1", "card_id": ',
    "not_an_object": b"[1, 2, 3]",
    "wrong_types": b'{"transaction_id": "x2", "card_id": "c", "terminal_id": "m", '
    b'"amount": "lots", "timestamp": 1700000000000}',
    "missing_fields": b'{"transaction_id": "x3", "amount": 5}',
    "nan_amount": b'{"transaction_id": "x4", "card_id": "c", "terminal_id": "m", '
    b'"amount": NaN, "timestamp": 1700000000000}',
    "inf_amount": b'{"transaction_id": "x5", "card_id": "c", "terminal_id": "m", '
    b'"amount": 1e999, "timestamp": 1700000000000}',
    "negative_amount": b'{"transaction_id": "x6", "card_id": "c", "terminal_id": "m", '
    b'"amount": -3, "timestamp": 1700000000000}',
    "bad_utf8": b'{"transaction_id": "x7\xff\xfe", "card_id": "c", "terminal_id": "m", '
    b'"amount": 3, "timestamp": 1700000000000}',
    "huge_payload": b'{"transaction_id": "x8", "card_id": "c", "terminal_id": "m", '
    b'"amount": 3, "timestamp": 1700000000000, "pad": "' + b"x" * 100_000 + b'"}',
    "naive_timestamp": b'{"transaction_id": "x9", "card_id": "c", "terminal_id": "m", '
    b'"amount": 3, "timestamp": "2024-01-01T10:00:00"}',
    "timestamp_in_seconds": b'{"transaction_id": "x10", "card_id": "c", "terminal_id": "m", '
    b'"amount": 3, "timestamp": 1700000000}',
    "garbage_timestamp": b'{"transaction_id": "x11", "card_id": "c", "terminal_id": "m", '
    b'"amount": 3, "timestamp": "yesterday"}',
    "empty_value": None,
}


def test_bad_inputs_land_in_the_dlq_untouched_while_good_events_are_scored(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
) -> None:
    tx = make_transaction
    settings = make_settings(publish_scores=True)
    run_app(settings)
    good = [tx(f"good-{i}", f"g{i}", "T1", 10.0 + i, NOW) for i in range(6)]
    records: list[tuple[bytes | None, bytes | None]] = []
    for i, (name, value) in enumerate(BAD_INPUTS.items()):
        if i < len(good):
            records.append(good[i])
        else:
            records.append((b"g", tx(f"good-extra-{i}", "g-extra", "T1", 12.0, NOW)[1]))
        records.append((name.encode(), value))
    produce(settings.bootstrap_servers, settings.topic_transactions, records)

    letters = consume(
        settings.bootstrap_servers,
        settings.topic_transactions_dlq,
        at_least=len(BAD_INPUTS),
        timeout_s=180,
        settle_s=2,
    )
    scores = consume(
        settings.bootstrap_servers,
        settings.topic_scores,
        at_least=len(BAD_INPUTS),
        timeout_s=30,
        settle_s=1,
    )

    by_key = {(r.key or b"").decode(): r for r in letters}
    assert set(by_key) == set(BAD_INPUTS)
    assert len(letters) == len(BAD_INPUTS)
    for name, record in by_key.items():
        headers = dict(record.headers)
        assert record.value == BAD_INPUTS[name], f"{name}: value changed"
        assert headers["fraudstream.error.class"].decode() in {
            "DecodeError",
            "ValidationFailedError",
            "OversizeEventError",
        }, name
        assert headers["fraudstream.error.message"], name
        assert headers["fraudstream.source.topic"].decode() == settings.topic_transactions
        assert int(headers["fraudstream.source.offset"]) >= 0
        assert int(headers["fraudstream.source.partition"]) in (0, 1)
        assert int(headers["fraudstream.dead_lettered_at_ms"]) > 0
    assert dict(by_key["huge_payload"].headers)["fraudstream.error.class"] == b"OversizeEventError"
    assert b"amount" in dict(by_key["negative_amount"].headers)["fraudstream.error.message"]
    scored_ids = {orjson.loads(r.value or b"")["transaction_id"] for r in scores}
    good_ids = {
        orjson.loads(v or b"")["transaction_id"]
        for k, v in records
        if k is not None and k.decode() not in BAD_INPUTS
    }
    assert scored_ids == good_ids


def test_transactions_not_keyed_by_their_card_are_scored_and_reported(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    wait_for: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Keyed by transaction id or not keyed at all: scored as usual, counted, warned once."""
    tx = make_transaction
    settings = make_settings()
    at = NOW - timedelta(hours=1)
    keyed = [
        tx(f"kk-{i}", f"kk-card{i % 3}", "T1", 10.0 + i, at + timedelta(minutes=i))
        for i in range(6)
    ]
    by_id = [
        (f"kx-{i}".encode(), tx(f"kx-{i}", f"kx-card{i % 2}", "T2", 20.0 + i, at)[1])
        for i in range(5)
    ]
    unkeyed = [(None, tx(f"kn-{i}", "kn-card", "T3", 30.0 + i, at)[1]) for i in range(4)]
    caplog.set_level(logging.WARNING, logger="fraudstream.service.app")
    app = run_app(settings)
    produce(settings.bootstrap_servers, settings.topic_transactions, keyed + by_id + unkeyed)

    wait_for(lambda: app.metrics.processed._value.get() >= 15, 120, "15 transactions scored")
    assert app.metrics.processed._value.get() == 15
    assert app.metrics.not_keyed_by_card._value.get() == 9
    warned = [
        r.getMessage() for r in caplog.records if "not keyed by their card id" in r.getMessage()
    ]
    assert len(warned) == 1, warned  # once a minute at most
    assert "key = card_id" in warned[0]
