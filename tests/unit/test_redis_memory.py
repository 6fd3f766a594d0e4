"""What ``INFO memory`` says about eviction and a full Redis, node by node (no server)."""

from __future__ import annotations

from typing import Any, cast

import pytest
import redis
from redis.cluster import RedisCluster

from fraudstream.service.errors import ConfigurationError
from fraudstream.service.redis_client import check_eviction, memory_problem
from fraudstream.service.settings import Settings

MB = 1024 * 1024


def _info(
    maxmemory: int = 0, policy: str = "noeviction", used: int = MB, buffers: int = 0
) -> dict[str, Any]:
    return {
        "maxmemory": maxmemory,
        "maxmemory_policy": policy,
        "used_memory": used,
        "mem_not_counted_for_evict": buffers,
    }


class _Reply:
    """A single-node client that answers ``INFO memory`` only."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.reply = info

    def info(self, section: str) -> dict[str, Any]:
        assert section == "memory"
        return self.reply


def _node(info: dict[str, Any]) -> redis.Redis:
    return cast(redis.Redis, _Reply(info))


class _Cluster(RedisCluster):
    """A cluster client that answers ``INFO memory`` for its masters only."""

    def __init__(self, replies: dict[str, dict[str, Any]]) -> None:  # no connection
        self.replies = replies

    def info(self, section: str | None = None, *args: Any, **kwargs: Any) -> Any:
        assert section == "memory" and kwargs["target_nodes"] == RedisCluster.PRIMARIES
        # As redis-py answers: one node's reply as it is, several by node.
        return next(iter(self.replies.values())) if len(self.replies) == 1 else self.replies


@pytest.mark.parametrize(
    ("info", "problem"),
    [
        (_info(), None),  # no maxmemory: never evicts, never full
        (_info(policy="allkeys-lru"), None),  # a policy without a maxmemory does nothing
        (_info(maxmemory=64 * MB), None),
        (_info(maxmemory=64 * MB, policy="volatile-lru"), "evicts keys when full"),
        (_info(maxmemory=64 * MB, policy="allkeys-random"), "maxmemory-policy allkeys-random"),
        (_info(maxmemory=MB, used=2 * MB), "is full (2,097,152 bytes used, maxmemory 1,048,576"),
        (_info(maxmemory=MB, used=MB), None),  # at the limit Redis still writes
        # Replica and AOF buffers do not count, as in Redis's own check.
        (_info(maxmemory=MB, used=2 * MB, buffers=MB), None),
    ],
)
def test_memory_problem_of_one_node(info: dict[str, Any], problem: str | None) -> None:
    found = memory_problem(_node(info))
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and found.startswith("Redis ")


def test_allowed_eviction_and_the_start_up_check_ignore_what_they_are_told_to() -> None:
    evicting = _node(_info(maxmemory=64 * MB, policy="allkeys-lru"))
    assert memory_problem(evicting, allow_eviction=True) is None
    full = _node(_info(maxmemory=MB, used=2 * MB))
    assert memory_problem(full, full=False) is None

    settings = Settings(bootstrap_servers="127.0.0.1:9092")
    check_eviction(full, settings)  # full is waited out, not refused
    with pytest.raises(ConfigurationError, match="FRAUDSTREAM_REDIS_ALLOW_EVICTION=true"):
        check_eviction(evicting, settings)
    check_eviction(evicting, settings.model_copy(update={"redis_allow_eviction": True}))


def test_a_cluster_names_the_master_at_fault() -> None:
    fine = _info(maxmemory=64 * MB)
    cluster = _Cluster({"10.0.0.1:7000": fine, "10.0.0.2:7000": fine})
    assert memory_problem(cast(redis.Redis, cluster)) is None
    cluster.replies["10.0.0.3:7000"] = _info(maxmemory=MB, used=3 * MB)
    assert (problem := memory_problem(cast(redis.Redis, cluster))) is not None
    assert problem.startswith("Redis node 10.0.0.3:7000 is full")
    one = _Cluster({"10.0.0.1:7000": _info(maxmemory=MB, policy="volatile-ttl")})
    assert (problem := memory_problem(cast(redis.Redis, one))) is not None
    assert "maxmemory-policy volatile-ttl" in problem


class _Refused:
    """A client whose user the ACL refuses INFO."""

    def info(self, section: str) -> dict[str, Any]:
        raise redis.exceptions.NoPermissionError("this user has no permissions to run 'info'")


def test_info_refused_by_an_acl_is_unknown_not_a_problem(caplog: pytest.LogCaptureFixture) -> None:
    refused = cast(redis.Redis, _Refused())
    assert memory_problem(refused) is None
    check_eviction(refused, Settings(bootstrap_servers="127.0.0.1:9092"))
    assert "maxmemory-policy cannot be checked" in caplog.text
