"""Typed views of the kafka-python calls only the tests make.

:mod:`fraudstream.service.kafka.protocols` names what the package calls of
kafka-python, nothing more. The tests also wait on one delivery
(``future.get``), describe a consumer group, add partitions to a topic and
delete records;
these protocols extend the package's with those calls, with kafka-python's own
parameter names, so that mypy checks the tests' calls too. A test holds them
against the installed kafka-python as it holds the package's
(``tests/unit/test_kafka_protocols.py``).
``pythonpath`` in ``pyproject.toml`` makes this module importable as ``kafka_extras``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, cast

from fraudstream.service.kafka.protocols import Admin, RecordMetadata, SendFuture


class DeliveryFuture(SendFuture, Protocol):
    """A sent record's delivery that can be waited for (``FutureRecordMetadata``)."""

    def get(self, timeout: float | None = None) -> RecordMetadata:
        """Where the record was written; raises why it was not (waits up to ``timeout`` s)."""
        ...


class AdminForTests(Admin, Protocol):
    """The package's admin client, and the group and partition calls of the tests."""

    def describe_groups(
        self,
        group_ids: Sequence[str],
        group_coordinator_id: int | None = None,
        include_authorized_operations: bool = False,
    ) -> dict[str, dict[str, Any]]:
        """State and members of each group: group id -> the describe response as a dict."""
        ...

    def create_partitions(
        self,
        topic_partitions: Mapping[str, int],
        timeout_ms: int | None = None,
        validate_only: bool = False,
    ) -> Any:
        """Grow each topic to the given total number of partitions."""
        ...

    def delete_records(
        self,
        records_to_delete: Mapping[Any, int],
        timeout_ms: int | None = None,
        partition_leader_id: int | None = None,
    ) -> Any:
        """Delete every record below the given offset of each partition (``DeleteRecords``)."""
        ...


def delivered(future: SendFuture, timeout_s: float) -> RecordMetadata:
    """Wait for a sent record's delivery: where it was written, or raise why it was not."""
    return cast(DeliveryFuture, future).get(timeout=timeout_s)


def admin_for_tests(admin: Admin) -> AdminForTests:
    """The same admin client, seen with the calls only tests make."""
    return cast(AdminForTests, admin)
