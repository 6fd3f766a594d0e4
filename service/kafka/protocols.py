"""Typed views of the kafka-python surface fraudstream uses.

kafka-python ships no type information, so to mypy every client, record and
future it returns is ``Any``, and a misspelt method or a ``None`` taken for an
offset passes unchecked. The protocols here name only what the project calls,
with kafka-python's own parameter names and the types its docstrings promise;
the client builders of :mod:`fraudstream.service.kafka.clients` return them.
A unit test holds each protocol against the installed kafka-python
(``tests/unit/test_kafka_protocols.py``): a method missing there, or a
parameter it does not take, fails it.

The value types (``TopicPartition``, ``OffsetAndMetadata``, ``MemberState``,
``ConsumerRebalanceListener``) are kafka-python's own at run time; mypy sees
typed declarations of the same shape instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

if TYPE_CHECKING:

    class TopicPartition(NamedTuple):
        """A topic and one of its partitions."""

        topic: str
        partition: int

    class OffsetAndMetadata(NamedTuple):
        """An offset to commit, with its metadata and leader epoch."""

        offset: int
        metadata: str = ""
        leader_epoch: int = -1

    class OffsetAndTimestamp(NamedTuple):
        """The first offset at or after a time, and that record's timestamp."""

        offset: int
        timestamp: int
        leader_epoch: int | None

    class ConsumerGroupMetadata(NamedTuple):
        """A consumer's group membership (for ``send_offsets_to_transaction``)."""

        group_id: str | None
        generation_id: int
        member_id: str
        group_instance_id: str | None
        state: str

    class MemberState:
        """A consumer's membership in its group, as kafka-python names it."""

        UNJOINED: Final = "<unjoined>"
        REBALANCING: Final = "<rebalancing>"
        STABLE: Final = "<stable>"

    class ConsumerRebalanceListener(ABC):
        """Called by the consumer when partitions are taken away and handed out."""

        @abstractmethod
        def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
            """Partitions this member gives up, before the rebalance."""

        @abstractmethod
        def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
            """Partitions this member owns after the rebalance."""

else:
    from kafka import ConsumerRebalanceListener
    from kafka.structs import (
        ConsumerGroupMetadata,
        MemberState,
        OffsetAndMetadata,
        OffsetAndTimestamp,
        TopicPartition,
    )

__all__ = [
    "Admin",
    "CommitFuture",
    "Consumer",
    "ConsumerGroupMetadata",
    "ConsumerRebalanceListener",
    "ConsumerRecord",
    "MemberState",
    "OffsetAndMetadata",
    "OffsetAndTimestamp",
    "Producer",
    "RecordMetadata",
    "SendFuture",
    "TopicPartition",
]


class ConsumerRecord(Protocol):
    """One record a poll returned (kafka-python's ``ConsumerRecord``)."""

    topic: str
    partition: int
    offset: int
    #: Milliseconds since the epoch.
    timestamp: int
    #: 0: set by the producer, 1: by the broker (log append time).
    timestamp_type: int
    key: bytes | None
    #: ``None``: a tombstone.
    value: bytes | None
    headers: list[tuple[str, bytes]]


class RecordMetadata(Protocol):
    """Where a delivered record was written."""

    @property
    def topic(self) -> str:
        """The topic written to."""
        ...

    @property
    def partition(self) -> int:
        """The partition written to."""
        ...

    @property
    def offset(self) -> int:
        """The record's offset there."""
        ...


class CommitFuture(Protocol):
    """The answer to an asynchronous request (``commit_async``), once it comes."""

    @property
    def is_done(self) -> bool:
        """Whether the answer came."""
        ...

    @property
    def exception(self) -> BaseException | None:
        """Why it failed (once done and failed)."""
        ...

    def succeeded(self) -> bool:
        """Whether the request is done and succeeded."""
        ...

    def failed(self) -> bool:
        """Whether the request is done and failed."""
        ...


class SendFuture(CommitFuture, Protocol):
    """The delivery of one sent record; its value is where the record was written."""

    @property
    def value(self) -> RecordMetadata:
        """Where the record was written (once done and succeeded)."""
        ...


