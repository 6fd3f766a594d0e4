"""The local development stack: a real Kafka broker and a real Redis server.

Used by ``fraudstream dev up|down|status``, by the test fixtures and by the
benchmarks. Nothing here is a fake: Kafka is Apache Kafka in KRaft mode run
from jars that Maven fetches, Redis is Debian's ``redis-server`` (a single node,
or a cluster of them joined by ``redis-cli --cluster create``).
"""

from fraudstream.devstack.kafka import BrokerSecurity, KafkaServer, fetch_kafka_jars
from fraudstream.devstack.ports import free_port, port_is_free
from fraudstream.devstack.redis import RedisServer, RedisTls, ensure_redis_installed
from fraudstream.devstack.redis_cluster import RedisCluster
from fraudstream.devstack.servers import (
    kafka_given_or_started,
    redis_cluster_given_or_started,
    redis_given_or_started,
    secured_kafka_started,
    secured_redis_started,
    started_pid,
)
from fraudstream.devstack.tls import TestPki, make_test_pki

__all__ = [
    "BrokerSecurity",
    "KafkaServer",
    "RedisCluster",
    "RedisServer",
    "RedisTls",
    "TestPki",
    "ensure_redis_installed",
    "fetch_kafka_jars",
    "free_port",
    "kafka_given_or_started",
    "make_test_pki",
    "port_is_free",
    "redis_cluster_given_or_started",
    "redis_given_or_started",
    "secured_kafka_started",
    "secured_redis_started",
    "started_pid",
]
