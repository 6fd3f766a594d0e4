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
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable

import orjson
import redis
from conftest import AppUnderTest

from fraudstream.devstack import RedisServer
from fraudstream.service.app import Application
from fraudstream.service.kafka import make_producer
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.settings import Settings
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


class _KillRun:
    """One scorer group under SIGKILL while its stream flows."""

    def __init__(
        self, settings: Settings, stream: list[tuple[bytes, bytes]], redis_url: str
    ) -> None:
        Application(settings).ensure_topics()
        self.settings, self.stream, self.ids = settings, stream, _ids(stream)
        self.client = redis.Redis.from_url(redis_url)
        self.snapshots = SnapshotStore(self.client, settings.redis_prefix, settings.snapshot_ttl_s)
        self.kills: list[str] = []
        self.error: BaseException | None = None
        self.took_s = 0.0

    def scored(self) -> int:
        return sum(s is not None for s in self.snapshots.get_many(self.ids))

    def run(
        self,
        spawn: Callable[..., subprocess.Popen[bytes]],
        committed_past_unscored: Callable[..., list[str]],
        rng: random.Random,
    ) -> None:
        """SIGKILL the scorer ``KILLS`` times, restarting it each time; the last one lives."""
        try:
            started = time.monotonic()
            feeder = _Feeder(
                self.settings.bootstrap_servers, self.settings.topic_transactions, self.stream
            )
            feeder.start()
            name = f"scorer-{self.settings.guarantee.value}"
            process = spawn(self.settings, "--role", "scorer", name=name)
            for k in range(KILLS):
                if k % 2:  # mid-stream: once the restarted scorer scores again
                    before, deadline = self.scored(), time.monotonic() + 60
                    while self.scored() == before and time.monotonic() < deadline:
                        time.sleep(0.1)
                    time.sleep(rng.uniform(0.0, 1.0))
                    self.kills.append("mid-stream" if self.scored() > before else "idle")
                else:  # anywhere: starting, joining the group, or scoring
                    time.sleep(rng.uniform(0.3, 4.0))
                    self.kills.append("anywhere")
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
                # Checked once the next scorer is on its way: a kill between a transaction's
                # offsets and its commit leaves that commit pending, and reading the group's
                # offsets waits until it is aborted, which the next scorer's fencing does at
                # once (alone, the broker's 60 s transaction timeout would).
                process = spawn(self.settings, "--role", "scorer", name=name)
                problems = committed_past_unscored(self.settings)
                assert problems == [], f"after kill {k + 1}: {problems[:5]}"
            feeder.join(timeout=120)
            self.took_s = time.monotonic() - started
        except BaseException as exc:
            self.error = exc

    def close(self) -> None:
        self.client.close()


def test_scorer_sigkilled_ten_times_in_each_mode_while_streams_flow(
    make_settings: Callable[..., Settings],
    card_stream: Callable[..., list[tuple[bytes, bytes]]],
    spawn_service: Callable[..., subprocess.Popen[bytes]],
    wait_for: Callable[..., None],
    counting_problems: Callable[..., list[str]],
    committed_past_unscored: Callable[..., list[str]],
    group_lag: Callable[..., int],
    read_topic: Callable[..., list[ConsumerRecord]],
    unique_name: Callable[[str], str],
    redis_url: str,
) -> None:
    """Both modes at once, each with its own topics, group and scorer process."""
    runs = {
        guarantee: _KillRun(
            make_settings(
                guarantee=guarantee,
                consumer_group=unique_name(f"scorer-{guarantee}"),
                topic_transactions=unique_name(f"transactions-{guarantee}"),
                topic_scores=unique_name(f"scores-{guarantee}"),
                topic_alerts=unique_name(f"alerts-{guarantee}"),
                # A restart fences the killed scorer's open transaction.
                transactional_id=unique_name(f"scorer-{guarantee}"),
                publish_scores=True,
                alert_threshold=0.0,  # every decision is an alert too
                max_batch_size=20,
                session_timeout_ms=6000,
                topic_partitions=3,
            ),
            card_stream(guarantee[0], cards=24, per_card=28),
            redis_url,
        )
        for guarantee in ("at_least_once", "exactly_once")
    }
    threads = [
        threading.Thread(
            target=run.run,
            args=(spawn_service, committed_past_unscored, random.Random(seed)),
            name=f"kills-{guarantee}",
        )
        for seed, (guarantee, run) in enumerate(runs.items())
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    try:
        for guarantee, run in runs.items():
            assert run.error is None, f"{guarantee}: {run.error!r}"
            settings, ids = run.settings, run.ids
            wait_for(lambda run=run: run.scored() == len(run.ids), 120, f"{guarantee}: all scored")
            wait_for(lambda s=settings: group_lag(s) == 0, 60, f"{guarantee}: all committed")
            print(
                f"{guarantee}: {len(run.kills)} kills ({Counter(run.kills)}) in {run.took_s:.0f} s"
            )
            assert len(run.kills) == KILLS
            assert counting_problems(settings, run.stream) == []
            assert committed_past_unscored(settings) == []
            if guarantee == "exactly_once":
                for topic in (settings.topic_scores, settings.topic_alerts):
                    seen = Counter(
                        orjson.loads(r.value or b"")["transaction_id"]
                        for r in read_topic(settings.bootstrap_servers, topic, read_committed=True)
                    )
                    assert sorted(seen) == sorted(ids), f"{topic}: lost {set(ids) - set(seen)}"
                    assert [tx for tx, n in seen.items() if n > 1] == [], f"{topic}: seen twice"
            else:
                alerted = {
                    orjson.loads(r.value or b"")["transaction_id"]
                    for r in read_topic(settings.bootstrap_servers, settings.topic_alerts)
                }
                assert alerted == set(ids)  # at least once: a replay may repeat an alert (same id)
    finally:
        for run in runs.values():
            run.close()


def test_scorers_one_to_three_to_one_the_scale_in_while_redis_is_down(
    make_settings: Callable[..., Settings],
    card_stream: Callable[..., list[tuple[bytes, bytes]]],
    run_app: Callable[[Settings], AppUnderTest],
    wait_for: Callable[..., None],
    counting_problems: Callable[..., list[str]],
    committed_past_unscored: Callable[..., list[str]],
    group_members: Callable[[str, str], dict[str, int]],
    group_lag: Callable[..., int],
    own_redis: RedisServer,
) -> None:
    server = own_redis
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
    more = [run_app(settings.model_copy(update={"client_id": name})) for name in ("two", "three")]
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
    wait_for(lambda: members() == {"one-scorer": 6}, 60, "one scorer again, while Redis is down")
    time.sleep(3)  # it polls through its back-off with five more partitions
    server.start()
    feeder.join(timeout=120)
    wait_for(lambda: group_lag(settings) == 0, 120, "every offset committed")
    wait_for(lambda: first.ready()[0], 30, "the remaining scorer to be ready")
    assert committed_past_unscored(settings, server.url) == []
    assert counting_problems(settings, stream, server.url) == []
