"""Redis frozen for longer than the client waits: calls time out but run later.

A Redis that stops answering without closing its connections (a fork of a big
instance, a slow disk under the append-only file, an operator's ``KEYS *``) is
not an outage: the scorer's calls time out, yet Redis runs them once it wakes,
and the retries too. Whatever ran how many times, every transaction must be
counted once and scored once. The client waits ``redis_timeout_s``: 3 s here
(10 s by default), so that a freeze past it is short. The learner's test also
runs with a Redis that is full instead (writes refused, reads answered).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis
from conftest import AppUnderTest

from fraudstream.devstack import RedisServer
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.registry import ModelRegistry
from fraudstream.service.settings import Role, Settings


def test_calls_that_time_out_and_run_later_count_nothing_twice(
    make_settings: Callable[..., Settings],
    card_stream: Callable[..., list[tuple[bytes, bytes]]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    counting_problems: Callable[..., list[str]],
    committed_past_unscored: Callable[..., list[str]],
    group_lag: Callable[..., int],
    own_redis: RedisServer,
) -> None:
    server = own_redis
    settings = make_settings(
        redis_url=server.url,
        role="scorer",
        topic_partitions=2,
        max_batch_size=20,
        publish_scores=True,
        redis_timeout_s=3.0,
    )
    app = run_app(settings)
    stream = card_stream("stall", cards=12, per_card=4)
    produce(settings.bootstrap_servers, settings.topic_transactions, stream)
    wait_for(lambda: not counting_problems(settings, stream, server.url), 120, "part 1 scored")

    pid = server.running_pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        during = card_stream("stall", cards=12, per_card=4, first=4)
        produce(settings.bootstrap_servers, settings.topic_transactions, during)
        stream += during
        wait_for(
            lambda: app.metrics.errors.labels("redis")._value.get() > 0, 60, "a call to time out"
        )
        time.sleep(2)  # a retry on a new connection, queued behind the first
    finally:
        os.kill(pid, signal.SIGCONT)
    after = card_stream("stall", cards=12, per_card=2, first=8)
    produce(settings.bootstrap_servers, settings.topic_transactions, after)
    stream += after
    wait_for(lambda: group_lag(settings) == 0, 120, "every partition committed to its end")
    assert committed_past_unscored(settings, server.url) == []
    assert counting_problems(settings, stream, server.url) == []
    records = consume(
        settings.bootstrap_servers,
        settings.topic_scores,
        at_least=len(stream),
        timeout_s=60,
        settle_s=3,
    )
    scored = [orjson.loads(r.value or b"")["transaction_id"] for r in records]
    # The retries found transactions counted by the calls that had timed out
    # (28 of them in a run here): those calls did run, after the client gave up.
    print(f"found counted already: {app.metrics.duplicates._value.get():.0f}")
    assert sorted(scored) == sorted(orjson.loads(v)["transaction_id"] for _, v in stream)


@pytest.mark.parametrize("fault", ["frozen", "full"])
def test_a_learner_whose_calls_time_out_or_are_refused_learns_each_label_once(
    fault: str,
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    read_topic: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    own_redis: RedisServer,
) -> None:
    """The learner's label claims, label facts and model versions through a Redis fault.

    ``frozen``: the same freeze as the scorer's. ``full``: ``maxmemory`` below
    what Redis holds (no eviction), so every write is refused with OOM, reads
    still answered; then room again.
    """
    server = own_redis
    settings = make_settings(
        redis_url=server.url,
        publish_every_labels=20,
        publish_every_s=1.0,
        publish_scores=True,
        max_batch_size=20,
        redis_timeout_s=3.0,
    )
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    n = 240
    transactions = [
        make_transaction(
            f"t{i}",
            f"c{i % 30}",
            f"T{i % 7}",
            900.0 if i % 10 == 3 else 20.0,
            start + timedelta(minutes=i),
        )
        for i in range(n)
    ]
    labels = [
        (
            b"l",
            orjson.dumps(
                {
                    "transaction_id": f"t{i}",
                    "is_fraud": i % 10 == 3,
                    "labeled_at": (start + timedelta(days=1, minutes=i)).isoformat(),
                }
            ),
        )
        for i in range(n)
    ]
    run_app(settings.model_copy(update={"role": Role.SCORER}))
    produce(settings.bootstrap_servers, settings.topic_transactions, transactions)
    consume(settings.bootstrap_servers, settings.topic_scores, at_least=n, timeout_s=180)

    learner = run_app(settings.model_copy(update={"role": Role.LEARNER}))
    client = redis.Redis.from_url(server.url)
    registry = ModelRegistry(client, settings.redis_prefix, settings.model_signing_key)

    def learnt() -> int:
        return registry.load().model.labels_learnt if registry.latest_version() else 0

    produce(settings.bootstrap_servers, settings.topic_labels, labels[:80])
    wait_for(lambda: learnt() >= 20, 120, "a first model version")
    pid = server.running_pid()
    assert pid is not None
    if fault == "frozen":
        os.kill(pid, signal.SIGSTOP)
    else:
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) // 2)
    try:
        produce(settings.bootstrap_servers, settings.topic_labels, labels[80:160])
        wait_for(
            lambda: learner.metrics.errors.labels("redis")._value.get() > 0,
            60,
            "a learner call to time out or be refused",
        )
        time.sleep(2)  # a retry (on a new connection, queued behind the first if frozen)
    finally:
        if fault == "frozen":
            os.kill(pid, signal.SIGCONT)
        else:
            client.config_set("maxmemory", 0)
    produce(settings.bootstrap_servers, settings.topic_labels, labels[160:] + labels[:10])
    wait_for(lambda: learnt() >= n, 180, "every label learnt")
    time.sleep(3)  # give a wrong double-learning time to show
    model = registry.load().model
    assert model.labels_learnt == n  # none lost, none learnt twice
    assert model.frauds_learnt == n // 10
    assert read_topic(settings.bootstrap_servers, settings.topic_labels_dlq) == []
    client.close()


def test_a_redis_that_stops_taking_writes_as_the_loops_start_delays_them_only(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    wait_for: Callable[..., None],
    own_redis: RedisServer,
) -> None:
    """Redis answers the checks at start, then times out the learner's first write.

    ``CLIENT PAUSE ... WRITE`` (as a failover or an operator does) lets reads
    through: the service finds Redis and its state, and the learner's start
    (it reserves its model version) waits past the client's timeout (3 s here). It must
    be retried like any batch, not stop the service (before: ``_learn stopped
    on an error``, and the label was never learnt).
    """
    server = own_redis
    settings = make_settings(
        redis_url=server.url, publish_every_labels=1, publish_every_s=0.5, redis_timeout_s=3.0
    )
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    first = run_app(settings.model_copy(update={"role": Role.SCORER}))
    produce(
        settings.bootstrap_servers,
        settings.topic_transactions,
        [make_transaction("t0", "c0", "T0", 20.0, start)],
    )
    wait_for(lambda: first.ready()[0], 120, "the feature state created and t0 scored")
    client = redis.Redis.from_url(server.url)
    label = {"transaction_id": "t0", "is_fraud": False, "labeled_at": start.isoformat()}
    produce(settings.bootstrap_servers, settings.topic_labels, [(b"l", orjson.dumps(label))])
    client.client_pause(120_000, all=False)  # writes only, until unpaused below
    try:
        app = run_app(settings)  # a learner and a scorer
        wait_for(
            lambda: (
                app.metrics.errors.labels("redis")._value.get() > 0 or hasattr(app, "run_error")
            ),
            90,
            "a call at start to time out",
        )
        time.sleep(1)  # its first retry, into the pause again
    finally:
        client.client_unpause()
    assert getattr(app, "run_error", None) is None, "the service stopped"
    registry = ModelRegistry(client, settings.redis_prefix, settings.model_signing_key)
    wait_for(lambda: registry.latest_version() is not None, 120, "the label learnt")
    assert getattr(app, "run_error", None) is None
    client.close()
