"""A real local ``redis-server`` on a chosen port."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import redis

from fraudstream.devstack.ports import ManagedServer, port_is_free
from fraudstream.service.errors import DevStackError


def ensure_redis_installed() -> str:
    """Path of ``redis-server``, installing Debian's package when it is missing.

    Raises
    ------
    DevStackError
        When it is missing and cannot be installed (not root, no apt-get, no network).
    """
    found = shutil.which("redis-server")
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise DevStackError(
            "redis-server is not installed and apt-get is not available: "
            "install Redis 7 (redis-server) with your package manager."
        )
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "redis-server"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise DevStackError(
                f"`{' '.join(command)}` failed ({result.stderr.strip().splitlines()[-1:]}): "
                "install redis-server by hand (sudo apt-get install redis-server)."
            )
    found = shutil.which("redis-server")
    if not found:
        raise DevStackError("apt-get installed redis-server but it is not on PATH.")
    return found


@dataclass
class RedisServer(ManagedServer):
    """A ``redis-server`` process owned by fraudstream.

    Parameters
    ----------
    data_dir
        Working directory: pid file, log, and the AOF file when ``persistent``.
    port
        TCP port on 127.0.0.1.
    persistent
        Append-only persistence (the demo); tests run without any persistence.
    cluster_port
        When set, the node runs in cluster mode (``--cluster-enabled yes``) with
        its cluster bus on this port (see
        :class:`~fraudstream.devstack.redis_cluster.RedisCluster`).
    cluster_node_timeout_ms
        How long a cluster node may be unreachable before it is failed over.
    """

    port: int = 6379
    persistent: bool = False
    host: str = "127.0.0.1"
    cluster_port: int | None = None
    cluster_node_timeout_ms: int = 1000

    name = "redis-server"
    pid_name = "redis.pid"
    log_name = "redis.log"

    @property
    def url(self) -> str:
        """``redis://`` URL of this server."""
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the server and wait until it answers PING."""
        if self.running_pid() is not None:
            return
        binary = ensure_redis_installed()
        for port in (self.port, self.cluster_port):
            if port is not None and not port_is_free(port, self.host):
                raise DevStackError(
                    f"Redis port {port} is taken by another process: stop it or choose "
                    "another port (--redis-port)."
                )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--logfile",
            str(self.log_file),
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
        ]
        if self.cluster_port is not None:
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(self.cluster_port),
                "--cluster-config-file",
                str(self.data_dir / "nodes.conf"),
                "--cluster-node-timeout",
                str(self.cluster_node_timeout_ms),
            ]
        self._launch(args)
        self._await_ready(self.ping, "PING", timeout_s, every_s=0.05)

    def ping(self) -> bool:
        """Whether the server answers PING."""
        try:
            client = redis.Redis(host=self.host, port=self.port, socket_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    def version(self) -> str | None:
        """``redis_version`` of the running server."""
        try:
            client = redis.Redis(host=self.host, port=self.port, socket_timeout=1)
            try:
                return str(client.info("server")["redis_version"])
            finally:
                client.close()
        except redis.RedisError:
            return None
