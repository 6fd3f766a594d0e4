"""Faults while a stream flows, on real Kafka and Redis: nothing lost, nothing counted twice.

* ``fraudstream serve`` SIGKILLed ten times in each mode, at random points
  (starting, joining, mid-stream), restarted each time;
* scorers going 1 → 3 → 1, the scale-in while Redis is down.

After each kill nothing is committed past a transaction that was not scored;
at the end every transaction is scored and counted once in its card's history,
and in exactly-once mode ``read_committed`` readers see each decision and each
alert once. (The learner killed and restarted mid-stream: ``test_learning.py``.)
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from fraudstream.devstack import RedisServer, free_port
from fraudstream.service.app import Application
from fraudstream.service.kafka import make_producer
from fraudstream.service.snapshots import SnapshotStore

KILLS = 10


def _ids(records: list[tuple[bytes, bytes]]) -> list[str]:
    return [orjson.loads(value)["transaction_id"] for _, value in records]


class _Feeder(threading.Thread):
    """Sends ``records`` a few at a time, as a stream, until done."""

    def __init__(self, bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
        super().__init__(name=f"feeder-{topic}", daemon=True)
        self.bootstrap, self.topic, self.records = bootstrap, topic, records

    def run(self) -> None:
        producer = make_producer(self.bootstrap, client_id="test-feeder")
        try:
            for i in range(0, len(self.records), 4):
                for key, value in self.records[i : i + 4]:
                    producer.send(self.topic, key=key, value=value)
                time.sleep(0.25)
            producer.flush(timeout=60)
        finally:
            producer.close(timeout=10)


def _kill_again_and_again(
    settings: Any,
    spawn: Callable[..., Any],
    scored: Callable[[], int],
    committed_past_unscored: Callable[..., list[str]],
    rng: random.Random,
    kills: list[str],
) -> Any:
    """SIGKILL the scorer ``KILLS`` times, restarting it each time; the last one lives."""
    process = spawn(settings, "--role", "scorer", name=f"scorer-{settings.guarantee.value}")
    for k in range(KILLS):
        if k % 2:  # mid-stream: once the restarted scorer scores again
            before, deadline = scored(), time.monotonic() + 60
            while scored() == before and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(rng.uniform(0.0, 1.0))
            kills.append("mid-stream" if scored() > before else "idle")
        else:  # anywhere: starting, joining the group, or scoring
            time.sleep(rng.uniform(0.3, 4.0))
            kills.append("anywhere")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        problems = committed_past_unscored(settings)
        assert problems == [], f"after kill {k + 1}: {problems[:5]}"
        process = spawn(settings, "--role", "scorer", name=f"scorer-{settings.guarantee.value}")
    return process


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_scorer_sigkilled_ten_times_while_a_stream_flows(
    guarantee: str,
    make_settings: Callable[..., Any],
    card_stream: Callable[..., list[tuple[bytes, bytes]]],
    spawn_service: Callable[..., Any],
    wait_for: Callable[..., None],
    counting_problems: Callable[..., list[str]],
    committed_past_unscored: Callable[..., list[str]],
    group_lag: Callable[..., int],
    read_topic: Callable[..., list[Any]],
    unique_name: Callable[[str], str],
    redis_url: str,
) -> None:
    settings = make_settings(
        guarantee=guarantee,
        transactional_id=unique_name("scorer"),  # a restart fences the killed one's transaction
        publish_scores=True,
        alert_threshold=0.0,  # every decision is an alert too
        max_batch_size=20,
        session_timeout_ms=6000,
        topic_partitions=3,
    )
    Application(settings).ensure_topics()
    stream = card_stream("k", cards=24, per_card=28)
    ids = _ids(stream)
    client = redis.Redis.from_url(redis_url)
    snapshots = SnapshotStore(client, settings.redis_prefix, settings.snapshot_ttl_s)

    def scored() -> int:
        return sum(s is not None for s in snapshots.get_many(ids))

    feeder = _Feeder(settings.bootstrap_servers, settings.topic_transactions, stream)
    feeder.start()
    kills: list[str] = []
    try:
        started = time.monotonic()
        _kill_again_and_again(
            settings, spawn_service, scored, committed_past_unscored, random.Random(7), kills
        )
        feeder.join(timeout=120)
        wait_for(lambda: scored() == len(ids), 120, "every transaction scored")
        wait_for(lambda: group_lag(settings) == 0, 60, "every offset committed")
        took_s = time.monotonic() - started
        print(f"{guarantee}: {len(kills)} kills ({Counter(kills)}) in {took_s:.0f} s")
    finally:
        client.close()

    assert len(kills) == KILLS
    assert counting_problems(settings, stream) == []
    assert committed_past_unscored(settings) == []
    if guarantee == "exactly_once":
        for topic in (settings.topic_scores, settings.topic_alerts):
            seen = Counter(
                orjson.loads(r.value)["transaction_id"]
                for r in read_topic(settings.bootstrap_servers, topic, read_committed=True)
            )
            assert sorted(seen) == sorted(ids), f"{topic}: lost {set(ids) - set(seen)}"
            assert [tx for tx, n in seen.items() if n > 1] == [], f"{topic}: seen twice"
    else:
        seen = {
            orjson.loads(r.value)["transaction_id"]
            for r in read_topic(settings.bootstrap_servers, settings.topic_alerts)
        }
        assert seen == set(ids)  # at least once; a replay may repeat an alert, same alert_id


def test_scorers_one_to_three_to_one_the_scale_in_while_redis_is_down(
    make_settings: Callable[..., Any],
    card_stream: Callable[..., list[tuple[bytes, bytes]]],
    run_app: Callable[..., Any],
    wait_for: Callable[..., None],
    counting_problems: Callable[..., list[str]],
    committed_past_unscored: Callable[..., list[str]],
    group_members: Callable[[str, str], dict[str, int]],
    group_lag: Callable[..., int],
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis", port=free_port(), persistent=True)
    server.start()
    try:
        settings = make_settings(
            redis_url=server.url,
            role="scorer",
            topic_partitions=6,
            max_batch_size=20,
            session_timeout_ms=6000,
        )

        def members() -> dict[str, int]:
            return group_members(settings.bootstrap_servers, settings.consumer_group)

        stream = card_stream("r", cards=18, per_card=24)
        feeder = _Feeder(settings.bootstrap_servers, settings.topic_transactions, stream)
        first = run_app(settings.model_copy(update={"client_id": "one"}))
        wait_for(lambda: members() == {"one-scorer": 6}, 60, "one scorer with six partitions")
        feeder.start()
        time.sleep(2)
        more = [
            run_app(settings.model_copy(update={"client_id": name})) for name in ("two", "three")
        ]
        wait_for(
            lambda: sorted(members().values()) == [2, 2, 2],
            60,
            "three scorers, two partitions each",
        )
        time.sleep(2)
        server.stop()
        time.sleep(2)  # every scorer fails a batch and backs off
        for app in more:
            app.stop()
        wait_for(
            lambda: members() == {"one-scorer": 6}, 60, "one scorer again, while Redis is down"
        )
        time.sleep(3)  # it polls through its back-off with five more partitions
        server.start()
        feeder.join(timeout=120)
        wait_for(lambda: group_lag(settings) == 0, 120, "every offset committed")
        wait_for(lambda: first.ready()[0], 30, "the remaining scorer to be ready")
        assert committed_past_unscored(settings, server.url) == []
        assert counting_problems(settings, stream, server.url) == []
    finally:
        server.stop()
