"""The Redis state marker on a real Redis: created for a fresh deployment, its loss noticed.

And what a rebuild reads, on a real broker.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import redis
from kafka.admin import KafkaAdminClient, NewTopic

from fraudstream.service.features.definitions import FeatureConfig
from fraudstream.service.features.redis_store import RedisFeatureStore
from fraudstream.service.features.store import LabelFact
from fraudstream.service.kafka import make_consumer, make_producer
from fraudstream.service.schemas import Transaction
from fraudstream.service.snapshots import REBUILT_MODEL_VERSION, SnapshotStore
from fraudstream.service.state import (
    StateLostError,
    StateMarker,
    ensure_state,
    marker_key,
    read_since,
)


def _tx(i: int) -> Transaction:
    return Transaction(
        transaction_id=f"t{i}",
        card_id="c1",
        terminal_id="m1",
        amount=10.0 + i,
        timestamp=1_700_000_000_000 + i * 60_000,
    )


def test_a_fresh_deployment_gets_a_marker_and_a_lost_one_is_an_error(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    created = ensure_state(redis_client, redis_prefix, group_has_offsets=lambda: False)
    assert created.origin == "fresh" and len(created.generation) == 32
    # Found again, not recreated, whatever the group has done since.
    again = ensure_state(redis_client, redis_prefix, group_has_offsets=lambda: True)
    assert again.generation == created.generation

    redis_client.delete(marker_key(redis_prefix))
    with pytest.raises(StateLostError, match="fraudstream state rebuild"):
        ensure_state(redis_client, redis_prefix, group_has_offsets=lambda: True)
    rebuilt = StateMarker.write(redis_client, redis_prefix, "rebuilt", since_ms=5)
    found = StateMarker.read(redis_client, redis_prefix)
    assert found is not None and found.generation == rebuilt.generation != created.generation
    assert found.details == {"since_ms": "5"}


def test_the_store_counts_nothing_without_the_marker(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    config = FeatureConfig(prefix=redis_prefix)
    store = RedisFeatureStore(redis_client, config, check_state=True)
    with pytest.raises(StateLostError):
        store.update_and_compute([_tx(0)])
    assert redis_client.exists(store.card_key("c1")) == 0

    ensure_state(redis_client, redis_prefix, group_has_offsets=lambda: False)
    batch = store.update_and_compute([_tx(0), _tx(1)])
    assert batch.values[:, batch.names.index("card_tx_count_1d")].tolist() == [1.0, 2.0]
    # Lost again (a restart without persistence): refused, nothing counted.
    redis_client.delete(marker_key(redis_prefix))
    with pytest.raises(StateLostError):
        store.update_and_compute([_tx(2)])
    with pytest.raises(StateLostError):
        store.record_labels([LabelFact("t0", "c1", "m1", _tx(0).event_time_ms, True)])
    assert len(redis_client.get(store.card_key("c1")) or b"") == 2 * 28


def test_a_rebuilt_snapshot_gives_way_to_the_scorers_own(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    store = SnapshotStore(redis_client, redis_prefix, ttl_s=3600)
    txs = [_tx(0), _tx(1)]
    names = ("a", "b")
    store.put_many(txs[:1], np.ones((1, 2)), np.array([np.nan]), REBUILT_MODEL_VERSION, names)
    store.put_many(txs[1:], np.ones((1, 2)), np.array([0.3]), 7, names)
    store.put_many(
        txs, np.zeros((2, 2)), np.array([0.9, 0.9]), 8, names, keep_existing=np.array([True, True])
    )
    snaps = store.get_many([tx.transaction_id for tx in txs])
    assert [s.model_version for s in snaps if s is not None] == [8, 7]


def test_reading_for_a_rebuild_ends_where_a_committed_transaction_ends_the_log(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    """The log's last entry is the commit marker of an upstream transaction, never a record."""
    topic = unique_name("transactions")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        admin.close()
    upstream = make_producer(
        kafka_bootstrap, client_id="test-upstream", transactional_id=unique_name("upstream")
    )
    try:
        upstream.init_transactions()
        upstream.begin_transaction()
        for i in range(5):
            upstream.send(topic, key=b"c1", value=f"v{i}".encode(), partition=0)
        upstream.commit_transaction()
    finally:
        upstream.close(timeout=10)
    consumer = make_consumer(kafka_bootstrap, client_id="test-rebuild", group_id=None)
    try:
        batches = list(read_since(consumer, topic, since_ms=0, batch=100))
    finally:
        consumer.close()
    assert [r.value for batch in batches for r in batch] == [f"v{i}".encode() for i in range(5)]
