"""Session fixtures: one real Kafka broker and one real Redis per test session.

Both start on free ports in a temporary folder and stop at the end. To keep
servers running between runs, start them yourself (``fraudstream dev up``) and
export ``TEST_BOOTSTRAP_SERVERS`` / ``TEST_REDIS_URL``.
A real local Redis Cluster (3 masters, 3 replicas) starts only for the tests
that ask for ``redis_cluster_url`` (or use ``TEST_REDIS_CLUSTER_URL``), and a
broker with SASL and TLS listeners and a Redis with a password and a TLS port
(certificates made by ``openssl``) only for the tests that ask for
``secured_kafka`` / ``secured_redis``.
Each test gets fresh topic names, a fresh consumer group and a fresh Redis
key prefix, so tests never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from fraudstream.devstack import (
    KafkaServer,
    RedisServer,
    TestPki,
    kafka_given_or_started,
    make_test_pki,
    redis_cluster_given_or_started,
    redis_given_or_started,
    secured_kafka_started,
    secured_redis_started,
)
from fraudstream.service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real Kafka broker for this session."""
    with kafka_given_or_started(
        os.environ.get("TEST_BOOTSTRAP_SERVERS"),
        cache_dir=REPO_ROOT / ".cache",
        data_dir=tmp_path_factory.mktemp("kafka"),
    ) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis server for this session (no persistence)."""
    with redis_given_or_started(
        os.environ.get("TEST_REDIS_URL"), data_dir=tmp_path_factory.mktemp("redis")
    ) as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of one node of a real Redis Cluster (3 masters + 3 replicas) for this session.

    ``redis.cluster.RedisCluster.from_url(redis_cluster_url)`` finds the other nodes.
    """
    with redis_cluster_given_or_started(
        os.environ.get("TEST_REDIS_CLUSTER_URL"),
        data_dir=tmp_path_factory.mktemp("redis-cluster"),
    ) as url:
        yield url


#: SASL users of the secured broker (PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512).
KAFKA_USERS = {"fraudstream": "kafka-pass-1"}
#: ``requirepass`` of the secured Redis.
REDIS_PASSWORD = "redis-pass-1"


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """A CA, a server certificate (localhost, 127.0.0.1) and a client certificate
    (its key encrypted), made by ``openssl`` for this session."""
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def secured_kafka(
    test_pki: TestPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaServer]:
    """A broker with SASL_PLAINTEXT, SSL (mutual TLS) and SASL_SSL listeners (users:
    :data:`KAFKA_USERS`); ``secured_kafka.bootstrap_for("SSL")`` is a listener's address."""
    with secured_kafka_started(
        test_pki,
        KAFKA_USERS,
        cache_dir=REPO_ROOT / ".cache",
        data_dir=tmp_path_factory.mktemp("kafka-secured"),
    ) as server:
        yield server


@pytest.fixture(scope="session")
def secured_redis(
    test_pki: TestPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    """A Redis with ``requirepass`` :data:`REDIS_PASSWORD` and a TLS port
    (``secured_redis.url``, ``secured_redis.tls_url``)."""
    with secured_redis_started(
        test_pki, REDIS_PASSWORD, data_dir=tmp_path_factory.mktemp("redis-secured")
    ) as server:
        yield server


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the session's Redis (bytes responses)."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Make names unique to this test: ``unique_name("transactions")``."""
    suffix = uuid.uuid4().hex[:10]
    return lambda base: f"{base}-{suffix}"


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_settings(
    request: pytest.FixtureRequest, unique_name: Callable[[str], str], redis_prefix: str
) -> Callable[..., Settings]:
    """Settings pointing at the session's servers, with unique topics/group/prefix.

    Only the servers that the test asks for are started: a unit test that
    builds settings does not start Kafka.
    """

    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "consumer_group": unique_name("scorer"),
            "learner_group": unique_name("learner"),
            "topic_transactions": unique_name("transactions"),
            "topic_labels": unique_name("labels"),
            "topic_alerts": unique_name("alerts"),
            "topic_scores": unique_name("scores"),
            "topic_transactions_dlq": unique_name("transactions.dlq"),
            "topic_labels_dlq": unique_name("labels.dlq"),
            "topic_partitions": 2,
            "redis_prefix": redis_prefix,
            "metrics_port": 0,
        }
        if "bootstrap_servers" not in overrides:
            values["bootstrap_servers"] = request.getfixturevalue("kafka_bootstrap")
        if "redis_url" not in overrides:
            values["redis_url"] = request.getfixturevalue("redis_url")
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return build


# --- Kafka helpers shared by integration and e2e tests ----------------------


