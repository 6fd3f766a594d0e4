"""Two learners of one model: one learns, the other stands by and takes over.

A learner deployment with two replicas, or a rolling update that starts the new
learner before the old one stops, runs two learners at once. Each keeps its own
model in memory: had both learnt (the labels' partitions split between them),
each version would hold about half the labels, the newest one the other's half
missing, and a learner starting while another runs would have taken the other's
unpublished label claims for a dead learner's and learnt them again.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import redis
from conftest import AppUnderTest, lag_of

from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.learner_lease import lease_holder
from fraudstream.service.registry import ModelRegistry
from fraudstream.service.settings import Role, Settings

START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
CARDS = 24


def _transactions(tx: Callable[..., tuple[bytes, bytes]], n: int) -> list[tuple[bytes, bytes]]:
    return [
        tx(
            f"t{i}",
            f"c{i % CARDS}",
            f"T{i % 7}",
            900.0 + i if i % 10 == 3 else 12.0 + i % 30,
            START + timedelta(minutes=i),
        )
        for i in range(n)
    ]


def _labels(ids: range) -> list[tuple[bytes, bytes]]:
    """Labels keyed by card, so that they spread over the labels' partitions."""
    return [
        (
            f"c{i % CARDS}".encode(),
            orjson.dumps(
                {
                    "transaction_id": f"t{i}",
                    "is_fraud": i % 10 == 3,
                    "labeled_at": (START + timedelta(days=1, minutes=i)).isoformat(),
                    "source": "chargeback",
                }
            ),
        )
        for i in ids
    ]


