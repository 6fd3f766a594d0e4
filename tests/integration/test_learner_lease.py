"""The learner lease and the fenced publish against a real Redis, single node and cluster."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from fraudstream.evaluation.synthetic import synthetic_stream
from fraudstream.service.errors import LeaseLostError
from fraudstream.service.learner_lease import LearnerLease, lease_key
from fraudstream.service.model import FraudModel
from fraudstream.service.registry import ModelRegistry

NAMES, _, _ = synthetic_stream(10, seed=1)
KEY = SecretStr("test-key")


class Clock:
    """Monotonic seconds the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["node", "cluster"])
def client(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "node":
        client: Any = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    else:
        client = redis.cluster.RedisCluster.from_url(request.getfixturevalue("redis_cluster_url"))
    yield client
    client.close()


def _two_learners(client: Any, prefix: str) -> tuple[Clock, LearnerLease, LearnerLease]:
    """The leases of learners "learner a" and "learner b" (30 s), on one test clock."""
    clock = Clock()
    a = LearnerLease(client, prefix, "learner a", ttl_s=30, clock=clock)
    return clock, a, LearnerLease(client, prefix, "learner b", ttl_s=30, clock=clock)


def test_one_learner_holds_the_lease_the_other_stands_by_until_it_is_given_up(
    client: Any, redis_prefix: str
) -> None:
    clock, a, b = _two_learners(client, redis_prefix)
    assert a.try_take() == "learner a" and a.held
    assert b.try_take() == "learner a" and not b.held  # b stands by
    assert 29_000 < client.pttl(lease_key(redis_prefix)) <= 30_000
    client.pexpire(lease_key(redis_prefix), 1_000)
    a.keep()  # within a sixth of the time to live: no call
    assert client.pttl(lease_key(redis_prefix)) <= 1_000
    clock.now += 5.1
    a.keep()  # renewed
    assert client.pttl(lease_key(redis_prefix)) > 29_000
    a.give_up()
    assert not a.held and client.get(lease_key(redis_prefix)) is None
    assert b.try_take() == "learner b" and b.held
    a.give_up()  # not held: leaves b's lease alone
    assert client.get(lease_key(redis_prefix)) == b"learner b"


def test_a_learner_whose_lease_was_taken_stops_and_cannot_publish(
    client: Any, redis_prefix: str
) -> None:
    """A learner paused past its lease: another took it; its version is refused, nothing written."""
    clock, a, b = _two_learners(client, redis_prefix)
    registry = ModelRegistry(client, redis_prefix, KEY)
    model = FraudModel("logreg", NAMES)
    assert a.try_take() == "learner a"
    first = registry.publish(model, version=registry.reserve_version(), lease="learner a")
    assert registry.latest_version() == first

    client.delete(lease_key(redis_prefix))  # a's lease expired while it was paused
    assert b.try_take() == "learner b"
    pending = registry.reserve_version()
    with pytest.raises(LeaseLostError, match="no longer held by 'learner a'"):
        registry.publish(model, version=pending, lease="learner a")
    assert registry.latest_version() == first and registry.versions() == [first]
    assert registry.abandoned_versions() == [pending]  # b retakes its label claims
    clock.now += 6
    with pytest.raises(LeaseLostError, match="taken by 'learner b'"):
        a.keep()
    assert not a.held
    a.give_up()
    assert client.get(lease_key(redis_prefix)) == b"learner b"
    # Without a lease (rollback, import, a learner alone by construction): as before.
    assert registry.publish(model) > first
