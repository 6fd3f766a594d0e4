"""The checkpoint runs the commit order itself: flush and confirm every delivery, then commit.

The consumer and producer are doubles with ``spec_set`` on kafka-python's own
classes, so a call the real clients do not have fails here too.
"""

from __future__ import annotations

from unittest.mock import MagicMock

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaTimeoutError
from kafka.future import Future
from kafka.producer.future import RecordMetadata
from kafka.structs import OffsetAndMetadata

from fraudstream.service.checkpoint import Checkpoint, InvalidStoredOffsetError, Span
from fraudstream.service.kafka import DeliveryError
from fraudstream.service.pipeline import Outgoing

TP0 = TopicPartition("transactions", 0)
TP1 = TopicPartition("transactions", 1)
ALERT = Outgoing("alerts", b"c1", b'{"alert_id": "a1"}')
SCORE = Outgoing("scores", b"c1", b'{"transaction_id": "t1"}')


def _delivered() -> Future:
    return Future().success(
        RecordMetadata("alerts", 0, TopicPartition("alerts", 0), 0, 0, None, 1, 1, 0)
    )


def _clients() -> tuple[MagicMock, MagicMock, MagicMock]:
    """Consumer and producer doubles, and one mock that records the calls of both in order."""
    consumer = MagicMock(spec_set=KafkaConsumer)
    producer = MagicMock(spec_set=KafkaProducer)
    producer.send.side_effect = lambda *args, **kwargs: _delivered()
    consumer.commit_async.side_effect = lambda *args, **kwargs: _delivered()
    calls = MagicMock()
    calls.attach_mock(consumer, "consumer")
    calls.attach_mock(producer, "producer")
    return consumer, producer, calls


def _names(calls: MagicMock) -> list[str]:
    return [name for name, _, _ in calls.mock_calls]


def _offsets(**by_partition: int) -> dict[TopicPartition, OffsetAndMetadata]:
    return {
        TopicPartition("transactions", int(p[1:])): OffsetAndMetadata(o, "", -1)
        for p, o in by_partition.items()
    }


def test_produce_flush_confirm_then_commit_in_that_order() -> None:
    consumer, producer, calls = _clients()
    checkpoint = Checkpoint(consumer, producer)
    checkpoint.produce([ALERT, SCORE])
    checkpoint.track({TP0: Span(0, 9), TP1: Span(5, 7)})
    assert checkpoint.pending() == {TP0: 10, TP1: 8}
    assert producer.flush.call_count == 0 and consumer.commit.call_count == 0  # nothing yet

    committed = checkpoint.commit()

    assert committed == {TP0: 10, TP1: 8}
    assert _names(calls) == ["producer.send", "producer.send", "producer.flush", "consumer.commit"]
    consumer.commit.assert_called_once_with(_offsets(p0=10, p1=8), timeout_ms=30_000)
    assert checkpoint.pending() == {}
    # The next batch continues from there; only what changed is committed asynchronously.
    checkpoint.track({TP0: Span(10, 19)})
    assert checkpoint.commit(wait=False) == {TP0: 20}
    consumer.commit_async.assert_called_once()
    assert consumer.commit_async.call_args.args[0] == _offsets(p0=20)


def test_a_failed_delivery_commits_nothing() -> None:
    consumer, producer, _ = _clients()
    producer.send.side_effect = lambda *args, **kwargs: Future().failure(
        KafkaTimeoutError("broker gone")
    )
    checkpoint = Checkpoint(consumer, producer)
    checkpoint.produce([ALERT])
    checkpoint.track({TP0: Span(0, 9)})

    with pytest.raises(DeliveryError, match="broker gone"):
        checkpoint.commit()

    consumer.commit.assert_not_called()
    consumer.commit_async.assert_not_called()
    assert checkpoint.pending() == {TP0: 10}  # still only tracked, never committed
    assert checkpoint.abort() == {TP0: 0}  # replay the batch from its first record
    assert checkpoint.pending() == {}


