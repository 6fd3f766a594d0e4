"""The local Redis Cluster of the dev stack is a real one.

Slots spread over masters by hash tag, and a stopped master fails over to its replica.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import pytest
import redis
from redis.cluster import RedisCluster as ClusterClient
from redis.exceptions import RedisClusterException

from fraudstream.devstack import RedisCluster

# redis-py leaves execute_command and the cluster client's methods unannotated: their calls
# carry a narrow `type: ignore[no-untyped-call]`.


def _master_of(client: ClusterClient, key: str) -> str:
    node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
    return f"{node.host}:{node.port}"


def test_keys_with_different_hash_tags_land_on_different_masters(redis_cluster_url: str) -> None:
    client = ClusterClient.from_url(redis_cluster_url)
    try:
        masters = {f"{n.host}:{n.port}" for n in client.get_primaries()}  # type: ignore[no-untyped-call]
        assert len(masters) == 3
        # redis-py types every field of a node alike; its flags are a str ("master,myself").
        flags = [cast(str, node["flags"]) for node in client.cluster_nodes().values()]
        assert sum("slave" in f for f in flags) == 3, flags
        keys = [f"fs-test:{{c:{i}}}:h" for i in range(30)]
        for i, key in enumerate(keys):
            client.set(key, i)
        assert [int(client.get(key) or -1) for key in keys] == list(range(30))
        assert {_master_of(client, key) for key in keys} == masters
        # Keys sharing a hash tag share a slot: one script may touch them all.
        a, b = "fs-test:{c:7}:h", "fs-test:{c:7}:seen"
        assert client.keyslot(a) == client.keyslot(b)  # type: ignore[no-untyped-call]
        assert client.eval(
            "redis.call('SET', KEYS[2], 'x'); return redis.call('GET', KEYS[1])", 2, a, b
        )
        # ... and keys of two entities may not be touched by one script.
        with pytest.raises(RedisClusterException, match="same key slot"):
            client.eval(
                "return redis.call('GET', KEYS[1])", 2, "fs-test:{c:1}:h", "fs-test:{c:2}:h"
            )
        client.delete(*keys, b)
    finally:
        client.close()


def test_a_stopped_master_fails_over_to_its_replica(tmp_path: Path) -> None:
    """Its own cluster (the session's must stay whole): stop a master, its replica takes over."""
    cluster = RedisCluster(tmp_path)
    cluster.start()
    client = ClusterClient.from_url(cluster.url)
    try:
        key = "fs-test:{c:42}:h"
        client.set(key, "before")
        master_address = _master_of(client, key)
        master = redis.Redis(
            host=master_address.split(":")[0], port=int(master_address.split(":")[1])
        )
        assert master.execute_command("WAIT", 1, 5000) == 1  # type: ignore[no-untyped-call]  # the replica has the write
        replica_host, replica_port = master.execute_command("ROLE")[2][0][:2]  # type: ignore[no-untyped-call]
        master.close()
        replica_address = f"{replica_host.decode()}:{int(replica_port)}"

        cluster.node_at(master_address).stop()
        deadline = time.monotonic() + 60
        value = None
        while time.monotonic() < deadline:
            try:
                value = client.get(key)
                if value is not None:
                    break
            except redis.RedisError:
                pass  # the slot has no master until the replica is promoted
            time.sleep(0.2)
        assert value == b"before"
        assert cluster.masters_by_address()[replica_address] == "master"
        assert _master_of(client, key) == replica_address
        client.set(key, "after")
        assert client.get(key) == b"after"
    finally:
        client.close()
        cluster.stop()
