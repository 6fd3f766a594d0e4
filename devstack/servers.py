"""The one way to get a Kafka broker and a Redis server for tests, benchmarks and evaluation.

"Use the one given, else start a fresh one on a free port and stop it on exit":
:func:`kafka_given_or_started` and :func:`redis_given_or_started` are context
managers that yield an address. The test fixtures, the benchmarks and the
evaluation all use them.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fraudstream.devstack.kafka import KafkaServer
from fraudstream.devstack.ports import free_port
from fraudstream.devstack.redis import RedisServer

log = logging.getLogger(__name__)


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
        log.info("started redis at %s", server.url)
        try:
            yield server.url
        finally:
            server.stop()


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
        log.info("started kafka at %s", server.bootstrap_servers)
        try:
            yield server.bootstrap_servers
        finally:
            server.stop()