def test_a_delivery_not_confirmed_within_the_flush_timeout_commits_nothing() -> None:
    consumer, producer, _ = _clients()
    producer.send.side_effect = lambda *args, **kwargs: Future()  # never completes
    checkpoint = Checkpoint(consumer, producer, flush_timeout_s=0.01)
    checkpoint.produce([ALERT])
    checkpoint.track({TP0: Span(0, 0)})
    with pytest.raises(DeliveryError, match="not delivered"):
        checkpoint.commit()
    producer.flush.assert_called_once_with(timeout=0.01)
    consumer.commit.assert_not_called()


def test_an_offset_going_backwards_raises() -> None:
    consumer, producer, _ = _clients()
    checkpoint = Checkpoint(consumer, producer)
    checkpoint.track({TP0: Span(0, 9)})
    with pytest.raises(InvalidStoredOffsetError, match=r"transactions\[0\].*from 10 to 5"):
        checkpoint.track({TP0: Span(5, 12)})
    checkpoint.commit()
    with pytest.raises(InvalidStoredOffsetError):
        checkpoint.track({TP0: Span(3, 3)})  # before what was committed
    with pytest.raises(InvalidStoredOffsetError):
        checkpoint.track({TP1: Span(7, 6)})  # a span that ends before it starts
    consumer.commit.assert_called_once()


def test_abort_forgets_the_work_in_hand_and_says_where_to_resume() -> None:
    consumer, producer, _ = _clients()
    checkpoint = Checkpoint(consumer, producer)
    checkpoint.track({TP0: Span(0, 9)})
    checkpoint.commit()
    checkpoint.track({TP0: Span(10, 19), TP1: Span(3, 4)})
    checkpoint.track({TP0: Span(20, 29)})

    assert checkpoint.abort() == {TP0: 10, TP1: 3}
    assert checkpoint.pending() == {}
    # The replay tracks the same records again: not "backwards".
    checkpoint.track({TP0: Span(10, 29), TP1: Span(3, 4)})
    assert checkpoint.commit() == {TP0: 30, TP1: 5}


def test_exactly_once_commits_offsets_inside_the_transaction() -> None:
    consumer, producer, calls = _clients()
    consumer.group_metadata.return_value = "group-metadata"
    checkpoint = Checkpoint(consumer, producer, exactly_once=True)
    checkpoint.produce([ALERT])
    checkpoint.track({TP0: Span(0, 4)})
    checkpoint.commit()

    assert _names(calls) == [
        "producer.begin_transaction",
        "producer.send",
        "producer.flush",
        "consumer.group_metadata",
        "producer.send_offsets_to_transaction",
        "producer.commit_transaction",
    ]
    producer.send_offsets_to_transaction.assert_called_once_with(_offsets(p0=5), "group-metadata")
    consumer.commit.assert_not_called()
    consumer.commit_async.assert_not_called()
    # A batch that produced nothing still commits its offsets in a transaction.
    checkpoint.track({TP0: Span(5, 6)})
    checkpoint.commit(wait=False)
    assert producer.begin_transaction.call_count == 2
    assert producer.commit_transaction.call_count == 2
    # Nothing to do: no empty transaction.
    checkpoint.commit()
    assert producer.begin_transaction.call_count == 2


def test_exactly_once_abort_aborts_the_transaction_and_commits_nothing() -> None:
    consumer, producer, _ = _clients()
    checkpoint = Checkpoint(consumer, producer, exactly_once=True)
    checkpoint.produce([ALERT, SCORE])
    checkpoint.track({TP0: Span(0, 4)})

    assert checkpoint.abort() == {TP0: 0}

    producer.abort_transaction.assert_called_once_with()
    producer.send_offsets_to_transaction.assert_not_called()
    producer.commit_transaction.assert_not_called()
    # The replay opens a new transaction.
    checkpoint.produce([ALERT])
    checkpoint.track({TP0: Span(0, 4)})
    checkpoint.commit()
    assert producer.begin_transaction.call_count == 2
    producer.commit_transaction.assert_called_once_with()


