"""Records deleted from Kafka before the scorer read them are counted and named, never silent.

The scorer is stopped; transactions arrive and are deleted (as retention would
delete them during a long outage: ``DeleteRecords``, what
``kafka-delete-records`` sends); more arrive. The restarted scorer's committed
offsets point at records that are gone: it reads on from the oldest record
still there, as Kafka's ``earliest`` policy does, and says how many records of
which partition it never processed, in the log and in ``fraudstream_records_lost``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
import pytest
from conftest import AppUnderTest, committed_offsets
from kafka.admin import KafkaAdminClient
from prometheus_client import generate_latest

from fraudstream.service.cli_status import Scrape, parse_exposition, render, summarize
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.settings import Settings


def test_transactions_deleted_before_they_were_scored_are_reported(
    make_settings: Callable[..., Settings],
    minute_batch: Callable[..., list[tuple[bytes, bytes]]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    group_lag: Callable[[Settings], int],
    group_members: Callable[[str, str], dict[str, int]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(publish_scores=True, role="scorer")
    first = run_app(settings)
    produce(
        settings.bootstrap_servers,
        settings.topic_transactions,
        minute_batch("before", 20, cards=5, first_minute=0),
    )
    consume(settings.bootstrap_servers, settings.topic_scores, at_least=20, timeout_s=180)
    wait_for(lambda: group_lag(settings) == 0, 60, "the scorer to commit what it scored")
    first.stop()
    group = settings.consumer_group
    wait_for(
        lambda: not group_members(settings.bootstrap_servers, group), 60, "the scorer to leave"
    )

    produce(
        settings.bootstrap_servers,
        settings.topic_transactions,
        minute_batch("gone", 30, cards=5, first_minute=20),
    )
    committed, ends = committed_offsets(settings)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        admin.delete_records(dict(ends))  # every record before the ends: the 30 unscored
    finally:
        admin.close()
    gone = {tp.partition: ends[tp] - committed[tp] for tp in ends if ends[tp] > committed[tp]}
    assert sum(gone.values()) == 30
    produce(
        settings.bootstrap_servers,
        settings.topic_transactions,
        minute_batch("after", 10, cards=5, first_minute=50),
    )

    with caplog.at_level(logging.ERROR, logger="fraudstream.service.loop"):
        second = run_app(settings)
        records = consume(
            settings.bootstrap_servers,
            settings.topic_scores,
            at_least=30,
            timeout_s=180,
            settle_s=3,
        )
        wait_for(lambda: group_lag(settings) == 0, 60, "the scorer to commit what it scored")
    scored = [orjson.loads(r.value or b"")["transaction_id"] for r in records]
    assert sorted(scored) == sorted(
        [f"before-{i}" for i in range(20)] + [f"after-{i}" for i in range(10)]
    )
    lost = second.metrics.records_lost.labels(settings.topic_transactions)._value.get()
    assert lost == 30
    said = [r.getMessage() for r in caplog.records if "deleted from Kafka" in r.getMessage()]
    assert len(said) == len(gone)
    for partition, count in gone.items():
        start = committed[next(tp for tp in ends if tp.partition == partition)]
        assert any(
            f"{settings.topic_transactions} partition {partition}: {count} records (offsets "
            f"{start} to {start + count - 1}) were deleted from Kafka" in line
            for line in said
        ), said
    # `fraudstream status` shows it in red.
    samples = parse_exposition(generate_latest(second.metrics.registry).decode())
    look = Scrape(samples, at_s=1.0, ready=True, ready_reason="ready")
    shown = [line for line in render("url", summarize(look, look)) if "LOST" in line]
    assert len(shown) == 1 and f"{settings.topic_transactions} 30 records deleted" in shown[0]
