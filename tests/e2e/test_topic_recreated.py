"""``transactions`` deleted and created again under a running scorer: none of the new one lost.

kafka-python fetches by topic name: a scorer whose topic is deleted and
created again, with records in it already, reads the new topic from its old
position, and the records before it were never scored, silently. Or Kafka
resets its position back to the new topic's start and the scorer stopped on
an offset going backwards. Either way the scorer now stops with one line
saying what happened, the group's offsets pointing at the new topic's first
records; a new scorer (what the supervisor or the orchestrator starts) scores
the whole new topic.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
from conftest import AppUnderTest
from kafka.admin import KafkaAdminClient, NewTopic

from fraudstream.service.errors import LogReplacedError
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.settings import Settings


def _create_again(settings: Settings, wait_for: Callable[..., None]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        admin.delete_topics([settings.topic_transactions])
        topic = settings.topic_transactions
        wait_for(lambda: topic not in admin.list_topics(), 60, "the topic to go")
        deadline = time.monotonic() + 60
        while True:
            try:
                admin.create_topics([NewTopic(topic, 1, 1)])
                return
            except Exception:  # still being deleted
                assert time.monotonic() < deadline, "the topic could not be created again"
                time.sleep(0.5)
    finally:
        admin.close()


def test_a_topic_created_again_is_scored_from_its_start_by_the_next_scorer(
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
    produce(settings.bootstrap_servers, settings.topic_transactions, minute_batch("old", 30))
    consume(settings, settings.topic_scores, at_least=30, timeout_s=120)
    wait_for(lambda: group_lag(settings) == 0, 60, "the scorer to commit")

    _create_again(settings, wait_for)
    new = minute_batch("new", 50, first_minute=100)
    produce(settings.bootstrap_servers, settings.topic_transactions, new)
    wait_for(lambda: hasattr(first, "run_error"), 90, "the scorer to stop")
    assert isinstance(first.run_error, LogReplacedError), first.run_error

    run_app(settings)
    wait_for(lambda: group_lag(settings) == 0, 120, "a new scorer to score the new topic")
    scored = {
        orjson.loads(r.value or b"")["transaction_id"]
        for r in read_topic(settings.bootstrap_servers, settings.topic_scores)
    }
    assert {f"new-{i}" for i in range(50)} <= scored
