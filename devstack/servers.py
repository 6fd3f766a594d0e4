"""The one way to get a Kafka broker and a Redis server for tests, benchmarks and evaluation.

"Use the one given, else start a fresh one on a free port and stop it on exit":
:func:`kafka_given_or_started`, :func:`redis_given_or_started` and
:func:`redis_cluster_given_or_started` are context managers that yield an
address. The test fixtures, the benchmarks and the evaluation all use them.
:func:`secured_kafka_started` and :func:`secured_redis_started` start servers
with SASL and TLS (certificates from :func:`fraudstream.devstack.tls.make_test_pki`)
for the security tests.
:func:`started_pid` tells the process id of a server started here (the
benchmarks read its CPU time from ``/proc``).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fraudstream.devstack.kafka import BrokerSecurity, KafkaServer
from fraudstream.devstack.ports import free_port
from fraudstream.devstack.redis import RedisServer, RedisTls
from fraudstream.devstack.redis_cluster import RedisCluster
from fraudstream.devstack.tls import TestPki

log = logging.getLogger(__name__)

#: Address -> pid of the servers started by this process and still running.
_STARTED: dict[str, int] = {}


def started_pid(address: str) -> int | None:
    """Process id of the server this process started at ``address`` (``None`` when given).

    ``address`` is what the context manager yielded (a bootstrap string or a URL).
    """
    return _STARTED.get(address)


@contextlib.contextmanager
def _registered(address: str, pid: int | None) -> Iterator[str]:
    if pid is not None:
        _STARTED[address] = pid
    try:
        yield address
    finally:
        _STARTED.pop(address, None)


@contextlib.contextmanager
def _serving(server: KafkaServer | RedisServer, address: str) -> Iterator[str]:
    """Yield the address of a started ``server`` (known to :func:`started_pid`); stop it after."""
    log.info("started %s at %s", server.name, address)
    try:
        with _registered(address, server.running_pid()) as registered:
            yield registered
    finally:
        server.stop()


@contextlib.contextmanager
def _home(data_dir: Path | None, prefix: str) -> Iterator[Path]:
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        yield data_dir
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def redis_given_or_started(
    url: str | None = None, *, data_dir: Path | None = None, persistent: bool = False
) -> Iterator[str]:
    """Yield ``url`` when given; else start a ``redis-server`` on a free port and stop it after.

    Parameters
    ----------
    url
        A running Redis to use as is.
    data_dir
        Folder of the started server (default: a temporary folder, removed after).
    persistent
        Append-only persistence for the started server.
    """
    if url:
        yield url
        return
    with _home(data_dir, "fraudstream-redis-") as home:
        server = RedisServer(data_dir=home, port=free_port(), persistent=persistent)
        server.start()
        with _serving(server, server.url) as address:
            yield address


@contextlib.contextmanager
def kafka_given_or_started(
    bootstrap_servers: str | None = None,
    *,
    cache_dir: Path,
    data_dir: Path | None = None,
    heap_mb: int = 512,
    timeout_s: float = 120.0,
) -> Iterator[str]:
    """Yield ``bootstrap_servers`` when given; else start a broker on free ports and stop it after.

    Parameters
    ----------
    bootstrap_servers
        A running broker to use as is.
    cache_dir
        Where the Kafka jars are (fetched with Maven when missing).
    data_dir
        Folder of the started broker (default: a temporary folder, removed after).
    heap_mb
        JVM heap of the started broker.
    timeout_s
        How long the start may take.
    """
    if bootstrap_servers:
        yield bootstrap_servers
        return
    with _home(data_dir, "fraudstream-kafka-") as home:
        server = KafkaServer(
            data_dir=home,
            cache_dir=cache_dir,
            port=free_port(),
            controller_port=free_port(),
            heap_mb=heap_mb,
        )
        server.start(timeout_s=timeout_s)
        with _serving(server, server.bootstrap_servers) as address:
            yield address


@contextlib.contextmanager
def redis_cluster_given_or_started(
    url: str | None = None,
    *,
    data_dir: Path | None = None,
    masters: int = 3,
    replicas_per_master: int = 1,
    timeout_s: float = 60.0,
) -> Iterator[str]:
    """Yield ``url`` when given; else start a local Redis Cluster and stop it after.

    The yielded URL names one node; redis-py's ``RedisCluster.from_url`` discovers
    the others.

    Parameters
    ----------
    url
        A node of a running cluster to use as is.
    data_dir
        Parent folder of the started nodes (default: a temporary folder, removed after).
    masters, replicas_per_master
        Shape of the started cluster (default 3 masters with 1 replica each).
    timeout_s
        How long the start may take.
    """
    if url:
        yield url
        return
    with _home(data_dir, "fraudstream-redis-cluster-") as home:
        cluster = RedisCluster(home, masters=masters, replicas_per_master=replicas_per_master)
        cluster.start(timeout_s=timeout_s)
        log.info("started a redis cluster at %s", ",".join(cluster.addresses))
        try:
            yield cluster.url
        finally:
            cluster.stop()


@contextlib.contextmanager
def secured_kafka_started(
    pki: TestPki,
    users: dict[str, str],
    *,
    cache_dir: Path,
    data_dir: Path | None = None,
    heap_mb: int = 384,
    timeout_s: float = 120.0,
) -> Iterator[KafkaServer]:
    """Start a broker with SASL_PLAINTEXT, SSL and SASL_SSL listeners; stop it after.

    SSL is mutual TLS (a client certificate signed by ``pki``'s CA is
    required); SASL accepts PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 for every
    user of ``users`` (name -> password). The PLAINTEXT listener stays open.
    ``server.bootstrap_for("SASL_SSL")`` gives a listener's address.
    """
    security = BrokerSecurity(
        users=users,
        keystore=pki.server_keystore,
        truststore=pki.ca_cert,
        sasl_port=free_port(),
        ssl_port=free_port(),
        sasl_ssl_port=free_port(),
    )
    with _home(data_dir, "fraudstream-kafka-secured-") as home:
        server = KafkaServer(
            data_dir=home,
            cache_dir=cache_dir,
            port=free_port(),
            controller_port=free_port(),
            heap_mb=heap_mb,
            security=security,
        )
        server.start(timeout_s=timeout_s)
        server.await_group_coordinator(timeout_s)
        log.info("started kafka with secured listeners %s", server.listener_ports())
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def secured_redis_started(
    pki: TestPki, password: str, *, data_dir: Path | None = None, auth_clients: str = "optional"
) -> Iterator[RedisServer]:
    """Start a ``redis-server`` with ``requirepass`` and a TLS port; stop it after.

    ``server.url`` is its plain port, ``server.tls_url`` its TLS port (both with
    the password). ``auth_clients``: ``tls-auth-clients`` (``"optional"``: a
    client certificate is checked when one is given).
    """
    with _home(data_dir, "fraudstream-redis-secured-") as home:
        tls = RedisTls(
            free_port(), pki.server_cert, pki.server_key, pki.ca_cert, auth_clients=auth_clients
        )
        server = RedisServer(data_dir=home, port=free_port(), password=password, tls=tls)
        server.start()
        try:
            yield server
        finally:
            server.stop()
