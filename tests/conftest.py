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
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeAlias

import orjson
import pytest
import redis
from kafka_extras import admin_for_tests, delivered

from fraudstream.devstack import (
    KafkaServer,
    RedisServer,
    TestPki,
    free_port,
    kafka_given_or_started,
    make_test_pki,
    redis_cluster_given_or_started,
    redis_given_or_started,
    secured_kafka_started,
    secured_redis_started,
)
from fraudstream.service.app import Application
from fraudstream.service.kafka.clients import KafkaTarget
from fraudstream.service.kafka.protocols import Consumer, ConsumerRecord, TopicPartition
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
    """A CA, a server certificate and a client certificate for this session.

    The server certificate names localhost and 127.0.0.1; the client's key is encrypted;
    ``openssl`` makes them.
    """
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def secured_kafka(
    test_pki: TestPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaServer]:
    """A broker with SASL_PLAINTEXT, SSL (mutual TLS) and SASL_SSL listeners.

    Users: :data:`KAFKA_USERS`; ``secured_kafka.bootstrap_for("SSL")`` is a listener's address.
    """
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
    """A Redis with ``requirepass`` :data:`REDIS_PASSWORD` and a TLS port.

    Addresses: ``secured_redis.url``, ``secured_redis.tls_url``.
    """
    with secured_redis_started(
        test_pki, REDIS_PASSWORD, data_dir=tmp_path_factory.mktemp("redis-secured")
    ) as server:
        yield server


