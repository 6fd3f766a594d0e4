"""Producers that compress their batches, on real Kafka and Redis.

A producer picks its codec (``compression.type``: gzip, snappy, lz4 or zstd); the
broker keeps the batch as it came. Without the codec's library every poll of
that partition fails and the scorer stalls on it, so the libraries are
dependencies. Here each codec's batches of transactions (a malformed record
among them) and of labels go through the service: every transaction scored,
the malformed one dead-lettered as it was sent, every label learnt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import orjson
import redis
from conftest import AppUnderTest
from kafka_extras import delivered

from fraudstream.service.kafka import make_producer
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.registry import ModelRegistry
from fraudstream.service.settings import Settings

CODECS = ("gzip", "snappy", "lz4", "zstd")
START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


def _produce_compressed(
    settings: Settings, topic: str, codec: str, records: Sequence[tuple[bytes, bytes]]
) -> None:
    """Send ``records`` in ``codec``-compressed batches and wait for every delivery."""
    producer = make_producer(settings, client_id=f"test-{codec}", compression_type=codec)
    try:
        futures = [producer.send(topic, key=key, value=value) for key, value in records]
        producer.flush(timeout=30)
        for future in futures:
            delivered(future, timeout_s=30)
    finally:
        producer.close()


def test_every_codec_is_scored_dead_lettered_and_learnt(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    redis_url: str,
) -> None:
    settings = make_settings(
        publish_scores=True,
        topic_partitions=1,
        publish_every_labels=10,
        publish_every_s=1.0,
        min_labels_for_model=10,
        model_margin_over_prior=-1.0,
    )
    app = run_app(settings)
    per_codec = 30
    malformed: dict[str, bytes] = {}
    for codec in CODECS:
        records = [
            make_transaction(
                f"{codec}-{i}", f"card-{i % 7}", f"T{i % 3}", 10.0 + i, START + timedelta(minutes=i)
            )
            for i in range(per_codec)
        ]
        malformed[codec] = b'{"transaction_id": "' + codec.encode() + b'-bad", "amount": '
        records.insert(per_codec // 2, (b"card-bad", malformed[codec]))
        _produce_compressed(settings, settings.topic_transactions, codec, records)

    expected = {f"{codec}-{i}" for codec in CODECS for i in range(per_codec)}
    scores = consume(
        settings.bootstrap_servers,
        settings.topic_scores,
        at_least=len(expected),
        timeout_s=180,
        settle_s=2,
    )
    scored = [orjson.loads(r.value or b"")["transaction_id"] for r in scores]
    assert sorted(scored) == sorted(expected)
    letters = consume(
        settings.bootstrap_servers,
        settings.topic_transactions_dlq,
        at_least=len(CODECS),
        timeout_s=60,
        settle_s=2,
    )
    assert sorted(r.value or b"" for r in letters) == sorted(malformed.values())

    # Labels in compressed batches too: the learner reads them with the same decoder.
    for codec in CODECS:
        labels = [
            (
                b"l",
                orjson.dumps(
                    {
                        "transaction_id": f"{codec}-{i}",
                        "is_fraud": i % 5 == 0,
                        "labeled_at": (START + timedelta(hours=12)).isoformat(),
                    }
                ),
            )
            for i in range(per_codec)
        ]
        _produce_compressed(settings, settings.topic_labels, codec, labels)
    registry = ModelRegistry(
        redis.Redis.from_url(redis_url), settings.redis_prefix, settings.model_signing_key
    )
    wait_for(
        lambda: (
            (registry.latest_version() or 0) > 0
            and registry.load().model.labels_learnt == len(expected)
        ),
        180,
        "every compressed label learnt",
    )
    assert registry.load().model.frauds_learnt == len(CODECS) * (per_codec // 5)
    assert not app._failures
