"""exactly_once mode: alerts and offsets commit in one Kafka transaction."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
from conftest import AppUnderTest

from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.settings import Settings

NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)


def _stream(tx: Callable[..., tuple[bytes, bytes]], prefix: str) -> list[tuple[bytes, bytes]]:
    """Ten cards with a quiet history, then each makes one huge purchase somewhere new."""
    records = []
    for c in range(10):
        card = f"{prefix}-card-{c}"
        records += [
            tx(f"{card}-h{i}", card, "T-home", 20.0 + i, NOW - timedelta(days=9 - i))
            for i in range(8)
        ]
        records.append(tx(f"{card}-attack", card, f"T-far-{c}", 3000.0, NOW))
    return records


def test_alerts_are_seen_once_by_read_committed_readers_and_not_repeated_after_restart(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
) -> None:
    settings = make_settings(guarantee="exactly_once", publish_scores=True, role="scorer")
    read_committed = functools.partial(consume, settings.bootstrap_servers, read_committed=True)
    app = run_app(settings)
    produce(settings.bootstrap_servers, settings.topic_transactions, _stream(make_transaction, "a"))
    committed = read_committed(settings.topic_alerts, at_least=10, timeout_s=180, settle_s=2)
    ids = [orjson.loads(r.value or b"")["alert_id"] for r in committed]
    assert len(ids) == 10 and len(set(ids)) == 10
    scores = read_committed(settings.topic_scores, at_least=90, timeout_s=60)
    assert len(scores) == 90

    # A restarted scorer resumes after the committed offsets: nothing is scored twice.
    app.stop()
    run_app(settings)
    produce(
        settings.bootstrap_servers,
        settings.topic_transactions,
        _stream(make_transaction, "b")[:3],
    )
    after = read_committed(settings.topic_scores, at_least=93, timeout_s=180, settle_s=3)
    transaction_ids = [orjson.loads(r.value or b"")["transaction_id"] for r in after]
    assert len(transaction_ids) == 93 and len(set(transaction_ids)) == 93


def test_a_scorer_fenced_by_another_with_its_transactional_id_stops_with_one_clear_error(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    unique_name: Callable[[str], str],
    wait_for: Callable[..., None],
) -> None:
    settings = make_settings(
        guarantee="exactly_once",
        publish_scores=True,
        role="scorer",
        transactional_id=unique_name("scorer"),
    )
    first = run_app(settings)
    produce(settings.bootstrap_servers, settings.topic_transactions, _stream(make_transaction, "a"))
    consume(settings.bootstrap_servers, settings.topic_scores, at_least=90, read_committed=True)
    # Misconfigured: a second scorer (another group) with the same transactional id.
    run_app(settings.model_copy(update={"consumer_group": unique_name("other-scorers")}))
    time.sleep(3)  # it has fenced the first
    produce(settings.bootstrap_servers, settings.topic_transactions, _stream(make_transaction, "b"))
    wait_for(lambda: hasattr(first, "run_error"), 60, "the fenced scorer to stop")
    assert str(first.run_error) == (
        f"another scorer took over transactional id {settings.transactional_id}: "
        "give each scorer its own FRAUDSTREAM_TRANSACTIONAL_ID; this one stops"
    )
    assert first.ready()[0] is False
