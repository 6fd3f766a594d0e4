"""`produce` when the broker dies part-way: a bounded wait, then one line saying what was sent.

The broker is this module's own (``own_kafka``): the test kills it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from producer_cli import producers_cli

from fraudstream.devstack import KafkaServer
from fraudstream.producers import sink
from fraudstream.service.kafka import make_consumer
from fraudstream.service.kafka.protocols import TopicPartition
from fraudstream.service.settings import Settings

#: Delivery timeout of the test's sink (the command's default is 30 s).
TIMEOUT_S = 6.0


def _rows(start: int, stop: int) -> Iterator[bytes]:
    for i in range(start, stop):
        yield (
            orjson.dumps(
                {
                    "transaction_id": f"b{i}",
                    "card_id": f"c{i % 13}",
                    "terminal_id": f"m{i % 7}",
                    "amount": 5 + i % 90,
                    "timestamp": 1_700_000_000_000 + i * 1000,
                }
            )
            + b"\n"
        )


def _records_on(bootstrap: str, topic: str) -> int:
    consumer = make_consumer(bootstrap, client_id="t-count", group_id=None)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(parts).values()) if parts else 0
    finally:
        consumer.close()


@pytest.fixture
def quiet_kafka_logs() -> Iterator[None]:
    """kafka-python logs every failed reconnection; the test reads only the command's output."""
    logger = logging.getLogger("kafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@pytest.mark.timeout(120)
def test_produce_stops_within_a_bound_when_the_broker_dies_and_says_what_was_sent(
    own_kafka: KafkaServer,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    quiet_kafka_logs: None,
) -> None:
    monkeypatch.setattr(sink, "DELIVERY_TIMEOUT_S", TIMEOUT_S)
    bootstrap = own_kafka.bootstrap_servers
    settings = make_settings(bootstrap_servers=bootstrap)
    topic = settings.topic_transactions
    first, total = 3_000, 40_000
    feed = tmp_path / "feed.jsonl"
    os.mkfifo(feed)  # the rows come in two parts; the broker dies between them
    broker_dead = threading.Event()
    killed_at: list[float] = []

    def write() -> None:
        try:
            with open(feed, "wb") as out:
                out.writelines(_rows(0, first))
                out.flush()
                broker_dead.wait(60)
                out.writelines(_rows(first, total))
        except BrokenPipeError:  # the command stopped reading: expected
            pass

    def kill_broker() -> None:
        deadline = time.monotonic() + 60
        while _records_on(bootstrap, topic) < first and time.monotonic() < deadline:
            time.sleep(0.2)
        pid = own_kafka.running_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed_at.append(time.monotonic())
        broker_dead.set()

    threads = [threading.Thread(target=write), threading.Thread(target=kill_broker)]
    for thread in threads:
        thread.start()
    try:
        result = CliRunner().invoke(
            producers_cli(settings), ["produce", str(feed), "--no-progress", "--no-labels"]
        )
        ended_at = time.monotonic()
    finally:
        broker_dead.set()
        for thread in threads:
            thread.join(timeout=30)
        own_kafka.stop()

    assert killed_at, "the broker was not killed (the first rows never arrived)"
    # Bounded by the sink's own worst case: a send blocked for buffer space (one delivery
    # timeout), the flush that follows (another, plus its margin), a forced close; then
    # slack for a loaded 2-core machine. Unbounded waiting would hit the test's timeout.
    worst_case = 2 * TIMEOUT_S + sink._FLUSH_MARGIN_S + sink._FORCE_CLOSE_WAIT_S
    assert ended_at - killed_at[0] < worst_case + 15, ended_at - killed_at[0]
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    found = re.fullmatch(
        rf"Error: {re.escape(str(feed))}: Kafka stopped confirming records \(([\d,]+) record\(s\) "
        rf"not delivered to Kafka at {re.escape(bootstrap)}, first: .+\); sent ([\d,]+) "
        rf"transactions, the last from line ([\d,]+) at {re.escape(topic)} partition (\d) offset "
        r"([\d,]+), and 0 labels\. Repair or re-create the file and send it again: transactions "
        r"and labels already sent are recognised by id and not counted twice\.",
        errors[0],
    )
    assert found, errors[0]
    failed, sent, line = (int(found[i].replace(",", "")) for i in (1, 2, 3))
    # The first part was on the broker before it died (the acks of its last batches may
    # be lost with it); nothing after it was confirmed.
    assert 0 < sent <= line <= first
    assert first < sent + failed <= total
