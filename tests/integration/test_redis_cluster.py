"""Redis Cluster is not supported yet: the service says so at start, in one line."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis.cluster

from fraudstream.service.app import Application
from fraudstream.service.errors import ConfigurationError
from fraudstream.service.settings import Settings


def test_the_service_refuses_a_redis_cluster_node_at_start(
    redis_cluster_url: str, make_settings: Callable[..., Settings]
) -> None:
    cluster = redis.cluster.RedisCluster.from_url(redis_cluster_url)
    assert len(cluster.get_primaries()) == 3  # a real cluster answers at that URL
    cluster.close()
    # No broker: the refusal comes before anything touches Kafka.
    settings = make_settings(redis_url=redis_cluster_url, bootstrap_servers="127.0.0.1:1")
    with pytest.raises(ConfigurationError, match=r"is a Redis Cluster node.*not support"):
        Application(settings).run()