@pytest.fixture(scope="module")
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    """A broker of the test module's own, to stop, kill or tamper with."""
    server = KafkaServer(
        data_dir=tmp_path_factory.mktemp("own-kafka"),
        cache_dir=REPO_ROOT / ".cache",
        port=free_port(),
        controller_port=free_port(),
    )
    server.start(timeout_s=120)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A persistent Redis of this test alone, to stop and start (an outage); stopped after."""
    server = RedisServer(tmp_path / "redis", port=free_port(), persistent=True)
    server.start()
    yield server
    server.stop()


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


def isolated_names(name: Callable[[str], str]) -> dict[str, Any]:
    """The consumer groups and topics of a service no other test shares: ``name(role)`` each."""
    return {
        "consumer_group": name("scorer"),
        "learner_group": name("learner"),
        "topic_transactions": name("transactions"),
        "topic_labels": name("labels"),
        "topic_alerts": name("alerts"),
        "topic_scores": name("scores"),
        "topic_transactions_dlq": name("transactions.dlq"),
        "topic_labels_dlq": name("labels.dlq"),
    }


@pytest.fixture
def make_settings(
    request: pytest.FixtureRequest, unique_name: Callable[[str], str], redis_prefix: str
) -> Callable[..., Settings]:
    """Settings pointing at the session's servers, with unique topics/group/prefix.

    Only the servers that the test asks for are started: a unit test that
    builds settings does not start Kafka.
    """

    def build(**overrides: object) -> Settings:
        values: dict[str, Any] = {
            **isolated_names(unique_name),
            "topic_partitions": 2,
            "redis_prefix": redis_prefix,
            "metrics_port": 0,
        }
        if "bootstrap_servers" not in overrides:
            values["bootstrap_servers"] = request.getfixturevalue("kafka_bootstrap")
        if "redis_url" not in overrides:
            values["redis_url"] = request.getfixturevalue("redis_url")
        values.update(overrides)
        return Settings(_env_file=None, **values)

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
    """``make_transaction(transaction_id, card, terminal, amount, at)``.

    A ``(key, value)`` record for ``produce``; ``at`` is an aware datetime.
    """
    return _transaction


#: What ``produce`` sends: ``(key, value)`` or ``(key, value, headers)``.
ProducedRecord: TypeAlias = (
    tuple[bytes | None, bytes | None]
    | tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]
)


def _produce(bootstrap: KafkaTarget, topic: str, records: Sequence[ProducedRecord]) -> None:
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
            delivered(future, timeout_s=30)  # raises if any record was not delivered
    finally:
        producer.close()


def _consume(
    bootstrap: KafkaTarget,
    topic: str,
    *,
    at_least: int,
    timeout_s: float = 30.0,
    settle_s: float = 0.0,
    read_committed: bool = False,
) -> list[ConsumerRecord]:
    """Read a whole topic from the beginning until ``at_least`` records (then ``settle_s`` more).

    ``bootstrap``: bootstrap servers, or settings (their security options too).
    """
    import time

    from fraudstream.service.kafka import make_consumer

    consumer = make_consumer(
        bootstrap, client_id="test-reader", group_id=None, read_committed=read_committed
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        records: list[ConsumerRecord] = []
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


def known_position(consumer: Consumer, partition: TopicPartition) -> int:
    """The offset ``consumer`` reads ``partition`` from next (kafka-python waits until known)."""
    position = consumer.position(partition)
    assert position is not None, f"no position for {partition}"
    return position


def read_all(
    bootstrap: KafkaTarget, topic: str, *, read_committed: bool = False
) -> list[ConsumerRecord]:
    """Every record of ``topic`` up to its current end (committed records only if asked)."""
    import time

    from fraudstream.service.kafka import make_consumer

    consumer = make_consumer(
        bootstrap, client_id="test-reader", group_id=None, read_committed=read_committed
    )
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + 60
        while any(known_position(consumer, tp) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline, f"could not read {topic} to its end in 60 s"
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


@pytest.fixture
def read_topic() -> Callable[..., list[ConsumerRecord]]:
    """``read_topic(bootstrap, topic, read_committed=False)``: every record up to the end."""
    return read_all


@pytest.fixture
def produce() -> Callable[..., None]:
    """``produce(bootstrap, topic, [(key, value[, headers]), ...])``; waits for every delivery."""
    return _produce


@pytest.fixture
def consume() -> Callable[..., list[ConsumerRecord]]:
    """``consume(bootstrap, topic, at_least=n)`` reads a topic from the beginning."""
    return _consume


class AppUnderTest(Application):
    """An :class:`Application` that ``run_app`` runs in a thread."""

    #: The error ``run()`` ended with; set only if it ended with one.
    run_error: Exception


@pytest.fixture
def run_app() -> Iterator[Callable[[Settings], AppUnderTest]]:
    """Start ``Application(settings)`` in a thread; every started app is stopped at the end.

    The error ``run()`` ended with, if any, is ``app.run_error``.
    """
    import threading

    started: list[tuple[AppUnderTest, threading.Thread]] = []

    def start(settings: Settings) -> AppUnderTest:
        app = AppUnderTest(settings)
        app.ensure_topics()

        def run() -> None:
            try:
                app.run()
            except Exception as exc:  # a test that stops an app on purpose reads it here
                app.run_error = exc

        thread = threading.Thread(target=run, name="app-under-test", daemon=True)
        thread.start()
        started.append((app, thread))
        return app

    yield start
    for app, thread in started:
        app.stop()
        thread.join(timeout=60)
        assert not thread.is_alive(), "application did not stop within 60 s"


def http_get(port: int, path: str) -> tuple[int, str]:
    """Status and body of ``GET http://127.0.0.1:{port}{path}`` (0 and the reason when refused)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


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
def spawn_service(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``fraudstream serve`` as a real OS process; all are stopped at the end."""
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
    stop_processes(processes)


def spawn_serve(settings: Settings, log: Path, role: str, *crash: str) -> subprocess.Popen[bytes]:
    """``fraudstream serve --role ROLE`` as a process of its own, appending to ``log``.

    With ``crash`` (``POINT N MARKER``) it runs through ``tests/crash_at.py``,
    which ends it at that point of its loop.
    """
    import sys

    command = ["tests/crash_at.py", *crash] if crash else ["-m", "fraudstream", "serve"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *command, "--role", role],
            env=settings_env(settings, PYTHONPATH=str(REPO_ROOT / "tests")),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )


def stop_processes(processes: Sequence[subprocess.Popen[bytes]], timeout_s: float = 60.0) -> None:
    """SIGTERM each process still running, then wait for each; one that outlives it is killed."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def sweep_selection(request: pytest.FixtureRequest) -> tuple[list[Any], str]:
    """The cases of a crash sweep's selected tests (its module's parametrized ``case``).

    With a Redis Cluster's URL when one of them runs on one (``case.cluster``;
    the cluster is started only then), else ''.
    """
    selected = [
        item.callspec.params["case"]
        for item in request.session.items
        if getattr(item, "module", None) is request.module and hasattr(item, "callspec")
    ]
    needs_cluster = any(getattr(case, "cluster", False) for case in selected)
    return selected, request.getfixturevalue("redis_cluster_url") if needs_cluster else ""


def _group_members(bootstrap: str, group: str) -> dict[str, int]:
    """Client id of each live member of a consumer group -> partitions it owns."""
    from kafka.errors import KafkaError

    from fraudstream.service.kafka import make_admin

    admin = admin_for_tests(make_admin(bootstrap))
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


# --- Fault-test helpers: what "nothing lost, nothing counted twice" means ----


@pytest.fixture
def minute_batch(
    make_transaction: Callable[..., tuple[bytes, bytes]],
) -> Callable[..., list[tuple[bytes, bytes]]]:
    """``minute_batch(prefix, n, cards=7, first_minute=0)``.

    ``n`` transactions a minute apart from a day ago (the same start for every call
    of one test): ids ``{prefix}-{i}``, card ``c{i % cards}``, terminal ``T1``,
    amount ``10 + i``.
    """
    from datetime import UTC, datetime, timedelta

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)

    def build(
        prefix: str, n: int, cards: int = 7, first_minute: int = 0
    ) -> list[tuple[bytes, bytes]]:
        return [
            make_transaction(
                f"{prefix}-{i}",
                f"c{i % cards}",
                "T1",
                10.0 + i,
                start + timedelta(minutes=first_minute + i),
            )
            for i in range(n)
        ]

    return build


