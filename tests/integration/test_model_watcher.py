"""The scorer's view of the registry.

Hot swap, the rules prior until a version ranks recent labels at least as well,
refusal of tampered or foreign model versions (the version in use stays).
"""

from __future__ import annotations

from typing import cast

import numpy as np
import redis
from pydantic import SecretStr

from fraudstream.service.metrics import Metrics
from fraudstream.service.model import FraudModel
from fraudstream.service.model_watcher import ModelWatcher
from fraudstream.service.registry import ModelRegistry
from fraudstream.service.rules import RulesPrior
from fraudstream.service.serving import RecentQuality, ServingPolicy, learn_labelled

NAMES = ("amount", "card_amount_zscore", "card_tx_count_1h")


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _rows(labels: int, flipped: bool = False) -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(labels)
    fraud = i % 10 == 0
    if flipped:  # frauds that look genuine, and the other way round
        fraud = ~fraud
    looks_fraud = i % 10 == 0
    X = np.column_stack(
        [
            # Below every threshold of the rules prior: it cannot tell them apart.
            np.where(looks_fraud, 900.0, 20.0 + i % 7),
            np.where(looks_fraud, 2.0, 0.1),
            np.where(looks_fraud, 2.0, 1.0),
        ]
    )
    return X, fraud


def _trained(labels: int) -> FraudModel:
    """A model learnt the learner's way (its recent quality recorded before learning)."""
    model = FraudModel("logreg", NAMES)
    X, y = _rows(labels)
    for lo in range(0, labels, 50):
        learn_labelled(model, RulesPrior(NAMES), X[lo : lo + 50], y[lo : lo + 50])
    return model


def _watcher(registry: ModelRegistry, metrics: Metrics, clock: _Clock) -> ModelWatcher:
    policy = ServingPolicy(min_labels=100, min_frauds=5)
    return ModelWatcher(registry, NAMES, policy=policy, poll_s=1.0, metrics=metrics, clock=clock)


def test_rules_prior_until_trained_then_hot_swap_between_polls(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    registry = ModelRegistry(redis_client, redis_prefix, SecretStr("k1"))
    metrics, clock = Metrics(), _Clock()
    watcher = _watcher(registry, metrics, clock)
    assert watcher.current().kind == "rules"

    registry.publish(_trained(50))  # too few labels to replace the prior
    clock.now += 2
    assert watcher.current().kind == "rules"

    # Enough labels, but it ranks its recent labels worse than the prior: not served.
    worse = _trained(150)
    X, y = _rows(200, flipped=True)
    worse.recent = RecentQuality()
    worse.recent.update_many(worse.proba_many(X), RulesPrior(NAMES).score_many(X)[0], y)
    registry.publish(worse)
    clock.now += 2
    assert watcher.current().kind == "rules"

    version = registry.publish(_trained(200))
    assert watcher.current().version == 0  # not polled yet: no registry call per batch
    clock.now += 2
    active = watcher.current()
    assert (active.kind, active.version) == ("model", version)
    assert metrics.model_version._value.get() == version


def test_tampered_or_foreign_version_is_refused_and_the_current_model_stays(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    registry = ModelRegistry(redis_client, redis_prefix, SecretStr("the-key"))
    metrics, clock = Metrics(), _Clock()
    watcher = _watcher(registry, metrics, clock)
    good = registry.publish(_trained(200))
    clock.now += 2
    assert watcher.current().version == good

    # One byte of the next version's pickle changed after signing.
    bad = registry.publish(_trained(300))
    key = f"{redis_prefix}:{{models}}:v:{bad}"
    # A client that does not decode replies: bytes, which redis-py types as bytes | str.
    payload = bytearray(cast(bytes | None, redis_client.hget(key, "payload")) or b"")
    payload[len(payload) // 2] ^= 0x01
    redis_client.hset(key, "payload", bytes(payload))
    clock.now += 2
    assert watcher.current().version == good
    assert metrics.model_refused._value.get() == 1

    # A version signed with another deployment's key.
    foreign = ModelRegistry(redis_client, redis_prefix, SecretStr("another-key"))
    foreign.publish(_trained(300))
    clock.now += 2
    assert watcher.current().version == good
    assert metrics.model_refused._value.get() == 2

    # A good version after that is picked up again.
    newer = registry.publish(_trained(400))
    clock.now += 2
    assert watcher.current().version == newer
