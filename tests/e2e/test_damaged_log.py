"""A record batch damaged in the broker's log is set aside as one dead letter; the rest goes on.

A broker checks each batch's CRC when it is written; damage afterwards (a
disk, a copied log) shows only to consumers, at every fetch from that batch:
kafka-python raises ``CorruptRecordError`` at every poll, and a consumer that
does not seek past the batch makes no progress on any partition it reads.

On a broker of the module's own: transactions and labels are written one
batch each, the broker is stopped, one byte of one transaction and of one
label is flipped in the log segments, and the broker is started again. The
service scores every other transaction, learns every other label, puts each
damaged batch in its dead-letter topic (its bytes, the error, the partition
and offset), commits past it and stays ready; what a state rebuild reads
skips the damaged batch and counts it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from broker_log import flip_a_byte, write_one_batch_each
from conftest import AppUnderTest
from kafka.admin import KafkaAdminClient, NewTopic

from fraudstream.devstack import KafkaServer
from fraudstream.service.kafka import make_consumer
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.settings import DeliveryGuarantee, Settings
from fraudstream.service.state import read_since

#: Transactions (and labels) per partition; the damaged ones are in partition 0.
PER_PARTITION = 12
DAMAGED = 5  # the index, in partition 0, of the damaged transaction and label


def _stream(
    make_transaction: Callable[..., tuple[bytes, bytes]],
) -> tuple[list[tuple[int, bytes, bytes]], list[tuple[int, bytes, bytes]]]:
    """``(partition, key, value)`` of each transaction ``d{p}-{i}`` (a day ago) and of its label."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    transactions, labels = [], []
    for p in (0, 1):
        for i in range(PER_PARTITION):
            at = start + timedelta(minutes=i)
            key, value = make_transaction(f"d{p}-{i}", f"c{p}-{i % 3}", "T1", 10.0 + i, at)
            transactions.append((p, key, value))
            label = {
                "transaction_id": f"d{p}-{i}",
                "is_fraud": i % 4 == 0,
                "labeled_at": (at + timedelta(hours=1)).isoformat(),
                "source": "chargeback",
            }
            labels.append((p, key, orjson.dumps(label)))
    return transactions, labels


def _headers(record: ConsumerRecord) -> dict[str, bytes]:
    return dict(record.headers)


@pytest.mark.parametrize("guarantee", list(DeliveryGuarantee))
def test_a_damaged_batch_is_dead_lettered_and_the_partition_goes_on(
    guarantee: DeliveryGuarantee,
    own_kafka: KafkaServer,
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    group_lag: Callable[[Settings], int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    bootstrap = own_kafka.bootstrap_servers
    settings = make_settings(bootstrap_servers=bootstrap, guarantee=guarantee, publish_scores=True)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            [NewTopic(t, 2, 1) for t in (settings.topic_transactions, settings.topic_labels)]
        )
    finally:
        admin.close()
    transactions, labels = _stream(make_transaction)
    tx_offsets = write_one_batch_each(bootstrap, settings.topic_transactions, transactions)
    label_offsets = write_one_batch_each(bootstrap, settings.topic_labels, labels)
    damaged_tx, damaged_label = transactions[DAMAGED][2], labels[DAMAGED][2]

    own_kafka.stop()  # a clean stop: the broker does not recover (re-read) its logs at start
    flip_a_byte(own_kafka.data_dir / "logs", settings.topic_transactions, damaged_tx)
    flip_a_byte(own_kafka.data_dir / "logs", settings.topic_labels, damaged_label)
    own_kafka.start(timeout_s=120)

    read_committed = guarantee is DeliveryGuarantee.EXACTLY_ONCE
    with caplog.at_level(logging.ERROR, logger="fraudstream.service.loop"):
        app = run_app(settings)
        scores = consume(
            settings,
            settings.topic_scores,
            at_least=2 * PER_PARTITION - 1,
            timeout_s=120,
            read_committed=read_committed,
        )
        wait_for(lambda: group_lag(settings) == 0, 60, "the scorer to commit past the damage")
        wait_for(
            lambda: app.metrics.labels_learnt._value.get() == 2 * PER_PARTITION - 1,
            120,
            "the learner to learn every readable label",
        )
    scored = sorted(orjson.loads(r.value or b"")["transaction_id"] for r in scores)
    assert scored == sorted(
        f"d{p}-{i}" for p in (0, 1) for i in range(PER_PARTITION) if (p, i) != (0, DAMAGED)
    )

    for topic, offset, value in (
        (settings.topic_transactions_dlq, tx_offsets[damaged_tx], damaged_tx),
        (settings.topic_labels_dlq, label_offsets[damaged_label], damaged_label),
    ):
        (letter,) = consume(settings, topic, at_least=1, settle_s=2, read_committed=read_committed)
        headers = _headers(letter)
        assert headers["fraudstream.error.class"] == b"UnreadableRecordsError"
        assert headers["fraudstream.source.partition"] == b"0"
        assert headers["fraudstream.source.offset"] == str(offset).encode()
        assert (
            f"offsets {offset}..{offset} cannot be read".encode()
            in headers["fraudstream.error.message"]
        )
        # The batch's bytes, damage included: all of the value but the flipped byte.
        half = len(value) // 2
        assert value[:half] in (letter.value or b"") and value[half + 1 :] in (letter.value or b"")
    said = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(said) == 2, said
    # Ready (a loop inside one call for over 5 s reports not ready for that while).
    wait_for(lambda: app.ready()[0], 30, "the scorer to be ready")
    assert not hasattr(app, "run_error")

    # What `fraudstream state rebuild` reads: every record but the damaged one, which it counts.
    unreadable: list[int] = []
    consumer = make_consumer(settings, client_id="test-rebuild", group_id=None)
    try:
        read = read_since(consumer, settings.topic_transactions, 0, 100, unreadable.append)
        values = [r.value for batch in read for r in batch]
    finally:
        consumer.close()
    assert sorted(values) == sorted(v for _, _, v in transactions if v != damaged_tx)
    assert unreadable == [1]
