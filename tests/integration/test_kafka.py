"""The local broker does what the service relies on: headers, group commits, transactions."""

from __future__ import annotations

from collections.abc import Callable

from kafka_extras import admin_for_tests

from fraudstream.service.kafka import DeliveryTracker, ensure_topics, make_consumer, make_producer
from fraudstream.service.kafka.protocols import Consumer, ConsumerRecord, TopicPartition


def _drain(consumer: Consumer, expected: int, timeout_s: float = 20.0) -> list[ConsumerRecord]:
    import time

    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(batch)
    return records


def test_produce_consume_round_trip_keeps_keys_values_and_headers(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("roundtrip")
    assert ensure_topics(kafka_bootstrap, {topic: 2}) == [topic]
    producer = make_producer(kafka_bootstrap, client_id="test")
    tracker = DeliveryTracker(producer)
    for i in range(10):
        tracker.send(
            topic,
            f"value-{i}".encode(),
            key=b"card-1",
            headers=[("source", b"test"), ("n", str(i).encode())],
        )
    assert tracker.flush(timeout_s=20) == 10
    producer.close()

    consumer = make_consumer(kafka_bootstrap, client_id="test", group_id=None)
    consumer.assign([TopicPartition(topic, p) for p in (0, 1)])
    records = _drain(consumer, 10)
    consumer.close()
    assert [r.value for r in records] == [f"value-{i}".encode() for i in range(10)]
    assert {r.key for r in records} == {b"card-1"}
    assert len({r.partition for r in records}) == 1  # one key, one partition, order kept
    assert records[3].headers == [("source", b"test"), ("n", b"3")]


def test_a_record_timestamp_far_ahead_is_refused_by_the_broker(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    # FRAUDSTREAM_MAX_EVENT_AHEAD_S measures a transaction's event time from its
    # record's timestamp; that bound holds against a producer whose own clock
    # is years ahead only because Kafka 4 refuses such timestamps by default
    # (log.message.timestamp.after.max.ms, one hour; README, Guarantees).
    import time

    from kafka.errors import InvalidTimestampError

    topic = unique_name("ahead")
    assert ensure_topics(kafka_bootstrap, {topic: 1}) == [topic]
    year_2099_ms = 4_070_908_800_000
    now_ms = int(time.time() * 1000)
    # One producer each: an idempotent producer refused a record is done for.
    for timestamp_ms, accepted in ((year_2099_ms, False), (now_ms, True)):
        producer = make_producer(kafka_bootstrap, client_id="test")
        try:
            sent = producer.send(topic, b"x", timestamp_ms=timestamp_ms)
            producer.flush(timeout=20)
            if accepted:
                assert sent.succeeded()
            else:
                assert isinstance(sent.exception, InvalidTimestampError)
        finally:
            producer.close()


def test_ensure_topics_is_idempotent(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("idem")
    assert ensure_topics(kafka_bootstrap, {topic: 1}) == [topic]
    assert ensure_topics(kafka_bootstrap, {topic: 1}) == []


def test_ensure_topics_applies_topic_configs_on_creation(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType

    from fraudstream.service.kafka import make_admin

    topic, plain = unique_name("append-time"), unique_name("plain")
    created = ensure_topics(
        kafka_bootstrap,
        {topic: 2, plain: 1},
        configs={topic: {"message.timestamp.type": "LogAppendTime"}},
    )
    assert sorted(created) == sorted([topic, plain])
    admin = make_admin(kafka_bootstrap)
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in (topic, plain)]
        )
    finally:
        admin.close()
    # Only configs that differ from the broker's defaults are listed.
    by_name = next(iter(described.values()))  # the one resource type asked for: topics
    modified = {name: by_name[name] for name in (topic, plain)}
    assert modified[topic]["message.timestamp.type"]["value"] == "LogAppendTime"
    assert "message.timestamp.type" not in modified[plain]


def test_group_commit_then_resume_from_committed_offset(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    topic, group = unique_name("resume"), unique_name("group")
    ensure_topics(kafka_bootstrap, {topic: 1})
    producer = make_producer(kafka_bootstrap, client_id="test")
    tracker = DeliveryTracker(producer)
    for i in range(6):
        tracker.send(topic, str(i).encode())
    tracker.flush(timeout_s=20)
    producer.close()

    first = make_consumer(kafka_bootstrap, client_id="t1", group_id=group, topics=[topic])
    records = _drain(first, 6)
    assert len(records) == 6
    # Commit only the first four: a restarted member must resume at offset 4.
    from kafka.structs import OffsetAndMetadata

    first.commit({TopicPartition(topic, 0): OffsetAndMetadata(4, "", -1)})
    first.close()

    second = make_consumer(kafka_bootstrap, client_id="t2", group_id=group, topics=[topic])
    resumed = _drain(second, 2)
    second.close()
    assert [r.value for r in resumed] == [b"4", b"5"]


def test_transaction_commit_is_visible_and_abort_is_not_to_read_committed(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("txn")
    ensure_topics(kafka_bootstrap, {topic: 1})
    producer = make_producer(
        kafka_bootstrap, client_id="test", transactional_id=unique_name("txid")
    )
    producer.init_transactions()
    producer.begin_transaction()
    producer.send(topic, b"committed")
    producer.commit_transaction()
    producer.begin_transaction()
    producer.send(topic, b"aborted")
    producer.flush()
    producer.abort_transaction()
    producer.begin_transaction()
    producer.send(topic, b"committed-2")
    producer.commit_transaction()
    producer.close()

    committed = make_consumer(kafka_bootstrap, client_id="rc", group_id=None, read_committed=True)
    committed.assign([TopicPartition(topic, 0)])
    seen = [r.value for r in _drain(committed, 2)]
    committed.close()
    assert seen == [b"committed", b"committed-2"]

    uncommitted = make_consumer(
        kafka_bootstrap, client_id="ru", group_id=None, read_committed=False
    )
    uncommitted.assign([TopicPartition(topic, 0)])
    assert b"aborted" in [r.value for r in _drain(uncommitted, 3)]
    uncommitted.close()


def test_first_join_assigns_every_partition_of_a_fresh_topic(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    """The race that left a learner with no partitions for minutes must not recur."""
    import time

    topic = unique_name("fresh")
    ensure_topics(kafka_bootstrap, {topic: 3})
    consumer = make_consumer(
        kafka_bootstrap, client_id="t", group_id=unique_name("g"), topics=[topic]
    )
    try:
        deadline = time.monotonic() + 20  # far below the 30 s metadata refresh
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200)
        assert consumer.assignment() == {TopicPartition(topic, p) for p in range(3)}
    finally:
        consumer.close()


def test_a_rebalance_that_outlives_the_poll_that_started_it_is_completed(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    """kafka-python 3.0 lost such a join when a metadata change caused it.

    The member stayed "rebalancing" and never fetched again (see ``make_consumer``).
    """
    import time

    from kafka.structs import MemberState

    from fraudstream.service.kafka import make_admin

    topic = unique_name("grows")
    ensure_topics(kafka_bootstrap, {topic: 1})
    consumer = make_consumer(
        kafka_bootstrap,
        client_id="test",
        group_id=unique_name("group"),
        topics=[topic],
        metadata_max_age_ms=300,  # sees the new partition within a third of a second
    )
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200)
        assert consumer.assignment() == {TopicPartition(topic, 0)}

        admin = admin_for_tests(make_admin(kafka_bootstrap))
        admin.create_partitions({topic: 2})
        admin.close()
        # The leader rejoins for the new partition, in a poll too short to finish the join...
        deadline = time.monotonic() + 30
        while consumer.group_metadata().state == MemberState.STABLE:
            assert time.monotonic() < deadline, "no rebalance after adding a partition"
            consumer.poll(timeout_ms=0)
            time.sleep(0.02)
        time.sleep(1.0)  # ...which finishes in the background, computing the new assignment.

        deadline = time.monotonic() + 20
        while len(consumer.assignment()) < 2 and time.monotonic() < deadline:
            consumer.poll(timeout_ms=500)
        assert consumer.assignment() == {TopicPartition(topic, 0), TopicPartition(topic, 1)}
        assert consumer.group_metadata().state == MemberState.STABLE
    finally:
        consumer.close(autocommit=False)


def test_offset_resets_are_noted_with_the_position_they_replace(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    """Kafka's "earliest" policy moving a position, both ways, on a real broker.

    Below the log start (records deleted): the records in between are skipped.
    Beyond the log end (a truncated partition, as after an unclean leader
    election): read again from the start, nothing skipped.
    """
    from fraudstream.service.kafka import make_admin
    from fraudstream.service.kafka.resets import OffsetReset, OffsetResets

    topic = unique_name("resets")
    assert ensure_topics(kafka_bootstrap, {topic: 1}) == [topic]
    producer = make_producer(kafka_bootstrap, client_id="test")
    tracker = DeliveryTracker(producer)
    for i in range(8):
        tracker.send(topic, f"v{i}".encode())
    assert tracker.flush(timeout_s=20) == 8
    producer.close()
    tp = TopicPartition(topic, 0)
    admin = admin_for_tests(make_admin(kafka_bootstrap))
    admin.delete_records({tp: 5})  # offsets 0-4 gone, as retention would
    admin.close()

    consumer = make_consumer(kafka_bootstrap, client_id="test-resets", group_id=None)
    resets = OffsetResets(consumer)
    assert resets.watching
    consumer.assign([tp])
    consumer.seek(tp, 2)  # a committed position whose records are deleted
    assert [r.offset for r in _drain(consumer, 3)] == [5, 6, 7]
    assert resets.take() == [OffsetReset(tp, 2, 5)]
    assert resets.take() == []

    consumer.seek(tp, 40)  # beyond the end
    assert [r.offset for r in _drain(consumer, 3)] == [5, 6, 7]
    noted = resets.take()
    assert noted == [OffsetReset(tp, 40, 5)] and noted[0].skipped == 0

    consumer.seek(tp, 6)  # a seek of our own is not a reset
    assert [r.offset for r in _drain(consumer, 2)] == [6, 7]
    assert resets.take() == []
    consumer.close()
