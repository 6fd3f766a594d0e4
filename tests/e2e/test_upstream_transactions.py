"""An upstream producer that writes in Kafka transactions and aborts some, on real Kafka and Redis.

An aborted transaction never happened: its records stay in the log (marked
aborted), and a consumer reading uncommitted records would score them, count
them in the card's features and learn their labels. The service reads
committed records only (``kafka_read_committed``, on by default).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import orjson
import redis
from conftest import AppUnderTest
from kafka_extras import delivered

from fraudstream.service.features.definitions import FeatureConfig, feature_names
from fraudstream.service.kafka import make_producer
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.registry import ModelRegistry
from fraudstream.service.settings import Settings
from fraudstream.service.snapshots import SnapshotStore

START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
CARD = "card-upstream"


def _label(transaction_id: str, fraud: bool) -> tuple[bytes, bytes]:
    at = (START + timedelta(hours=12)).isoformat()
    return b"l", orjson.dumps(
        {"transaction_id": transaction_id, "is_fraud": fraud, "labeled_at": at}
    )


def test_aborted_upstream_records_are_never_scored_counted_or_learnt(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    unique_name: Callable[[str], str],
    redis_url: str,
) -> None:
    settings = make_settings(
        publish_scores=True,
        topic_partitions=1,
        publish_every_labels=3,
        publish_every_s=1.0,
        min_labels_for_model=3,
        model_margin_over_prior=-1.0,
    )
    app = run_app(settings)
    upstream = make_producer(
        settings, client_id="test-upstream", transactional_id=unique_name("upstream")
    )
    upstream.init_transactions()

    def in_transaction(topic: str, records: Sequence[tuple[bytes, bytes]], commit: bool) -> None:
        upstream.begin_transaction()
        futures = [upstream.send(topic, key=key, value=value) for key, value in records]
        upstream.flush(timeout=30)
        for future in futures:
            delivered(future, timeout_s=30)
        if commit:
            upstream.commit_transaction()
        else:
            upstream.abort_transaction()

    def tx(transaction_id: str, minute: int) -> tuple[bytes, bytes]:
        return make_transaction(
            transaction_id, CARD, f"T{minute}", 20.0, START + timedelta(minutes=minute)
        )

    try:
        in_transaction(settings.topic_transactions, [tx(f"c-{i}", i) for i in range(3)], True)
        aborted = [tx(f"a-{i}", 3 + i) for i in range(3)]
        aborted.append((b"card-bad", b'{"transaction_id": "a-bad"'))  # would be a dead letter
        in_transaction(settings.topic_transactions, aborted, False)
        in_transaction(
            settings.topic_transactions, [tx(f"c-{i}", 6 + i) for i in range(3, 6)], True
        )

        scores = consume(settings.bootstrap_servers, settings.topic_scores, at_least=6, settle_s=3)
        scored = sorted(orjson.loads(r.value or b"")["transaction_id"] for r in scores)
        assert scored == [f"c-{i}" for i in range(6)]
        letters = consume(
            settings.bootstrap_servers, settings.topic_transactions_dlq, at_least=0, timeout_s=3
        )
        assert letters == []

        # The card's count when its last transaction was scored: the six committed ones.
        client = redis.Redis.from_url(redis_url)
        names = feature_names(FeatureConfig())
        snapshot = SnapshotStore(client, settings.redis_prefix, settings.snapshot_ttl_s).get_many(
            ["c-5"]
        )[0]
        assert snapshot is not None
        assert snapshot.x(names)["card_tx_count_1d"] == 6

        # Labels: fraud in an aborted transaction, then "not fraud" committed. Had the
        # aborted ones been read, they would have been learnt first (each label once).
        labels = settings.topic_labels
        in_transaction(labels, [_label(f"c-{i}", False) for i in range(3)], True)
        in_transaction(labels, [_label(f"c-{i}", True) for i in range(3, 6)], False)
        in_transaction(labels, [_label(f"c-{i}", False) for i in range(3, 6)], True)
    finally:
        upstream.close()
    registry = ModelRegistry(client, settings.redis_prefix, settings.model_signing_key)
    wait_for(
        lambda: (registry.latest_version() or 0) > 0 and registry.load().model.labels_learnt == 6,
        180,
        "every committed label learnt",
    )
    assert registry.load().model.frauds_learnt == 0
    assert not app._failures
