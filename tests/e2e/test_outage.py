"""Redis down mid-stream.

The scorer reports not ready, commits nothing it could not process, and once Redis is back scores
every transaction without loss.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
import redis
from conftest import AppUnderTest

from fraudstream.devstack import RedisServer
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.settings import Settings


def test_scorer_survives_a_redis_outage_without_losing_transactions(
    make_settings: Callable[..., Settings],
    minute_batch: Callable[..., list[tuple[bytes, bytes]]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    own_redis: RedisServer,
) -> None:
    redis_server = own_redis
    settings = make_settings(redis_url=redis_server.url, publish_scores=True, role="scorer")
    app = run_app(settings)
    produce(settings.bootstrap_servers, settings.topic_transactions, minute_batch("before", 20))
    consume(settings.bootstrap_servers, settings.topic_scores, at_least=20, timeout_s=180)
    wait_for(lambda: app.ready()[0], 60, "the scorer to be ready")

    redis_server.stop()
    produce(settings.bootstrap_servers, settings.topic_transactions, minute_batch("during", 30))
    wait_for(
        lambda: not app.ready()[0] and "redis" in app.ready()[1],
        60,
        "the scorer to report not ready because of Redis",
    )
    # Batches fail and are retried while Redis is away.
    wait_for(lambda: app.metrics.errors.labels("redis")._value.get() > 0, 60, "a Redis error")

    redis_server.start()
    records = consume(
        settings.bootstrap_servers,
        settings.topic_scores,
        at_least=50,
        timeout_s=180,
        settle_s=3,
    )
    scored = [orjson.loads(r.value or b"")["transaction_id"] for r in records]
    assert {f"during-{i}" for i in range(30)} <= set(scored)
    assert len(scored) == len(set(scored)) == 50  # nothing published twice either
    wait_for(lambda: app.ready()[0], 60, "the scorer to be ready again")


def test_scripts_lost_mid_stream_cost_a_retry_not_a_transaction(
    make_settings: Callable[..., Settings],
    minute_batch: Callable[..., list[tuple[bytes, bytes]]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    redis_client: redis.Redis,
) -> None:
    """SCRIPT FLUSH (as a Redis restart does) while batches of 5 are in flight, two at a time.

    The scorer sends batch k + 1's feature script before it reads k's reply; the
    script is gone: both fail with nothing counted, are read again and scored.
    Every transaction is scored once and counted once in its card's history.
    """
    settings = make_settings(publish_scores=True, role="scorer", max_batch_size=5)
    assert settings.overlap_batches
    app = run_app(settings)
    produce(settings.bootstrap_servers, settings.topic_transactions, minute_batch("before", 20))
    consume(settings.bootstrap_servers, settings.topic_scores, at_least=20, timeout_s=180)
    errors = app.metrics.errors.labels("redis")._value.get()

    redis_client.script_flush()
    produce(settings.bootstrap_servers, settings.topic_transactions, minute_batch("after", 60))
    records = consume(
        settings.bootstrap_servers, settings.topic_scores, at_least=80, timeout_s=180, settle_s=3
    )
    scored = [orjson.loads(r.value or b"")["transaction_id"] for r in records]
    assert {f"after-{i}" for i in range(60)} <= set(scored)
    assert len(scored) == len(set(scored)) == 80
    # The lost scripts were met, counted as a Redis error, and loaded again.
    assert app.metrics.errors.labels("redis")._value.get() > errors
    # Each card's history holds each of its transactions once (28 bytes a record).
    for card in range(7):
        history = redis_client.get(f"{settings.redis_prefix}:{{c:c{card}}}") or b""
        assert len(history) == 28 * sum(1 for i in range(20) if i % 7 == card) + 28 * sum(
            1 for i in range(60) if i % 7 == card
        )
    wait_for(lambda: app.ready()[0], 60, "the scorer to be ready again")
