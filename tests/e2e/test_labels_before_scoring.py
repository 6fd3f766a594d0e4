"""Labels that arrive before their transaction is scored, on real Kafka and Redis.

A label is learnt from the snapshot its transaction was scored with. When the
label comes first (the scorer behind, both topics replayed at once), it waits
in Redis (``label_wait_s``) instead of going to ``labels.dlq``; a learner
killed while labels wait, its offsets committed past them, finds them again.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
import redis
from conftest import AppUnderTest

from fraudstream.service.kafka.clients import committed_offsets
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.registry import ModelRegistry
from fraudstream.service.settings import Role, Settings
from fraudstream.service.waiting_labels import WaitingLabels

START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


def _label(transaction_id: str) -> tuple[bytes, bytes]:
    at = (START + timedelta(days=1)).isoformat()
    return b"l", orjson.dumps(
        {"transaction_id": transaction_id, "is_fraud": False, "labeled_at": at}
    )


def _waiting_setup(
    make_settings: Callable[..., Settings], redis_url: str, **overrides: object
) -> tuple[Settings, ModelRegistry, WaitingLabels]:
    """Settings that learn from a few labels and let labels wait; the registry; the waiting set."""
    settings = make_settings(
        publish_scores=True,
        min_labels_for_model=5,
        model_margin_over_prior=-1.0,
        label_wait_s=600.0,
        **overrides,
    )
    client = redis.Redis.from_url(redis_url)
    registry = ModelRegistry(client, settings.redis_prefix, settings.model_signing_key)
    return settings, registry, WaitingLabels(client, settings.redis_prefix)


def test_labels_wait_for_their_snapshot_through_a_learner_kill(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    spawn_service: Callable[..., subprocess.Popen[bytes]],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    redis_url: str,
) -> None:
    settings, registry, waiting = _waiting_setup(
        make_settings, redis_url, publish_every_labels=5, publish_every_s=1.0
    )

    def tx(name: str, i: int) -> tuple[bytes, bytes]:
        return make_transaction(
            name, f"c{i % 4}", f"T{i % 3}", 20.0 + i, START + timedelta(hours=i)
        )

    run_app(settings.model_copy(update={"role": Role.SCORER}))
    produce(
        settings.bootstrap_servers, settings.topic_transactions, [tx(f"a{i}", i) for i in range(10)]
    )
    consume(settings.bootstrap_servers, settings.topic_scores, at_least=10, timeout_s=180)

    # The labels of b0..b9 come before b0..b9 are sent: they wait. The a-labels
    # after them are learnt and published, so the offsets past all 20 are committed.
    learner = spawn_service(settings, "--role", "learner", name="learner-1")
    interleaved = [label for i in range(10) for label in (_label(f"b{i}"), _label(f"a{i}"))]
    produce(settings.bootstrap_servers, settings.topic_labels, interleaved)

    def labels_committed() -> int:
        return sum(
            committed_offsets(settings, settings.learner_group, settings.topic_labels).values()
        )

    wait_for(
        lambda: waiting.count() == 10 and labels_committed() == 20,
        180,
        "the b-labels waiting and every label offset committed",
    )
    assert registry.load().model.labels_learnt == 10
    learner.send_signal(signal.SIGKILL)
    learner.wait(timeout=30)

    produce(
        settings.bootstrap_servers,
        settings.topic_transactions,
        [tx(f"b{i}", 10 + i) for i in range(10)],
    )
    consume(settings.bootstrap_servers, settings.topic_scores, at_least=20, timeout_s=180)
    spawn_service(settings, "--role", "learner", name="learner-2")
    wait_for(
        lambda: registry.load().model.labels_learnt == 20 and waiting.count() == 0,
        180,
        "the waiting labels learnt once their transactions were scored",
    )
    letters = consume(
        settings.bootstrap_servers, settings.topic_labels_dlq, at_least=0, timeout_s=3
    )
    assert letters == []
    assert registry.load().model.labels_learnt == 20  # none learnt twice


def test_labels_waiting_through_random_learner_kills_are_each_learnt_once(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    spawn_service: Callable[..., subprocess.Popen[bytes]],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    redis_url: str,
) -> None:
    """Every label comes before its transaction; the learner is SIGKILLed at random meanwhile."""
    settings, registry, waiting = _waiting_setup(
        make_settings, redis_url, publish_every_labels=4, publish_every_s=0.5
    )
    rng = random.Random(7)
    run_app(settings.model_copy(update={"role": Role.SCORER}))
    learner = spawn_service(settings, "--role", "learner", name="learner-0")
    rounds, per_round = 8, 6
    for r in range(rounds):
        names = [f"r{r}-{i}" for i in range(per_round)]
        produce(settings.bootstrap_servers, settings.topic_labels, [_label(n) for n in names])
        time.sleep(rng.uniform(0.2, 1.5))
        if r % 2 == 1:  # a kill at a random point of the learner's loop
            learner.send_signal(signal.SIGKILL)
            learner.wait(timeout=30)
            learner = spawn_service(settings, "--role", "learner", name=f"learner-{r}")
        produce(
            settings.bootstrap_servers,
            settings.topic_transactions,
            [
                make_transaction(n, f"c{i % 4}", f"T{i % 3}", 20.0 + i, START + timedelta(hours=r))
                for i, n in enumerate(names)
            ],
        )
    n = rounds * per_round
    consume(settings.bootstrap_servers, settings.topic_scores, at_least=n, timeout_s=180)
    wait_for(
        lambda: (
            (registry.latest_version() or 0) > 0
            and registry.load().model.labels_learnt == n
            and waiting.count() == 0
        ),
        240,
        "every label learnt and none waiting",
    )
    time.sleep(2)  # give a second learning time to show
    assert registry.load().model.labels_learnt == n  # none lost, none learnt twice
    letters = consume(
        settings.bootstrap_servers, settings.topic_labels_dlq, at_least=0, timeout_s=3
    )
    assert letters == []