def test_forget_after_revocation_drops_the_partitions() -> None:
    consumer, producer, _ = _clients()
    checkpoint = Checkpoint(consumer, producer)
    checkpoint.track({TP0: Span(0, 9), TP1: Span(0, 9)})
    checkpoint.commit()
    checkpoint.track({TP0: Span(10, 11), TP1: Span(10, 11)})

    checkpoint.forget([TP1])

    assert checkpoint.pending() == {TP0: 12}
    assert checkpoint.commit() == {TP0: 12}
    assert consumer.commit.call_args.args[0] == _offsets(p0=12)
    # Assigned again later, the partition starts from wherever the group committed.
    checkpoint.track({TP1: Span(4, 5)})
    assert checkpoint.pending() == {TP1: 6}


def test_at_most_one_asynchronous_commit_in_flight_later_offsets_coalesced() -> None:
    consumer, producer, _ = _clients()
    answers: list[Future] = []

    def commit_async(*args: object, **kwargs: object) -> Future:
        answers.append(Future())
        return answers[-1]

    consumer.commit_async.side_effect = commit_async
    checkpoint = Checkpoint(consumer, producer)
    # The first commit waits for the coordinator (it may still be loading after a start).
    checkpoint.track({TP0: Span(0, 9)})
    checkpoint.commit(wait=False)
    consumer.commit.assert_called_once_with(_offsets(p0=10), timeout_ms=30_000)

    checkpoint.track({TP0: Span(10, 19)})
    assert checkpoint.commit(wait=False) == {TP0: 20}
    for first in range(20, 50, 10):  # three more batches while the request is out
        checkpoint.track({TP0: Span(first, first + 9), TP1: Span(first, first)})
        assert checkpoint.commit(wait=False) == {}
    assert consumer.commit_async.call_count == 1

    answers[0].success(None)
    assert checkpoint.commit(wait=False) == {TP0: 50, TP1: 41}  # all three in one request
    assert consumer.commit_async.call_args.args[0] == _offsets(p0=50, p1=41)
    answers[1].success(None)
    assert checkpoint.pending() == {}
    assert checkpoint.commit(wait=False) == {}  # idle: nothing to send
    assert consumer.commit_async.call_count == 2


def test_a_refused_asynchronous_commit_is_sent_again_synchronously() -> None:
    consumer, producer, _ = _clients()
    checkpoint = Checkpoint(consumer, producer)
    checkpoint.track({TP0: Span(0, 9)})
    checkpoint.commit(wait=False)  # synchronous, the first
    consumer.commit_async.side_effect = lambda *a, **k: Future().failure(
        KafkaTimeoutError("coordinator moved")
    )
    checkpoint.track({TP0: Span(10, 19)})
    checkpoint.commit(wait=False)
    assert checkpoint.pending() == {TP0: 20}  # refused: not taken for committed

    checkpoint.track({TP0: Span(20, 29)})
    assert checkpoint.commit(wait=False) == {TP0: 30}
    assert consumer.commit.call_count == 2
    assert consumer.commit.call_args.args[0] == _offsets(p0=30)
    assert checkpoint.pending() == {}


def test_a_transaction_that_fails_to_commit_is_replayed_from_its_first_record() -> None:
    from kafka.errors import CommitFailedError

    consumer, producer, _ = _clients()
    checkpoint = Checkpoint(consumer, producer, exactly_once=True)
    checkpoint.produce([ALERT])
    checkpoint.track({TP0: Span(0, 9)})
    checkpoint.commit()
    # The member was fenced (the broker restarted and forgot it): the offsets are refused.
    producer.send_offsets_to_transaction.side_effect = CommitFailedError("UnknownMemberIdError")
    checkpoint.produce([ALERT])
    checkpoint.track({TP0: Span(10, 19)})
    with pytest.raises(CommitFailedError):
        checkpoint.commit()

    assert checkpoint.abort() == {TP0: 10}  # not taken for done: its records were aborted
    producer.abort_transaction.assert_called_once_with()
    producer.send_offsets_to_transaction.side_effect = None
    checkpoint.produce([ALERT])
    checkpoint.track({TP0: Span(10, 19)})
    assert checkpoint.commit() == {TP0: 20}


