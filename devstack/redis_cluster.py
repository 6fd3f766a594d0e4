"""A real local Redis Cluster: ``redis-server --cluster-enabled yes`` nodes joined by ``redis-cli``.

Three masters and three replicas by default, each a
:class:`~fraudstream.devstack.redis.RedisServer` on its own free port (and cluster
bus port) in its own folder, joined with ``redis-cli --cluster create ...
--cluster-replicas 1 --cluster-yes``. :meth:`RedisCluster.start` returns once
every node reports ``cluster_state:ok`` with all 16,384 slots served and every
replica's link to its master is up, so a stopped master can fail over at once.

The nodes run without persistence and with a short ``cluster-node-timeout``
(1 s): a stopped master is replaced by its replica within a few seconds, which
is what tests of failover need.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from fraudstream.devstack.ports import free_port
from fraudstream.devstack.redis import RedisServer, ensure_redis_installed
from fraudstream.service.errors import DevStackError

#: Hash slots of a Redis Cluster.
CLUSTER_SLOTS = 16_384


def _distinct_free_ports(count: int, host: str) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


@dataclass
class RedisCluster:
    """A Redis Cluster of local ``redis-server`` processes owned by fraudstream.

    Parameters
    ----------
    data_dir
        Parent folder; node ``i`` lives in ``data_dir/node-<i>``.
    masters
        Number of masters (default 3, Redis Cluster's minimum).
    replicas_per_master
        Replicas of each master (default 1).
    node_timeout_ms
        ``cluster-node-timeout`` of every node (default 1,000 ms).
    host
        Interface of every node.
    """

    data_dir: Path
    masters: int = 3
    replicas_per_master: int = 1
    node_timeout_ms: int = 1000
    host: str = "127.0.0.1"
    nodes: list[RedisServer] = field(default_factory=list, init=False)

    @property
    def url(self) -> str:
        """``redis://`` URL of the first node (``RedisCluster.from_url`` finds the rest)."""
        return self.nodes[0].url

    @property
    def addresses(self) -> list[str]:
        """``host:port`` of every node."""
        return [f"{node.host}:{node.port}" for node in self.nodes]

    def start(self, timeout_s: float = 60.0) -> None:
        """Start every node, create the cluster and wait until it serves every slot."""
        ensure_redis_installed()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise DevStackError(
                "redis-cli is not installed (it comes with redis-server / redis-tools)."
            )
        count = self.masters * (1 + self.replicas_per_master)
        if self.masters < 3:
            raise DevStackError("a Redis Cluster needs at least 3 masters")
        ports = _distinct_free_ports(2 * count, self.host)
        self.nodes = [
            RedisServer(
                data_dir=self.data_dir / f"node-{i}",
                port=ports[2 * i],
                host=self.host,
                cluster_port=ports[2 * i + 1],
                cluster_node_timeout_ms=self.node_timeout_ms,
            )
            for i in range(count)
        ]
        try:
            for node in self.nodes:
                node.start()
            result = subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *self.addresses,
                    "--cluster-replicas",
                    str(self.replicas_per_master),
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout_s,
            )
            if result.returncode != 0:
                raise DevStackError(
                    "redis-cli --cluster create failed: "
                    f"{(result.stderr or result.stdout).strip()[-500:]}"
                )
            self.wait_until_ok(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _client(self, node: RedisServer) -> redis.Redis:
        return redis.Redis(host=node.host, port=node.port, socket_timeout=1, decode_responses=True)

    def cluster_info(self, node: RedisServer) -> dict[str, str]:
        """``CLUSTER INFO`` of one node (empty when it does not answer)."""
        client = self._client(node)
        try:
            # Parsed into a dict by redis-py, whose execute_command has no annotations.
            info = client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
        except redis.RedisError:
            return {}
        finally:
            client.close()
        return {str(k): str(v) for k, v in dict(info).items()}

    def masters_by_address(self) -> dict[str, str]:
        """``host:port`` -> ``master`` or ``replica`` for every node still running."""
        roles: dict[str, str] = {}
        for node in self.nodes:
            if node.running_pid() is None:
                continue
            client = self._client(node)
            try:
                role = client.execute_command("ROLE")[0]  # type: ignore[no-untyped-call]
            except redis.RedisError:
                continue
            finally:
                client.close()
            roles[f"{node.host}:{node.port}"] = "master" if role == "master" else "replica"
        return roles

    def _healthy(self) -> bool:
        running = [node for node in self.nodes if node.running_pid() is not None]
        for node in running:
            info = self.cluster_info(node)
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(
                CLUSTER_SLOTS
            ):
                return False
        for node in running:
            client = self._client(node)
            try:
                replication = client.info("replication")
            except redis.RedisError:
                return False
            finally:
                client.close()
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
        return True

    def wait_until_ok(self, timeout_s: float = 60.0) -> None:
        """Wait until every running node reports ``cluster_state:ok`` and replicas are linked."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._healthy():
                return
            time.sleep(0.1)
        states = {
            f"{n.host}:{n.port}": self.cluster_info(n).get("cluster_state") for n in self.nodes
        }
        raise DevStackError(f"Redis Cluster not ok after {timeout_s:.0f} s: {states}")

    def node_at(self, address: str) -> RedisServer:
        """The node listening on ``host:port``."""
        for node in self.nodes:
            if f"{node.host}:{node.port}" == address:
                return node
        raise KeyError(address)

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()
