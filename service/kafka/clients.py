"""Kafka client construction with fraudstream's defaults."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
)

from fraudstream.service.errors import ConfigurationError, FraudstreamError, UnavailableError
from fraudstream.service.kafka import records
from fraudstream.service.kafka.connection import KafkaConnection, verify
from fraudstream.service.kafka.protocols import (
    Admin,
    Consumer,
    ConsumerRebalanceListener,
    Producer,
    SendFuture,
)

if TYPE_CHECKING:
    from fraudstream.service.settings import Settings

#: What every client builder takes: the settings, a connection, or bare bootstrap
#: servers (PLAINTEXT; tests and tools on a local broker).
KafkaTarget: TypeAlias = "Settings | KafkaConnection | str"

#: What kafka-python raises when no broker answers while a client is built.
_UNREACHABLE = (KafkaTimeoutError, KafkaConnectionError)

#: Longest wait between reconnection attempts: a restarted broker is found within
#: a second (kafka-python's default backs off to 30 s, so clients sat idle for
#: half a minute after the broker was back).
_RECONNECT_BACKOFF_MAX_MS = 1000


class DeliveryError(FraudstreamError):
    """One or more records could not be delivered to Kafka."""


def _unavailable(connection: KafkaConnection, exc: Exception) -> UnavailableError:
    return UnavailableError(
        f"Kafka at {connection.describe()} is not reachable ({type(exc).__name__}: {exc}); "
        "is the broker running? (`fraudstream dev up` starts a local one)"
    )


def _connect(kafka: KafkaTarget) -> KafkaConnection:
    """The connection of ``kafka``, verified first when it uses TLS or SASL.

    A refused password or an untrusted certificate is then one clear error at
    once, where kafka-python would retry until its bootstrap timeout.
    """
    connection = KafkaConnection.of(kafka)
    if connection.secured:
        verify(connection)
    return connection


def make_producer(
    kafka: KafkaTarget,
    *,
    client_id: str,
    transactional_id: str | None = None,
    linger_ms: int = 5,
    **overrides: Any,
) -> Producer:
    """An idempotent producer (acks=all) that batches for throughput.

    Parameters
    ----------
    kafka
        The settings (bootstrap servers and security options), a
        :class:`KafkaConnection`, or ``host:port[,host:port]`` (PLAINTEXT).
    client_id
        Shows up in broker logs and metrics.
    transactional_id
        Set for exactly-once mode; the caller then calls ``init_transactions``.
    linger_ms
        How long the producer waits to fill a batch (default 5 ms).
    **overrides
        Any other kafka-python producer option.
    """
    connection = _connect(kafka)
    config: dict[str, Any] = {
        **connection.options(),
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": linger_ms,
        "batch_size": 256 * 1024,
        "max_request_size": 2 * 1024 * 1024,
        "retries": 2**31 - 1,
        "delivery_timeout_ms": 120_000,
        "reconnect_backoff_max_ms": _RECONNECT_BACKOFF_MAX_MS,
    }
    if transactional_id is not None:
        config["transactional_id"] = transactional_id
    config.update(overrides)
    try:
        producer: Producer = KafkaProducer(**config)
        return producer
    except _UNREACHABLE as exc:
        raise _unavailable(connection, exc) from exc


def make_consumer(
    kafka: KafkaTarget,
    *,
    client_id: str,
    group_id: str | None,
    topics: Iterable[str] = (),
    read_committed: bool | None = None,
    auto_offset_reset: str = "earliest",
    batch_decoding: bool | None = None,
    **overrides: Any,
) -> Consumer:
    """A consumer with auto-commit off: offsets are committed by the caller only.

    Parameters
    ----------
    kafka
        The settings, a :class:`KafkaConnection`, or bootstrap servers (PLAINTEXT).
    group_id
        Consumer group, or ``None`` for a group-less reader (recorder, tests).
    topics
        Subscribed at once when given (group management); otherwise assign later.
    read_committed
        Only see records of committed transactions (and no record of an aborted
        one). Default: the ``kafka_read_committed`` setting when ``kafka`` is the
        settings, else on.
    batch_decoding
        Decode fetched batches with :mod:`fraudstream.service.kafka.records`
        (the same records as kafka-python's decoder, in less CPU). Default:
        the ``kafka_batch_decoding`` setting when ``kafka`` is the settings, else on.
    """
    connection = _connect(kafka)
    if read_committed is None:
        read_committed = bool(getattr(kafka, "kafka_read_committed", True))
    config: dict[str, Any] = {
        **connection.options(),
        "client_id": client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": auto_offset_reset,
        "isolation_level": "read_committed" if read_committed else "read_uncommitted",
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "fetch_max_bytes": 32 * 1024 * 1024,
        # New partitions (and a missed metadata change) are seen within 30 s,
        # not kafka-python's default 5 minutes.
        "metadata_max_age_ms": 30_000,
        "reconnect_backoff_max_ms": _RECONNECT_BACKOFF_MAX_MS,
    }
    config.update(overrides)
    try:
        consumer: Consumer = KafkaConsumer(**config)
    except _UNREACHABLE as exc:
        raise _unavailable(connection, exc) from exc
    if batch_decoding is None:
        batch_decoding = bool(getattr(kafka, "kafka_batch_decoding", True))
    if batch_decoding:
        records.install(consumer)
    if group_id is not None:
        _finish_pending_joins(consumer)
    topic_list = list(topics)
    if topic_list:
        subscribe(consumer, topic_list)
    return consumer


def _finish_pending_joins(consumer: Consumer) -> None:
    """Make kafka-python finish a rebalance that outlived the ``poll`` that started it.

    kafka-python 3.0 joins in a task that survives a ``poll`` timeout and is
    taken up by the next ``poll``, but only while ``need_rejoin()`` is true. A
    rejoin caused by a metadata change (the leader's assignment snapshot
    differs from the metadata) stops being "needed" as soon as the new
    assignment is computed, inside that very task: the next ``poll`` then
    never collects the finished join, the member stays ``REBALANCING`` with
    its partitions marked for revocation, and nothing is fetched again, ever.
    Seen as a scorer or learner that joined a fresh topic and then consumed
    nothing. The Java client asks ``rejoinNeededOrPending()``; so do we.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not hasattr(coordinator, "rejoining"):
        return  # another kafka-python: nothing to fix
    need_rejoin = coordinator.need_rejoin

    def need_rejoin_or_pending() -> bool:
        return bool(need_rejoin() or coordinator.rejoining)

    coordinator.need_rejoin = need_rejoin_or_pending


def group_coordinator_known(consumer: Consumer) -> bool:
    """Whether the consumer knows its group's coordinator and can reach it.

    A member whose coordinator is unknown (the broker restarted, or the
    coordinator moved) cannot commit; kafka-python still calls it ``STABLE``
    until a heartbeat reaches the new coordinator.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    unknown = getattr(coordinator, "coordinator_unknown", None)
    return True if unknown is None else not unknown()


def subscribe(
    consumer: Consumer, topics: list[str], listener: ConsumerRebalanceListener | None = None
) -> None:
    """Join the group for ``topics`` once their partitions are known.

    kafka-python can join before it has the topics' metadata; the range
    assignor then hands this member no partitions, and nothing triggers a new
    rebalance until the next metadata refresh. Loading the metadata first
    makes the first assignment the right one.

    Its group coordinator also keeps a snapshot of the subscribed topics'
    partitions, rebuilt on metadata updates only, and rejoins when the snapshot
    it assigned with differs from the current one. One more metadata update
    after subscribing builds the snapshot before the first join; without it a
    refresh landing after the first assignment made every new member rejoin at
    once, and kafka-python 3.0.12 can drop the assignment of such a rejoin
    when a short poll times out mid-join (the member then holds no partitions
    and stops heartbeating until the group evicts it).
    """
    for topic in topics:
        consumer.partitions_for_topic(topic)
    if listener is None:
        consumer.subscribe(topics)
    else:
        consumer.subscribe(topics, listener=listener)
    consumer.topics()  # a metadata update with the subscription in place


def make_admin(kafka: KafkaTarget, *, client_id: str = "fraudstream-admin") -> Admin:
    """An admin client, with a clear error when the broker is unreachable."""
    connection = _connect(kafka)
    try:
        admin: Admin = KafkaAdminClient(
            **connection.options(), client_id=client_id, request_timeout_ms=15_000
        )
        return admin
    except _UNREACHABLE as exc:
        raise _unavailable(connection, exc) from exc


def ensure_topics(
    kafka: KafkaTarget,
    partitions_by_topic: Mapping[str, int],
    *,
    replication: int = 1,
    create: bool = True,
    timeout_s: float = 30.0,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> list[str]:
    """Make sure topics exist and every partition has a leader; return the ones created.

    Parameters
    ----------
    kafka
        The settings, a :class:`KafkaConnection`, or bootstrap servers (PLAINTEXT).
    partitions_by_topic
        Topic name -> partitions of the topic when it is created.
    replication
        Replication factor of created topics (default 1).
    create
        Create missing topics (default); ``False`` makes a missing topic a
        :class:`ConfigurationError` (never silently assumed).
    timeout_s
        How long creation and the wait for leaders may take (default 30 s).
    configs
        Topic name -> topic-level configs applied when the topic is created
        (e.g. ``{"message.timestamp.type": "LogAppendTime"}``); an existing
        topic is left as it is. Default: none.
    """
    connection = KafkaConnection.of(kafka)
    admin = make_admin(connection)
    try:
        existing = set(admin.list_topics())
        missing = [name for name in partitions_by_topic if name not in existing]
        if missing and not create:
            raise ConfigurationError(
                f"topics missing on {connection.bootstrap_servers}: {', '.join(missing)} "
                "(create them, or set FRAUDSTREAM_CREATE_TOPICS=true)"
            )
        created: list[str] = []
        if missing:
            topic_configs = configs or {}
            new = [
                NewTopic(
                    n,
                    partitions_by_topic[n],
                    replication,
                    topic_configs=dict(topic_configs.get(n, {})),
                )
                for n in missing
            ]
            try:
                admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
                created = missing
            except TopicAlreadyExistsError:
                created = []  # another process created them first: fine
        _wait_for_topics(admin, list(partitions_by_topic), timeout_s)
        return created
    finally:
        admin.close()


def max_message_bytes(kafka: KafkaTarget, topics: Iterable[str]) -> dict[str, int]:
    """The largest record each topic accepts (its effective ``max.message.bytes``).

    The topic's own setting when it has one, otherwise the broker default
    (``message.max.bytes``), as the broker reports it.
    """
    names = list(topics)
    admin = make_admin(kafka)
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names],
            config_filter="all",
        )
    finally:
        admin.close()
    found = described.get("topic", {})
    return {
        name: int(found[name]["max.message.bytes"]["value"])
        for name in names
        if "max.message.bytes" in found.get(name, {})
    }


def _wait_for_topics(admin: Admin, topics: list[str], timeout_s: float) -> None:
    """Topic creation is asynchronous: wait until every partition has a leader."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = admin.describe_topics(topics)
        ready = all(
            t.get("error_code", 0) == 0
            and t.get("partitions")
            and all(p.get("leader_id", -1) >= 0 for p in t["partitions"])
            for t in described
        )
        if ready:
            return
        if time.monotonic() > deadline:
            raise UnavailableError(f"topics {topics} have no leader after {timeout_s:.0f} s")
        time.sleep(0.1)


class DeliveryTracker:
    """Collects send futures so that no failed delivery goes unnoticed.

    ``send`` hands a record to the producer; ``flush`` waits for every pending
    send and raises :class:`DeliveryError` naming the failures.

    Parameters
    ----------
    producer
        The producer records are handed to.
    flush_every
        Pending sends after which ``send`` flushes by itself (bounds memory and
        reports failures early); ``None`` (default): only the caller flushes.
    """

    def __init__(self, producer: Producer, *, flush_every: int | None = None) -> None:
        self.producer = producer
        self.flush_every = flush_every
        self._pending: list[SendFuture] = []
        self.delivered = 0
        #: Topic -> (partition, offset) of the last record delivered to it, in send order.
        self.last_delivered: dict[str, tuple[int, int]] = {}

    def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Hand one record to the producer (asynchronous).

        Raises ``DeliveryError`` if the producer refuses it, or if the flush
        that ``flush_every`` triggers finds an earlier record undelivered.
        """
        try:
            future = self.producer.send(
                topic,
                value=value,
                key=key,
                headers=headers,
                partition=partition,
                timestamp_ms=timestamp_ms,
            )
        except KafkaError as exc:
            raise DeliveryError(f"could not send to {topic}: {exc}") from exc
        self._pending.append(future)
        if self.flush_every is not None and len(self._pending) >= self.flush_every:
            self.flush()

    @property
    def pending(self) -> int:
        """Records handed over and not yet confirmed."""
        return len(self._pending)

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait for all pending sends; return how many were delivered.

        Raises
        ------
        DeliveryError
            When any record failed (after the producer's own retries).
        """
        self.producer.flush(timeout=timeout_s)
        failures: list[str] = []
        count = 0
        for future in self._pending:
            if future.failed():
                failures.append(repr(future.exception))
            elif future.succeeded():
                count += 1
                meta = future.value
                self.last_delivered[meta.topic] = (meta.partition, meta.offset)
            else:
                failures.append("not delivered before flush timeout")
        self._pending.clear()
        self.delivered += count
        if failures:
            raise DeliveryError(f"{len(failures)} record(s) not delivered, first: {failures[0]}")
        return count


def check_reachable(
    kafka: KafkaTarget, timeout_s: float = 2.0, given_by: str | None = None
) -> None:
    """Fail fast, in one line, when Kafka cannot be used as configured.

    Connects to the first bootstrap server that accepts TCP connections the
    way the clients will (TLS, SASL login) and asks for metadata
    (:func:`~fraudstream.service.kafka.connection.verify`). kafka-python would
    retry for ~30 s and log each attempt before giving up; a command-line tool
    should say at once that nothing is there, or that the password is wrong.

    Raises
    ------
    UnavailableError
        Nothing accepts connections: naming the servers and how to start a
        local broker.
    ConfigurationError
        TLS, SASL or protocol problems (``AuthenticationFailedError`` for a
        refused login), naming the setting to fix.

    ``given_by``: where the bootstrap servers came from when not the settings
    (e.g. ``--bootstrap-servers``), for the first message.
    """
    verify(kafka, timeout_s, given_by)


def accepts_connections(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def committed_offsets(kafka: KafkaTarget, group: str, topic: str) -> dict[int, int]:
    """Offsets ``group`` has committed on ``topic``, by partition (empty: none yet)."""
    admin = make_admin(kafka)
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in offsets.items()
        if tp.topic == topic and meta.offset >= 0
    }
