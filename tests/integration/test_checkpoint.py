"""The checkpoint on a real broker: a burst of small batches has no commit refused.

kafka-python refuses a request on a connection that already has
``max_in_flight_requests_per_connection`` requests out
(``NodeNotReadyError: Node paused: {'max_in_flight'}``); an asynchronous commit
per batch of five records did that thousands of times. The checkpoint keeps one
commit out and coalesces the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from conftest import AppUnderTest

from fraudstream.service.kafka import make_consumer
from fraudstream.service.kafka.protocols import TopicPartition
from fraudstream.service.settings import Settings

START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


def _committed_and_ends(
    bootstrap: str, group: str, topic: str
) -> tuple[dict[TopicPartition, int | None], dict[TopicPartition, int]]:
    """The group's committed offsets and the end offsets of ``topic``, per partition."""
    consumer = make_consumer(bootstrap, client_id="test-offsets", group_id=group)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        committed = {tp: consumer.committed(tp) for tp in partitions}
        return committed, dict(consumer.end_offsets(partitions))
    finally:
        consumer.close(autocommit=False)


def test_a_burst_of_small_batches_has_no_refused_commit(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    wait_for: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="fraudstream")
    settings = make_settings(role="scorer", max_batch_size=5)
    n = 3000
    app = run_app(settings)
    produce(
        settings.bootstrap_servers,
        settings.topic_transactions,
        [
            make_transaction(f"t{i}", f"c{i % 50}", "T1", 10.0, START + timedelta(seconds=i))
            for i in range(n)
        ],
    )
    wait_for(lambda: app.metrics.processed._value.get() >= n, 120, "every transaction scored")
    batches = app.metrics.registry.get_sample_value("fraudstream_batch_size_count")
    assert batches is not None and batches >= n / 5  # a commit each

    def all_committed() -> bool:
        committed, ends = _committed_and_ends(
            settings.bootstrap_servers, settings.consumer_group, settings.topic_transactions
        )
        return committed == ends

    wait_for(all_committed, 30, "the last offsets to be committed while idle")
    refused = [r.getMessage() for r in caplog.records if "commit" in r.getMessage()]
    assert refused == []
