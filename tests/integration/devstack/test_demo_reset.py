"""A second demo on the same dev stack starts clean: the same stream is scored again.

The simulated stream of a demo started the same day has the same transaction
ids; without clearing, all of them were replays of the first run's state.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
from conftest import AppUnderTest

from fraudstream.devstack.demo import clear_earlier_demo
from fraudstream.service.kafka import committed_offsets
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.redis_client import redis_client
from fraudstream.service.settings import Settings
from fraudstream.service.state import ensure_state, marker_key

START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


def _scored_ids(read_topic: Callable[..., list[ConsumerRecord]], settings: Settings) -> list[str]:
    return [
        orjson.loads(r.value or b"")["transaction_id"]
        for r in read_topic(settings.bootstrap_servers, settings.topic_scores)
    ]


def _run_once(
    settings: Settings,
    stream: list[tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    read_topic: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    group_members: Callable[[str, str], dict[str, int]],
) -> float:
    """Run the service over ``stream``; return how many it took for replays."""
    app = run_app(settings)
    produce(settings.bootstrap_servers, settings.topic_transactions, stream)
    wait_for(lambda: len(_scored_ids(read_topic, settings)) >= len(stream), 90, "the stream scored")
    wait_for(
        lambda: (
            sum(
                committed_offsets(
                    settings, settings.consumer_group, settings.topic_transactions
                ).values()
            )
            >= len(stream)
        ),
        60,
        "the offsets committed",
    )
    app.stop()
    for group in (settings.consumer_group, settings.learner_group):
        wait_for(
            lambda group=group: group_members(settings.bootstrap_servers, group) == {},
            60,
            f"the service to leave {group}",
        )
    replays = app.metrics.registry.get_sample_value("fraudstream_transactions_duplicate_total")
    return float(replays or 0.0)


def test_a_second_demo_scores_the_same_stream_again_from_a_clean_state(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    read_topic: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    group_members: Callable[[str, str], dict[str, int]],
) -> None:
    settings = make_settings(publish_scores=True, max_batch_wait_ms=20)
    stream = [
        make_transaction(f"demo-{i}", f"c{i % 3}", "T1", 10.0 + i, START + timedelta(minutes=i))
        for i in range(12)
    ]
    assert not clear_earlier_demo(settings)  # nothing there yet: nothing said

    assert _run_once(settings, stream, run_app, produce, read_topic, wait_for, group_members) == 0
    assert clear_earlier_demo(settings)

    # Topics kept but empty, groups gone, no Redis key left under the prefix.
    assert read_topic(settings.bootstrap_servers, settings.topic_transactions) == []
    assert read_topic(settings.bootstrap_servers, settings.topic_scores) == []
    assert committed_offsets(settings, settings.consumer_group, settings.topic_transactions) == {}
    client = redis_client(settings)
    try:
        assert list(client.scan_iter(match=f"{settings.redis_prefix}:*")) == []
        # A fresh deployment to the service, not a lost state.
        marker = ensure_state(client, settings.redis_prefix, lambda: False)
        assert marker.origin == "fresh"
        client.delete(marker_key(settings.redis_prefix))
    finally:
        client.close()

    # The same stream again: every transaction scored as new, none taken for a replay.
    assert _run_once(settings, stream, run_app, produce, read_topic, wait_for, group_members) == 0
    ids = _scored_ids(read_topic, settings)
    assert sorted(ids) == sorted(f"demo-{i}" for i in range(12))
