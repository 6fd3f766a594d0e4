"""A real local ``redis-server`` on a chosen port."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

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


@dataclass(frozen=True)
class RedisTls:
    """A TLS port of a local ``redis-server`` (Debian's is built with TLS).

    Parameters
    ----------
    port
        The ``tls-port``.
    cert, key
        PEM certificate and unencrypted key of the server.
    ca
        PEM CA certificates that client certificates must chain to.
    auth_clients
        ``tls-auth-clients``: ``"no"`` (default), ``"optional"`` or ``"yes"``
        (a client certificate is required).
    """

    port: int
    cert: Path
    key: Path
    ca: Path
    auth_clients: str = "no"

    def arguments(self) -> list[str]:
        """``redis-server`` arguments of this port."""
        return [
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.cert),
            "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca),
            "--tls-auth-clients", self.auth_clients,
        ]  # fmt: skip


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
    password
        ``requirepass``: clients must authenticate (default: none).
    tls
        A TLS port next to the plain one (default: none).
    """

    port: int = 6379
    persistent: bool = False
    host: str = "127.0.0.1"
    cluster_port: int | None = None
    cluster_node_timeout_ms: int = 1000
    password: str | None = None
    tls: RedisTls | None = None

    name = "redis-server"
    pid_name = "redis.pid"
    log_name = "redis.log"

    @property
    def url(self) -> str:
        """``redis://`` URL of this server (with its password, if it has one)."""
        return f"redis://{self._login}{self.host}:{self.port}/0"

    @property
    def tls_url(self) -> str:
        """``rediss://`` URL of this server's TLS port."""
        if self.tls is None:
            raise DevStackError("this Redis server has no TLS port")
        return f"rediss://{self._login}{self.host}:{self.tls.port}/0"

    @property
    def _login(self) -> str:
        return f":{quote(self.password, safe='')}@" if self.password is not None else ""

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the server and wait until it answers PING."""
        if self.running_pid() is not None:
            return
        binary = ensure_redis_installed()
        tls_port = self.tls.port if self.tls is not None else None
        for port in (self.port, self.cluster_port, tls_port):
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
        if self.password is not None:
            args += ["--requirepass", self.password]
        if self.tls is not None:
            args += self.tls.arguments()
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

    def _client(self) -> redis.Redis:
        """A client of the plain port (logged in when the server has a password)."""
        options: dict[str, Any] = {"socket_timeout": 1, "password": self.password}
        return redis.Redis(host=self.host, port=self.port, **options)

    def ping(self) -> bool:
        """Whether the server answers PING."""
        try:
            client = self._client()
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    def version(self) -> str | None:
        """``redis_version`` of the running server."""
        try:
            client = self._client()
            try:
                return str(client.info("server")["redis_version"])
            finally:
                client.close()
        except redis.RedisError:
            return None
