"""The feature and snapshot stores for a Redis client: single node or Redis Cluster.

One place decides which class serves a client, so the service, the state
rebuild and the benchmarks all get the cluster classes on a cluster
(:mod:`fraudstream.service.features.cluster_store`,
:mod:`fraudstream.service.snapshots_cluster`) and the single-node ones otherwise.
"""

from __future__ import annotations

from typing import Any

from fraudstream.service.features.definitions import FeatureConfig
from fraudstream.service.features.redis_store import FOUND_BUDGET, RedisFeatureStore
from fraudstream.service.redis_cluster import is_cluster
from fraudstream.service.snapshots import SnapshotStore


def feature_store(
    client: Any,
    config: FeatureConfig,
    *,
    check_state: bool = False,
    wait_replicas: int = 0,
    claim_ttl_s: int | None = None,
    exact_replays: bool = True,
) -> RedisFeatureStore:
    """The feature store of ``client``.

    ``wait_replicas`` applies on a cluster only (see the settings); ``claim_ttl_s``
    and ``exact_replays`` on a single node only, where the id claims ride in the
    feature script (a cluster store leaves them to the snapshot store's own call).
    """
    if is_cluster(client):
        from fraudstream.service.features.cluster_store import ClusterFeatureStore

        return ClusterFeatureStore(
            client, config, check_state=check_state, wait_replicas=wait_replicas
        )
    return RedisFeatureStore(
        client,
        config,
        check_state=check_state,
        claim_ttl_s=claim_ttl_s,
        found_budget=FOUND_BUDGET if exact_replays else 0,
    )


def snapshot_store(client: Any, prefix: str, ttl_s: int, wait_replicas: int = 0) -> SnapshotStore:
    """The snapshot store of ``client`` (``wait_replicas``: on a cluster only)."""
    if is_cluster(client):
        from fraudstream.service.snapshots_cluster import ClusterSnapshotStore

        return ClusterSnapshotStore(client, prefix, ttl_s, wait_replicas)
    return SnapshotStore(client, prefix, ttl_s)
