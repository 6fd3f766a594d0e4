"""Which error replies of a per-node round mean "ask again once the slot map is reloaded"."""

from __future__ import annotations

import pytest
import redis
from redis.cluster import ClusterNode

from fraudstream.service.redis_cluster import ClusterUnavailableError, NodeRounds

NODE = ClusterNode("127.0.0.1", 7000)  # type: ignore[no-untyped-call]  # redis-py: unannotated


@pytest.mark.parametrize(
    "reply",
    [
        # Redis 7.0.15's replies to a script, as met in the tests on a real cluster:
        # a key of a slot migrating and not on this master, or of a slot moved away ...
        "Script attempted to access a non local key in a cluster node script: "
        "ed7f6e12f4afa8b568b6dd94b76e2a88287b1625, on @user_script:2.",
        # ... and a master being failed over (its slots have no master for a moment).
        "Script attempted to execute a command while the cluster is down script: "
        "bf3c0d6a11b99ecc94e36c8802e55831b5f77a5e, on @user_script:20.",
        "Script attempted to execute a write command while the cluster is down and readonly",
    ],
)
def test_a_script_refused_for_a_cluster_reason_is_asked_again(reply: str) -> None:
    rounds = NodeRounds(None)  # type: ignore[arg-type]
    with pytest.raises(ClusterUnavailableError, match=r"127\.0\.0\.1:7000"):
        rounds._raise(NODE, redis.ResponseError(reply))
    assert rounds._stale  # the slot map is reloaded before the retry


def test_a_cluster_error_reply_is_asked_again() -> None:
    rounds = NodeRounds(None)  # type: ignore[arg-type]
    with pytest.raises(ClusterUnavailableError):
        rounds._raise(NODE, redis.exceptions.TryAgainError("Multiple keys request"))
    assert isinstance(ClusterUnavailableError("x"), redis.ConnectionError)


def test_another_error_reply_is_raised_as_it_is() -> None:
    rounds = NodeRounds(None)  # type: ignore[arg-type]
    error = redis.ResponseError("FRAUDSTREAM_STATE_LOST")
    with pytest.raises(redis.ResponseError) as raised:
        rounds._raise(NODE, error)
    assert raised.value is error and not rounds._stale