def test_a_producer_that_cannot_abort_stops_the_scorer() -> None:
    from kafka.errors import KafkaError

    from fraudstream.service.checkpoint import ProducerFailedError

    consumer, producer, _ = _clients()
    producer.abort_transaction.side_effect = KafkaError("in an error state: ProducerFencedError")
    checkpoint = Checkpoint(consumer, producer, exactly_once=True)
    checkpoint.produce([ALERT])
    with pytest.raises(ProducerFailedError, match="cannot go on"):
        checkpoint.abort()


def test_an_idempotent_producer_in_a_fatal_state_stops_the_scorer() -> None:
    """kafka-python never leaves that state: retrying would stall the partition for ever."""
    from kafka.errors import MessageSizeTooLargeError
    from kafka.producer.transaction_manager import TransactionManager

    from fraudstream.service.checkpoint import ProducerFailedError

    consumer, _, _ = _clients()
    producer = MagicMock(spec=KafkaProducer)
    manager = TransactionManager(transactional_id=None, transaction_timeout_ms=60_000)
    producer._transaction_manager = manager
    checkpoint = Checkpoint(consumer, producer)
    checkpoint.track({TP0: Span(0, 9)})
    assert checkpoint.abort() == {TP0: 0}  # not fatal: the batch is replayed
    manager.transition_to_fatal_error(MessageSizeTooLargeError("the request is too large"))
    checkpoint.track({TP0: Span(0, 9)})
    with pytest.raises(ProducerFailedError, match=r"MessageSizeTooLargeError.*restart"):
        checkpoint.abort()
    consumer.commit.assert_not_called()


def test_start_over_commits_positions_behind_what_was_done_and_forgets_the_work() -> None:
    """A topic created again: its new offsets are below the old ones, and right."""
    consumer, _, _ = _clients()
    checkpoint = Checkpoint(consumer, _clients()[1])
    checkpoint.track({TP0: Span(0, 29), TP1: Span(0, 4)})
    checkpoint.commit()
    checkpoint.track({TP0: Span(30, 39)})
    checkpoint.start_over({TP0: 0})
    consumer.commit.assert_called_with(_offsets(p0=0), timeout_ms=30_000)
    assert checkpoint.pending() == {}
    checkpoint.track({TP0: Span(0, 9)})  # read again from the start: not "backwards"
    assert checkpoint.commit() == {TP0: 10}


def test_confirm_commits_the_positions_when_idle_and_refuses_with_work_in_hand() -> None:
    consumer, producer, _ = _clients()
    checkpoint = Checkpoint(consumer, producer)
    checkpoint.confirm({TP0: 7, TP1: 0})
    consumer.commit.assert_called_once_with(_offsets(p0=7, p1=0), timeout_ms=30_000)
    checkpoint.track({TP0: Span(7, 9)})
    with pytest.raises(InvalidStoredOffsetError, match="work in hand"):
        checkpoint.confirm({TP0: 10})
    checkpoint.commit()
    with pytest.raises(InvalidStoredOffsetError, match="from 10 to 8"):
        checkpoint.confirm({TP0: 8})

    # Exactly-once too: no transaction (nothing to produce), a group commit with a timeout.
    eos_consumer, eos_producer, calls = _clients()
    Checkpoint(eos_consumer, eos_producer, exactly_once=True).confirm({TP0: 3})
    assert _names(calls) == ["consumer.commit"]
