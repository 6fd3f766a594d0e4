"""The typed kafka-python protocols hold against the installed kafka-python.

mypy trusts :mod:`fraudstream.service.kafka.protocols` blindly (kafka-python has
no types), so these tests are what ties the two: every member a protocol names
exists on kafka-python's class, and every parameter it declares is one the real
method takes, in the same position.
"""

from __future__ import annotations

import inspect
from typing import Any

import kafka_extras
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.future import Future
from kafka.producer.future import FutureRecordMetadata, RecordMetadata
from kafka.structs import (
    ConsumerGroupMetadata,
    MemberState,
    OffsetAndMetadata,
    OffsetAndTimestamp,
    TopicPartition,
)

from fraudstream.service.kafka import protocols

CLIENTS = [
    (protocols.Consumer, KafkaConsumer),
    (protocols.Producer, KafkaProducer),
    (protocols.Admin, KafkaAdminClient),
]
#: What only the tests call (``tests/kafka_extras.py``), beyond the package's protocols.
TESTS_CALLS = [
    (kafka_extras.AdminForTests, KafkaAdminClient),
    (kafka_extras.DeliveryFuture, FutureRecordMetadata),
]


def _methods(protocol: type) -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(protocol).items()
        if inspect.isfunction(value) and (not name.startswith("_") or name == "__iter__")
    }


def _parameters(function: Any) -> list[inspect.Parameter]:
    return list(inspect.signature(function).parameters.values())[1:]  # without self


@pytest.mark.parametrize(("protocol", "real"), CLIENTS + TESTS_CALLS, ids=lambda c: c.__name__)
def test_every_method_of_a_client_protocol_exists_and_takes_its_parameters(
    protocol: type, real: type
) -> None:
    methods = _methods(protocol)
    assert methods, f"{protocol.__name__} declares no methods"
    for name, declared in methods.items():
        assert callable(getattr(real, name, None)), f"{real.__name__} has no {name}"
        real_params = _parameters(getattr(real, name))
        by_name = {p.name: p for p in real_params}
        real_positional = [
            p.name for p in real_params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        ]
        declared_params = _parameters(declared)
        positional = [
            p.name for p in declared_params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        ]
        assert real_positional[: len(positional)] == positional, (
            f"{real.__name__}.{name}{inspect.signature(getattr(real, name))} "
            f"does not start with {positional}"
        )
        for param in declared_params:
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                assert any(p.kind is param.kind for p in real_params), f"{name}(*{param.name})"
            else:
                assert param.name in by_name, f"{real.__name__}.{name} takes no {param.name}"
            if param.default is not inspect.Parameter.empty:
                assert by_name[param.name].default == param.default, (
                    f"{real.__name__}.{name}: default of {param.name} differs"
                )


def test_a_consumer_record_and_record_metadata_have_the_declared_fields() -> None:
    assert set(protocols.ConsumerRecord.__annotations__) <= set(ConsumerRecord._fields)
    declared = {n for n, v in vars(protocols.RecordMetadata).items() if isinstance(v, property)}
    assert declared == {"topic", "partition", "offset"}
    assert declared <= set(RecordMetadata._fields)


def test_futures_have_the_declared_members() -> None:
    future = Future()
    for protocol in (protocols.CommitFuture, protocols.SendFuture):
        for name, value in vars(protocol).items():
            if isinstance(value, property) or inspect.isfunction(value):
                assert hasattr(future, name), f"kafka's Future has no {name}"
    assert issubclass(FutureRecordMetadata, Future)
    assert future.is_done is False and future.exception is None
    future.success(RecordMetadata("t", 0, None, 7, -1, None, 0, 0, 0))
    assert future.succeeded() and not future.failed()
    assert (future.value.topic, future.value.partition, future.value.offset) == ("t", 0, 7)


def test_value_types_are_kafka_pythons_own_at_run_time_with_the_declared_shape() -> None:
    assert protocols.TopicPartition is TopicPartition
    assert protocols.OffsetAndMetadata is OffsetAndMetadata
    assert protocols.MemberState is MemberState
    # The shapes `protocols` declares for mypy under TYPE_CHECKING:
    assert TopicPartition._fields == ("topic", "partition")
    assert OffsetAndMetadata._fields == ("offset", "metadata", "leader_epoch")
    assert OffsetAndTimestamp._fields == ("offset", "timestamp", "leader_epoch")
    assert ConsumerGroupMetadata._fields == (
        "group_id",
        "generation_id",
        "member_id",
        "group_instance_id",
        "state",
    )
    states = (MemberState.UNJOINED, MemberState.REBALANCING, MemberState.STABLE)
    assert states == ("<unjoined>", "<rebalancing>", "<stable>")
