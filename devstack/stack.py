"""The dev stack as one unit: a Kafka broker and a Redis server under one folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fraudstream.devstack.kafka import KafkaServer
from fraudstream.devstack.redis import RedisServer


@dataclass(frozen=True)
class DevStack:
    """Kafka and Redis for local development, state under ``home``.

    Parameters
    ----------
    home
        Folder holding ``kafka/`` and ``redis/`` (data, pid files, logs).
    cache_dir
        Where Maven's Kafka jars are copied.
    kafka_port, controller_port, redis_port
        Loopback ports; the defaults match :class:`fraudstream.service.settings.Settings`.
    persistent_redis
        Append-only file for Redis, so the demo's features survive a restart.
    """

    home: Path
    cache_dir: Path
    kafka_port: int = 9092
    controller_port: int = 9093
    redis_port: int = 6379
    persistent_redis: bool = True

    @property
    def kafka(self) -> KafkaServer:
        """The Kafka broker of the stack."""
        return KafkaServer(
            data_dir=self.home / "kafka",
            cache_dir=self.cache_dir,
            port=self.kafka_port,
            controller_port=self.controller_port,
        )

    @property
    def redis(self) -> RedisServer:
        """The Redis server of the stack."""
        return RedisServer(
            data_dir=self.home / "redis", port=self.redis_port, persistent=self.persistent_redis
        )

    def up(self) -> None:
        """Start both servers (no-op for one already running)."""
        redis_server = self.redis
        started_redis = redis_server.running_pid() is None
        redis_server.start()
        try:
            self.kafka.start()
        except BaseException:
            # Leave nothing half-started behind: a failed `up` is a no-op.
            if started_redis:
                redis_server.stop()
            raise

    def down(self) -> None:
        """Stop both servers; leaves no process behind."""
        self.kafka.stop()
        self.redis.stop()

    def status(self) -> dict[str, dict[str, object]]:
        """What runs, with versions, as plain data for printing."""
        kafka = self.kafka
        redis_server = self.redis
        kafka_pid = kafka.running_pid()
        described = kafka.describe() if kafka_pid else None
        redis_pid = redis_server.running_pid()
        return {
            "kafka": {
                "running": kafka_pid is not None,
                "healthy": described is not None,
                "pid": kafka_pid,
                "bootstrap_servers": kafka.bootstrap_servers,
                "version": kafka.version,
                **(described or {}),
                "log": str(kafka.log_file),
            },
            "redis": {
                "running": redis_pid is not None,
                "healthy": redis_server.ping() if redis_pid else False,
                "pid": redis_pid,
                "url": redis_server.url,
                "version": redis_server.version() if redis_pid else None,
                "log": str(redis_server.log_file),
            },
        }