def _holding(
    client: redis.Redis, settings: Settings, processes: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """The one of ``processes`` whose learner holds the lease (its name carries the pid)."""
    holder = lease_holder(client, settings.redis_prefix) or ""
    return next(p for p in processes if f" pid {p.pid} " in holder)


ScoredStream = Callable[..., tuple[Settings, redis.Redis, ModelRegistry]]


@pytest.fixture
def scored_stream(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    redis_url: str,
) -> Iterator[ScoredStream]:
    """``scored_stream(n, lease_s=...)``: settings, a client and the registry, ``n`` scored."""
    clients: list[redis.Redis] = []

    def score(n: int, *, lease_s: float) -> tuple[Settings, redis.Redis, ModelRegistry]:
        settings = make_settings(
            topic_partitions=4,
            publish_every_labels=30,
            publish_every_s=1.0,
            min_labels_for_model=40,
            model_margin_over_prior=-1.0,  # this is about counts, not quality
            publish_scores=True,
            session_timeout_ms=6000,
            learner_lease_s=lease_s,
        )
        run_app(settings.model_copy(update={"role": Role.SCORER}))
        transactions = _transactions(make_transaction, n)
        produce(settings.bootstrap_servers, settings.topic_transactions, transactions)
        consume(settings.bootstrap_servers, settings.topic_scores, at_least=n, timeout_s=180)
        clients.append(redis.Redis.from_url(redis_url))
        registry = ModelRegistry(clients[-1], settings.redis_prefix, settings.model_signing_key)
        return settings, clients[-1], registry

    yield score
    for client in clients:
        client.close()


def test_two_replicas_one_learner_learns_the_other_stands_by_and_takes_over_when_it_is_killed(
    scored_stream: ScoredStream,
    spawn_service: Callable[..., subprocess.Popen[bytes]],
    produce: Callable[..., None],
    wait_for: Callable[..., None],
    tmp_path: Path,
) -> None:
    n = 240
    settings, client, registry = scored_stream(n, lease_s=6.0)
    # Two replicas of the whole service (scorer and learner each): two learners.
    first = spawn_service(settings, name="serve-a")
    second = spawn_service(settings, name="serve-b")

    def standing_by() -> int:
        return sum(b"learner: standing by" in p.read_bytes() for p in tmp_path.glob("serve-*"))

    wait_for(lambda: standing_by() == 1, 120, "one learner standing by")
    produce(settings.bootstrap_servers, settings.topic_labels, _labels(range(0, 120)))
    wait_for(
        lambda: (
            (registry.latest_version() or 0) > 0
            and registry.load().model.labels_learnt == 120
            and lag_of(settings, learner=True) == 0
        ),
        180,
        "the first 120 labels learnt in one version and committed",
    )
    time.sleep(2)  # a second learner learning too would have published by now
    versions = [registry.load(v).model.labels_learnt for v in registry.versions()]
    assert versions == sorted(versions), f"versions of two lineages: {versions}"

    # Kill the learner that holds the lease; the other takes over.
    active = _holding(client, settings, [first, second])
    standby = second if active is first else first
    active.send_signal(signal.SIGKILL)
    active.wait(timeout=30)
    produce(settings.bootstrap_servers, settings.topic_labels, _labels(range(120, n)))
    produce(settings.bootstrap_servers, settings.topic_labels, _labels(range(100, 110)))
    wait_for(
        lambda: registry.load().model.labels_learnt >= n and lag_of(settings, learner=True) == 0,
        180,
        "every label learnt by the standby",
    )
    assert standby.poll() is None
    assert standing_by() == 1  # the standby took over: nobody stood by again
    # At once, not after the lease's 6 s: the holder's process is gone from this host.
    assert any(
        b"is no longer running: taking over" in p.read_bytes() for p in tmp_path.glob("serve-*")
    )
    time.sleep(2)  # a label learnt twice has time to show
    model = registry.load().model
    assert model.labels_learnt == n  # none lost, none learnt twice
    assert model.frauds_learnt == sum(1 for i in range(n) if i % 10 == 3)


def test_a_learner_paused_past_its_lease_stops_when_it_wakes_and_publishes_nothing(
    scored_stream: ScoredStream,
    spawn_service: Callable[..., subprocess.Popen[bytes]],
    produce: Callable[..., None],
    wait_for: Callable[..., None],
    tmp_path: Path,
) -> None:
    """SIGSTOP the active learner past its lease: the standby takes over; SIGCONT: it stops."""
    n = 160
    settings, client, registry = scored_stream(n, lease_s=4.0)
    learners = [spawn_service(settings, "--role", "learner", name=f"learner-{k}") for k in "ab"]
    # spawn_service's log names: the name, then how many it started before.
    logs = {
        p.pid: tmp_path / f"learner-{k}-{i}.log"
        for i, (k, p) in enumerate(zip("ab", learners, strict=True))
    }

    def logged(process: subprocess.Popen[bytes], line: bytes) -> bool:
        return line in logs[process.pid].read_bytes()

    wait_for(
        lambda: any(logged(p, b"learner: standing by") for p in learners),
        120,
        "one learner standing by",
    )
    produce(settings.bootstrap_servers, settings.topic_labels, _labels(range(0, 80)))
    wait_for(
        lambda: (
            (registry.latest_version() or 0) > 0
            and registry.load().model.labels_learnt == 80
            and lag_of(settings, learner=True) == 0
        ),
        180,
        "the first 80 labels learnt and committed",
    )
    paused = _holding(client, settings, learners)
    other = next(p for p in learners if p is not paused)
    paused.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: logged(other, b"learner: took the lease over"), 60, "the takeover")
        produce(settings.bootstrap_servers, settings.topic_labels, _labels(range(80, n)))
        wait_for(
            lambda: (
                registry.load().model.labels_learnt == n and lag_of(settings, learner=True) == 0
            ),
            180,
            "every label learnt by the new holder",
        )
        latest = registry.latest_version()
    finally:
        paused.send_signal(signal.SIGCONT)
    assert paused.wait(timeout=60) != 0
    assert logged(paused, b"the learner lease was taken by"), "stopped for another reason"
    assert other.poll() is None
    time.sleep(2)
    assert registry.latest_version() == latest  # the paused learner published nothing
    model = registry.load().model
    assert model.labels_learnt == n
    assert model.frauds_learnt == sum(1 for i in range(n) if i % 10 == 3)