class Consumer(Protocol):
    """The part of ``kafka.KafkaConsumer`` fraudstream uses."""

    def __iter__(self) -> Iterator[ConsumerRecord]:
        """Records one by one, polling as needed (blocks; for tools only)."""
        ...

    def poll(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Records fetched since the last poll, by partition."""
        ...

    def subscribe(
        self,
        topics: Sequence[str] = (),
        pattern: str | None = None,
        listener: ConsumerRebalanceListener | None = None,
    ) -> None:
        """Join the group for ``topics``."""
        ...

    def topics(self) -> set[str]:
        """Topics the cluster has (a metadata request)."""
        ...

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        """Partitions of ``topic`` (``None`` or empty when unknown)."""
        ...

    def assign(self, partitions: Sequence[TopicPartition]) -> None:
        """Read these partitions, without a group."""
        ...

    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer reads now."""
        ...

    def group_metadata(self) -> ConsumerGroupMetadata:
        """The consumer's group membership."""
        ...

    def position(self, partition: TopicPartition, timeout_ms: int | None = None) -> int | None:
        """The offset of the next record to fetch (``None``: not known within the timeout)."""
        ...

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Fetch ``partition`` from ``offset`` on."""
        ...

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        """Fetch the partitions (default: all assigned) from their first offset."""
        ...

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        """Fetch the partitions (default: all assigned) from their end."""
        ...

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop fetching these partitions (the membership stays)."""
        ...

    def resume(self, *partitions: TopicPartition) -> None:
        """Fetch these paused partitions again."""
        ...

    def paused(self) -> set[TopicPartition]:
        """The partitions paused now."""
        ...

    def beginning_offsets(
        self, partitions: Sequence[TopicPartition], timeout_ms: int | None = None
    ) -> dict[TopicPartition, int]:
        """First offset the log still holds, per partition."""
        ...

    def end_offsets(
        self, partitions: Sequence[TopicPartition], timeout_ms: int | None = None
    ) -> dict[TopicPartition, int]:
        """Offset after the last record, per partition."""
        ...

    def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int], timeout_ms: int | None = None
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """First offset at or after each time (``None``: no such record)."""
        ...

    def committed(
        self, partition: TopicPartition, metadata: bool = False, timeout_ms: int | None = None
    ) -> int | None:
        """The group's committed offset of ``partition`` (``None``: none)."""
        ...

    def commit(
        self,
        offsets: Mapping[TopicPartition, OffsetAndMetadata] | None = None,
        timeout_ms: int | None = None,
    ) -> None:
        """Commit offsets to the group, waiting for the coordinator."""
        ...

    def commit_async(
        self,
        offsets: Mapping[TopicPartition, OffsetAndMetadata] | None = None,
        callback: Callable[[Mapping[TopicPartition, OffsetAndMetadata], Any], None] | None = None,
    ) -> CommitFuture:
        """Send a commit request without waiting for its answer."""
        ...

    def close(self, autocommit: bool = True, timeout_ms: int | None = None) -> None:
        """Leave the group and close the connections."""
        ...


class Producer(Protocol):
    """The part of ``kafka.KafkaProducer`` fraudstream uses."""

    def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> SendFuture:
        """Hand one record over (asynchronous)."""
        ...

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record handed over is sent (or failed)."""
        ...

    def partitions_for(self, topic: str) -> set[int]:
        """Partitions of ``topic`` (fetches metadata)."""
        ...

    def init_transactions(self) -> None:
        """Register the transactional id, fencing an older producer with it."""
        ...

    def begin_transaction(self) -> None:
        """Start a transaction."""
        ...

    def send_offsets_to_transaction(
        self,
        offsets: Mapping[TopicPartition, OffsetAndMetadata],
        group_metadata: ConsumerGroupMetadata,
    ) -> None:
        """Commit consumer offsets as part of the open transaction."""
        ...

    def commit_transaction(self) -> None:
        """Make the transaction's records and offsets visible together."""
        ...

    def abort_transaction(self) -> None:
        """Discard the transaction's records and offsets."""
        ...

    def close(self, timeout: float | None = None) -> None:
        """Send what is pending (up to ``timeout``) and close."""
        ...


class Admin(Protocol):
    """The part of ``kafka.KafkaAdminClient`` fraudstream uses."""

    def list_topics(self) -> list[str]:
        """Names of the cluster's topics."""
        ...

    def describe_topics(self, topics: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Partitions, leaders and errors of ``topics``."""
        ...

    def create_topics(self, new_topics: Iterable[Any], timeout_ms: int | None = None) -> Any:
        """Create topics (``kafka.admin.NewTopic``)."""
        ...

    def list_group_offsets(
        self, group_specs: Mapping[str, Any]
    ) -> dict[str, dict[TopicPartition, OffsetAndMetadata]]:
        """Committed offsets of each group."""
        ...

    def describe_cluster(self) -> dict[str, Any]:
        """Brokers and controller of the cluster."""
        ...

    def describe_configs(
        self,
        config_resources: Sequence[Any],
        include_synonyms: bool = False,
        config_filter: str = "modified",
    ) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
        """Configs of resources (``kafka.admin.ConfigResource``): type -> name -> key -> data."""
        ...

    def delete_records(
        self,
        records_to_delete: Mapping[TopicPartition, int],
        timeout_ms: int | None = None,
        partition_leader_id: int | None = None,
    ) -> dict[TopicPartition, Any]:
        """Delete the records of each partition below the given offset."""
        ...

    def list_groups(
        self,
        broker_ids: Sequence[int] | None = None,
        states_filter: Sequence[str] | None = None,
        types_filter: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Every consumer group of the cluster (dicts with ``group_id``)."""
        ...

    def delete_groups(
        self, group_ids: Sequence[str], group_coordinator_id: int | None = None
    ) -> dict[str, str]:
        """Delete groups: group id -> ``"OK"`` or the error's class name."""
        ...

    def close(self) -> None:
        """Close the connections."""
        ...