def _transaction(
    transaction_id: str, card: str, terminal: str, amount: float, at: datetime
) -> tuple[bytes, bytes]:
    """(key, value) of a transaction as a producer sends it: keyed by card, time in RFC 3339."""
    return card.encode(), orjson.dumps(
        {
            "transaction_id": transaction_id,
            "card_id": card,
            "terminal_id": terminal,
            "amount": amount,
            "timestamp": at.isoformat().replace("+00:00", "Z"),
        }
    )


@pytest.fixture
def make_transaction() -> Callable[..., tuple[bytes, bytes]]:
    """``make_transaction(transaction_id, card, terminal, amount, at)``: a ``(key, value)``
    record for ``produce``; ``at`` is an aware datetime."""
    return _transaction


def _produce(bootstrap: Any, topic: str, records: Sequence[tuple[Any, ...]]) -> None:
    """Send ``(key, value)`` or ``(key, value, headers)`` records and wait for each delivery.

    ``bootstrap``: bootstrap servers, or settings (their security options too).
    """
    from fraudstream.service.kafka import make_producer

    producer = make_producer(bootstrap, client_id="test-feeder")
    try:
        futures = [
            producer.send(topic, key=r[0], value=r[1], headers=r[2] if len(r) > 2 else None)
            for r in records
        ]
        producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=30)  # raises if any record was not delivered
    finally:
        producer.close()


def _consume(
    bootstrap: Any,
    topic: str,
    *,
    at_least: int,
    timeout_s: float = 30.0,
    settle_s: float = 0.0,
    read_committed: bool = False,
) -> list[Any]:
    """Read a whole topic from the beginning until ``at_least`` records (then ``settle_s`` more).

    ``bootstrap``: bootstrap servers, or settings (their security options too).
    """
    import time

    from kafka import TopicPartition

    from fraudstream.service.kafka import make_consumer

    consumer = make_consumer(
        bootstrap, client_id="test-reader", group_id=None, read_committed=read_committed
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if len(records) >= at_least:
                settle_until = settle_until or time.monotonic() + settle_s
                if time.monotonic() >= settle_until:
                    break
        return records
    finally:
        consumer.close()


@pytest.fixture
def produce() -> Callable[..., None]:
    """``produce(bootstrap, topic, [(key, value[, headers]), ...])``; waits for every delivery."""
    return _produce


@pytest.fixture
def consume() -> Callable[..., list[Any]]:
    """``consume(bootstrap, topic, at_least=n)`` reads a topic from the beginning."""
    return _consume


@pytest.fixture
def run_app() -> Iterator[Callable[[Settings], Any]]:
    """Start ``Application(settings)`` in a thread; every started app is stopped at the end."""
    import threading

    from fraudstream.service.app import Application

    started: list[tuple[Any, threading.Thread]] = []

    def start(settings: Settings) -> Any:
        app = Application(settings)
        app.ensure_topics()
        thread = threading.Thread(target=app.run, name="app-under-test", daemon=True)
        thread.start()
        started.append((app, thread))
        return app

    yield start
    for app, thread in started:
        app.stop()
        thread.join(timeout=60)
        assert not thread.is_alive(), "application did not stop within 60 s"


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a ``fraudstream`` subprocess that sees exactly ``settings``."""
    from pydantic import SecretStr

    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSTREAM_")}
    for name, value in settings.model_dump().items():
        if value is None:  # unset
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"FRAUDSTREAM_{name.upper()}"] = str(getattr(value, "value", value))
    env.update(extra)
    return env


@pytest.fixture
def spawn_service(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start ``fraudstream serve`` as a real OS process; all are stopped at the end."""
    import subprocess
    import sys

    processes: list[subprocess.Popen[bytes]] = []

    def spawn(settings: Settings, *args: str, name: str = "serve") -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"{name}-{len(processes)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "fraudstream", "serve", *args],
            env=settings_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
        processes.append(process)
        return process

    yield spawn
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def _group_members(bootstrap: str, group: str) -> dict[str, int]:
    """Client id of each live member of a consumer group -> partitions it owns."""
    from kafka.errors import KafkaError

    from fraudstream.service.kafka import make_admin

    admin = make_admin(bootstrap)
    try:
        try:
            described = admin.describe_groups([group])[group]
        except KafkaError:  # coordinator not there yet: the group is still forming
            return {}
        out: dict[str, int] = {}
        for member in described["members"]:
            assignment = member["member_assignment"] or {}
            owned = sum(len(a["partitions"]) for a in assignment.get("assigned_partitions", []))
            out[member["client_id"]] = out.get(member["client_id"], 0) + owned
        return out
    finally:
        admin.close()


@pytest.fixture
def group_members() -> Callable[[str, str], dict[str, int]]:
    """``group_members(bootstrap, group)``: client id of each live member -> partitions owned."""
    return _group_members


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """``wait_for(predicate, timeout_s, what)``: poll until true, else fail naming ``what``.

    Timeouts are generous upper bounds for loaded CI machines, never timings under test.
    """
    import time

    def wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.3)
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")

    return wait
