"""Redis down mid-stream.

The scorer reports not ready, commits nothing it could not process, and once Redis is back scores
every transaction without loss.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from fraudstream.devstack import RedisServer

START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


def _batch(
    tx: Callable[..., tuple[bytes, bytes]], prefix: str, n: int
) -> list[tuple[bytes, bytes]]:
    return [
        tx(f"{prefix}-{i}", f"c{i % 7}", "T1", 10.0 + i, START + timedelta(minutes=i))
        for i in range(n)
    ]


def test_scorer_survives_a_redis_outage_without_losing_transactions(
    make_settings: Callable[..., Any],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[..., Any],
    produce: Callable[..., None],
    consume: Callable[..., list[Any]],
    wait_for: Callable[..., None],
    own_redis: RedisServer,
) -> None:
    tx = make_transaction
    redis_server = own_redis
    settings = make_settings(redis_url=redis_server.url, publish_scores=True, role="scorer")
    app = run_app(settings)
    produce(settings.bootstrap_servers, settings.topic_transactions, _batch(tx, "before", 20))
    consume(settings.bootstrap_servers, settings.topic_scores, at_least=20, timeout_s=180)
    wait_for(lambda: app.ready()[0], 60, "the scorer to be ready")

    redis_server.stop()
    produce(settings.bootstrap_servers, settings.topic_transactions, _batch(tx, "during", 30))
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
    scored = [orjson.loads(r.value)["transaction_id"] for r in records]
    assert {f"during-{i}" for i in range(30)} <= set(scored)
    assert len(scored) == len(set(scored)) == 50  # nothing published twice either
    wait_for(lambda: app.ready()[0], 60, "the scorer to be ready again")
