"""Redis frozen for longer than the client waits: calls time out but run later.

A Redis that stops answering without closing its connections (a fork of a big
instance, a slow disk under the append-only file, an operator's ``KEYS *``) is
not an outage: the scorer's calls time out, yet Redis runs them once it wakes,
and the retries too. Whatever ran how many times, every transaction must be
counted once and scored once.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import orjson
from conftest import AppUnderTest

from fraudstream.devstack import RedisServer
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.settings import Settings


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
        time.sleep(4)  # a retry on a new connection, queued behind the first
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