@pytest.fixture
def card_stream(
    make_transaction: Callable[..., tuple[bytes, bytes]],
) -> Callable[..., list[tuple[bytes, bytes]]]:
    """``card_stream(prefix, cards, per_card, first=0)``.

    Transactions of ``cards`` cards, ``per_card`` each, in each card's event-time order (ids
    ``{prefix}c{card}-{i}``).
    """
    from datetime import UTC, datetime, timedelta

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=20)

    def build(prefix: str, cards: int, per_card: int, first: int = 0) -> list[tuple[bytes, bytes]]:
        records = []
        for i in range(first, first + per_card):
            for c in range(cards):
                at = start + timedelta(minutes=10 * i, seconds=c)
                amount = 10.0 + (i * 13 + c) % 50
                card = f"{prefix}c{c}"
                records.append(make_transaction(f"{card}-{i}", card, f"T{(c + i) % 7}", amount, at))
        return records

    return build


@pytest.fixture
def counting_problems(redis_url: str) -> Iterator[Callable[..., list[str]]]:
    """``counting_problems(settings, records, redis_url=None)``.

    Transactions not counted exactly once in the card history, empty when every one of ``records``
    (a ``card_stream``) was.

    A transaction's 30-day count, as stored in its feature snapshot, is its rank in
    its card's history: a transaction lost or counted twice before it shows there.
    """
    from fraudstream.service.features.definitions import FeatureConfig, feature_names
    from fraudstream.service.snapshots import SnapshotStore

    clients: list[redis.Redis] = []

    def problems(
        settings: Settings, records: Sequence[tuple[bytes, bytes]], url: str | None = None
    ) -> list[str]:
        client = redis.Redis.from_url(url or redis_url)
        clients.append(client)
        snapshots = SnapshotStore(client, settings.redis_prefix, settings.snapshot_ttl_s)
        count_30d = feature_names(FeatureConfig.from_settings(settings)).index("card_tx_count_30d")
        ids = [orjson.loads(value)["transaction_id"] for _, value in records]
        seen: dict[str, int] = {}
        out = []
        for tx_id, snapshot in zip(ids, snapshots.get_many(ids), strict=True):
            card = tx_id.rsplit("-", 1)[0]
            seen[card] = seen.get(card, 0) + 1
            if snapshot is None:
                out.append(f"{tx_id} never scored")
            elif snapshot.features[count_30d] != seen[card]:
                out.append(
                    f"{tx_id} counted as #{snapshot.features[count_30d]:.0f}, is #{seen[card]}"
                )
        return out

    yield problems
    for client in clients:
        client.close()


def committed_offsets(
    settings: Settings, *, learner: bool = False
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """The scorer group's committed offset and the end offset of each ``transactions`` partition.

    With ``learner``: the learner group's, on ``labels``.
    """
    from fraudstream.service.kafka import make_consumer

    topic = settings.topic_labels if learner else settings.topic_transactions
    group = make_consumer(
        settings.bootstrap_servers,
        client_id="test-committed",
        group_id=settings.learner_group if learner else settings.consumer_group,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in group.partitions_for_topic(topic) or ()]
        if not partitions:
            return {}, {}
        committed = {tp: group.committed(tp) or 0 for tp in partitions}
        return committed, dict(group.end_offsets(partitions))
    finally:
        group.close(autocommit=False)


def lag_of(settings: Settings, *, learner: bool = False) -> int:
    """Records beyond the scorer group's commits on ``transactions`` (-1: no partition yet).

    With ``learner``: beyond the learner group's, on ``labels``.
    """
    committed, ends = committed_offsets(settings, learner=learner)
    return sum(ends[tp] - committed[tp] for tp in ends) if ends else -1


@pytest.fixture
def group_lag() -> Callable[[Settings], int]:
    """``group_lag(settings)``: records of ``transactions`` beyond the scorer group's commits.

    0 before the topic has partitions.
    """
    return lambda settings: max(lag_of(settings), 0)


@pytest.fixture
def committed_past_unscored(redis_url: str) -> Iterator[Callable[..., list[str]]]:
    """``committed_past_unscored(settings, redis_url=None)``.

    Transactions below the scorer group's committed offsets that have no feature snapshot (empty
    when none).
    """
    from fraudstream.service.snapshots import SnapshotStore

    clients: list[redis.Redis] = []

    def problems(settings: Settings, url: str | None = None) -> list[str]:
        client = redis.Redis.from_url(url or redis_url)
        clients.append(client)
        snapshots = SnapshotStore(client, settings.redis_prefix, settings.snapshot_ttl_s)
        committed, _ = committed_offsets(settings)
        below = [
            r
            for r in read_all(settings.bootstrap_servers, settings.topic_transactions)
            if r.offset < committed[TopicPartition(r.topic, r.partition)]
        ]
        ids = [orjson.loads(r.value or b"")["transaction_id"] for r in below]
        return [
            f"{tx_id} ({r.topic}[{r.partition}]@{r.offset}) is below the committed offset "
            "and was never scored"
            for tx_id, r, snap in zip(ids, below, snapshots.get_many(ids), strict=True)
            if snap is None
        ]

    yield problems
    for client in clients:
        client.close()
