"""A topic refusing what the scorer writes: the scorer stops, loses nothing; a restart resumes.

The dead-letter topic's ``max.message.bytes`` is lowered below a dead letter
while the scorer runs (the size check at start cannot see that). The broker
refuses the record with a non-retriable error, which leaves kafka-python's
idempotent producer in a fatal state: every later send fails, whatever is
fixed on the broker. Retrying stalled the partition for ever; the scorer now
stops with one line saying why, commits nothing past the refused record, and
a new scorer (what the supervisor or the orchestrator starts) resumes once the
topic takes the record again.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from conftest import AppUnderTest, committed_offsets
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from fraudstream.service.checkpoint import ProducerFailedError
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.settings import Settings


def _set_max_message_bytes(settings: Settings, topic: str, limit: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        resource = ConfigResource(
            ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": str(limit)}
        )
        admin.alter_configs([resource])
    finally:
        admin.close()


def test_a_dead_letter_the_topic_refuses_stops_the_scorer_until_a_restart_delivers_it(
    make_settings: Callable[..., Settings],
    minute_batch: Callable[..., list[tuple[bytes, bytes]]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    read_topic: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    group_lag: Callable[[Settings], int],
) -> None:
    settings = make_settings(publish_scores=True, role="scorer", topic_partitions=1)
    first = run_app(settings)
    produce(settings.bootstrap_servers, settings.topic_transactions, minute_batch("a", 5))
    consume(settings, settings.topic_scores, at_least=5, timeout_s=120)
    wait_for(lambda: group_lag(settings) == 0, 60, "the scorer to commit")

    _set_max_message_bytes(settings, settings.topic_transactions_dlq, 20_000)
    too_big = b"x" * (settings.max_message_bytes + 1)  # a dead letter of ~64 KB
    produce(
        settings.bootstrap_servers,
        settings.topic_transactions,
        [(b"c0", too_big), *minute_batch("b", 5, first_minute=10)],
    )
    wait_for(lambda: hasattr(first, "run_error"), 60, "the scorer to stop")
    assert isinstance(first.run_error, ProducerFailedError)
    assert "MessageSizeTooLargeError" in str(first.run_error)
    committed, _ = committed_offsets(settings)
    assert sum(committed.values()) == 5  # nothing past the refused record

    _set_max_message_bytes(settings, settings.topic_transactions_dlq, 2_000_000)
    run_app(settings)
    wait_for(lambda: group_lag(settings) == 0, 120, "a new scorer to commit past it")
    (letter,) = read_topic(settings.bootstrap_servers, settings.topic_transactions_dlq)
    assert dict(letter.headers)["fraudstream.error.class"] == b"OversizeEventError"
    scored = {
        orjson.loads(r.value or b"")["transaction_id"]
        for r in read_topic(settings.bootstrap_servers, settings.topic_scores)
    }
    assert scored == {f"a-{i}" for i in range(5)} | {f"b-{i}" for i in range(5)}
