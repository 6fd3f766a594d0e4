"""Redis short of memory: an evicting Redis is refused; a full one pauses scoring, losing nothing.

A Redis with a ``maxmemory`` evicts keys when full unless its policy is
``noeviction``: card histories, id claims and snapshots would vanish with no
error anywhere. Under ``noeviction`` a full Redis refuses writes instead: the
scorer backs off with nothing committed, says why, and once Redis has room
scores every transaction once.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis
from conftest import AppUnderTest

from fraudstream.devstack import RedisServer
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.settings import Settings

CARDS = 7


def test_serve_refuses_a_redis_that_evicts_keys_in_one_line(
    make_settings: Callable[..., Settings],
    spawn_service: Callable[..., subprocess.Popen[bytes]],
    own_redis: RedisServer,
    tmp_path: Path,
) -> None:
    client = redis.Redis.from_url(own_redis.url)
    client.config_set("maxmemory", 512 * 1024 * 1024)
    client.config_set("maxmemory-policy", "volatile-lru")  # a managed service's usual default
    process = spawn_service(make_settings(redis_url=own_redis.url), name="evicting")
    assert process.wait(timeout=60) == 1
    log = (tmp_path / "evicting-0.log").read_text()
    assert "Traceback" not in log
    lines = [
        line
        for line in log.splitlines()
        if not line.startswith("fraudstream serving") and not re.match(r"\d{4}-\d\d-\d\d ", line)
    ]
    assert lines == [
        "Error: Redis evicts keys when full (maxmemory 536,870,912 bytes, maxmemory-policy "
        "volatile-lru): card histories, id claims and snapshots would be dropped silently. Set "
        "maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, or your "
        "provider's parameter group), or FRAUDSTREAM_REDIS_ALLOW_EVICTION=true to run anyway"
    ]
    # Nothing was written: the refusal comes before the state marker.
    assert client.dbsize() == 0


def test_a_full_redis_pauses_scoring_and_loses_no_transaction(
    make_settings: Callable[..., Settings],
    minute_batch: Callable[..., list[tuple[bytes, bytes]]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    own_redis: RedisServer,
) -> None:
    client = redis.Redis.from_url(own_redis.url)
    settings = make_settings(redis_url=own_redis.url, publish_scores=True, role="scorer")
    app = run_app(settings)
    produce(settings.bootstrap_servers, settings.topic_transactions, minute_batch("before", 20))
    consume(settings.bootstrap_servers, settings.topic_scores, at_least=20, timeout_s=180)
    wait_for(lambda: app.ready()[0], 60, "the scorer to be ready")

    # Full: maxmemory below what Redis holds, and no eviction (Redis's default policy).
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used // 2)
    with_room = client.dbsize()
    produce(settings.bootstrap_servers, settings.topic_transactions, minute_batch("during", 30))
    wait_for(lambda: "Redis is full" in app.ready()[1], 60, "the scorer to report Redis full")
    wait_for(lambda: app.metrics.errors.labels("redis")._value.get() > 0, 60, "a refused write")
    ready, reason = app.ready()
    assert not ready
    assert "maxmemory-policy noeviction" in reason and "Raise maxmemory" in reason
    assert client.dbsize() == with_room  # no key was written, none evicted
    assert app.metrics.processed._value.get() == 20

    client.config_set("maxmemory", 0)
    records = consume(
        settings.bootstrap_servers, settings.topic_scores, at_least=50, timeout_s=180, settle_s=3
    )
    scored = [orjson.loads(r.value or b"")["transaction_id"] for r in records]
    assert {f"during-{i}" for i in range(30)} <= set(scored)
    assert len(scored) == len(set(scored)) == 50  # nothing lost, nothing published twice
    # Each card's history holds each of its transactions once (28 bytes a record).
    for card in range(CARDS):
        history = client.get(f"{settings.redis_prefix}:{{c:c{card}}}") or b""
        expected = sum(1 for i in range(20) if i % CARDS == card) + sum(
            1 for i in range(30) if i % CARDS == card
        )
        assert len(history) == 28 * expected
    wait_for(lambda: app.ready()[0], 60, "the scorer to be ready again")


def test_a_redis_made_to_evict_while_running_is_reported(
    make_settings: Callable[..., Settings],
    run_app: Callable[[Settings], AppUnderTest],
    wait_for: Callable[..., None],
    own_redis: RedisServer,
) -> None:
    client = redis.Redis.from_url(own_redis.url)
    app = run_app(make_settings(redis_url=own_redis.url, role="scorer"))
    wait_for(lambda: app.ready()[0], 60, "the scorer to be ready")
    client.config_set("maxmemory", 512 * 1024 * 1024)
    client.config_set("maxmemory-policy", "allkeys-lru")
    ready, reason = app.ready()
    assert not ready and "maxmemory-policy allkeys-lru" in reason
    client.config_set("maxmemory-policy", "noeviction")
    wait_for(lambda: app.ready()[0], 60, "the scorer to be ready again")


def test_a_user_refused_info_by_an_acl_still_scores(
    make_settings: Callable[..., Settings],
    minute_batch: Callable[..., list[tuple[bytes, bytes]]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    own_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A least-privilege user without ``@dangerous`` (INFO is in it) scores.

    The memory and cluster-mode checks are skipped, with a warning.
    """
    admin = redis.Redis.from_url(own_redis.url)
    admin.acl_setuser(
        "scorer", enabled=True, passwords=["+s3cret"], keys=["*"], channels=["*"],
        commands=["+@all", "-@dangerous"],
    )  # fmt: skip
    url = f"redis://scorer:s3cret@{own_redis.host}:{own_redis.port}/0"
    settings = make_settings(redis_url=url, publish_scores=True, role="scorer")
    with caplog.at_level(logging.WARNING, logger="fraudstream.service.redis_client"):
        app = run_app(settings)
        produce(
            settings.bootstrap_servers,
            settings.topic_transactions,
            minute_batch("acl", 12),
        )
        records = consume(
            settings.bootstrap_servers, settings.topic_scores, at_least=12, timeout_s=180
        )
        wait_for(lambda: app.ready()[0], 60, "the scorer to be ready")
    assert len(records) == 12
    said = [r.getMessage() for r in caplog.records]
    assert any("maxmemory-policy cannot be checked" in line for line in said), said
