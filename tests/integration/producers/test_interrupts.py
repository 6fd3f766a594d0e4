"""SIGINT and SIGTERM to the producer commands, as real processes on a real broker.

``record`` writes every record it read and closes its file complete; a file
run (``produce``, ``replay``) cut short says what Kafka confirmed and how to
resume. Each signal is sent once the process has reached the point under test,
seen from outside (records in the file, records on the topic), never after a
guessed delay.
"""

from __future__ import annotations

import base64
import gzip
import re
import signal
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from conftest import settings_env

from fraudstream.producers.recorder import read_recording
from fraudstream.producers.sink import KafkaSink
from fraudstream.service.kafka import ensure_topics
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.settings import Settings

FRAUDSTREAM = str(Path(sys.executable).with_name("fraudstream"))


def _start(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [FRAUDSTREAM, *args, "--no-progress"],
        env=settings_env(settings),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _stop(process: subprocess.Popen[bytes], signum: int) -> tuple[int, list[str]]:
    """Send ``signum``; the exit status and the lines on standard error."""
    process.send_signal(signum)
    try:
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, err.decode().strip().splitlines()


def _whole_lines(path: Path) -> int:
    """Lines of a gzip file being written (what its data flushed so far holds)."""
    data = path.read_bytes() if path.exists() else b""
    text = zlib.decompressobj(wbits=31).decompress(data)  # tolerates the missing end
    return text.count(b"\n")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_followed_recording_stopped_by_a_signal_keeps_every_record_read(
    signum: int,
    make_settings: Callable[..., Settings],
    unique_name: Callable[[str], str],
    wait_for: Callable[..., None],
    tmp_path: Path,
) -> None:
    settings = make_settings()
    topic = unique_name("followed")
    ensure_topics(settings.bootstrap_servers, {topic: 2})
    with KafkaSink(settings, client_suffix="test") as sink:
        for i in range(50):
            sink.send(topic, f"v{i}".encode(), key=f"k{i % 5}".encode())
    out = tmp_path / "incident.jsonl.gz"
    recorder = _start(
        settings, "record", "--topic", topic, "--follow", "--idle-timeout", "300", "-o", str(out)
    )
    try:
        # Whole records reach the file as they are read: the header and the 50 records.
        wait_for(lambda: _whole_lines(out) == 51, 60, "the recorder to write the 50 records")
    finally:
        code, err = _stop(recorder, signum)

    assert code == 0, err  # following ends with a signal: that is a normal end
    name = signal.Signals(signum).name
    assert re.fullmatch(
        rf"stopped by {name}: recorded 50 records from 2 partition\(s\) to {re.escape(str(out))} "
        r"in [\d.]+ s",
        err[-1],
    ), err
    assert len(gzip.decompress(out.read_bytes()).splitlines()) == 51  # complete: CRC, length
    meta, records = read_recording(out)
    assert meta["topic"] == topic
    assert sorted(r["value"] for r in records) == sorted(f"v{i}".encode() for i in range(50))


def _transactions(n: int) -> bytes:
    """``n`` transactions an hour apart (paced at --speed 1, the second waits an hour)."""
    return b"".join(
        orjson.dumps(
            {
                "transaction_id": f"i{i}",
                "card_id": f"c{i}",
                "terminal_id": "m1",
                "amount": 10 + i,
                "timestamp": 1_700_000_000_000 + i * 3_600_000,
            }
        )
        + b"\n"
        for i in range(n)
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_produce_stopped_by_a_signal_says_what_kafka_confirmed_and_exits_128_plus_it(
    signum: signal.Signals,
    make_settings: Callable[..., Settings],
    consume: Callable[..., list[ConsumerRecord]],
    tmp_path: Path,
) -> None:
    settings = make_settings()
    ensure_topics(settings.bootstrap_servers, {settings.topic_transactions: 2})
    path = tmp_path / "tx.jsonl"
    path.write_bytes(_transactions(3))
    producer = _start(settings, "produce", str(path), "--no-labels", "--speed", "1")
    try:
        # The first transaction is sent at once, the second an hour of event time later.
        (first,) = consume(settings.bootstrap_servers, settings.topic_transactions, at_least=1)
    finally:
        code, err = _stop(producer, signum)

    assert code == 128 + signum, err
    assert err == [
        f"stopped by {signum.name}: {path}: Kafka confirmed 1 transactions, the last from line 1 "
        f"at {settings.topic_transactions} partition {first.partition} offset {first.offset}, "
        "and 0 labels. Send it again to resume: transactions and labels already sent are "
        "recognised by id and not counted twice."
    ]


def _recording(topic: str, n: int) -> bytes:
    """A recording of ``n`` records of ``topic``, an hour apart."""
    lines = [orjson.dumps({"fraudstream_recording": 1, "topic": topic})]
    for i in range(n):
        lines.append(
            orjson.dumps(
                {
                    "topic": topic,
                    "partition": 0,
                    "offset": i,
                    "timestamp_ms": 1_700_000_000_000 + i * 3_600_000,
                    "timestamp_type": 0,
                    "key": base64.b64encode(b"k").decode(),
                    "value": base64.b64encode(f"r{i}".encode()).decode(),
                    "headers": [],
                }
            )
        )
    return b"\n".join(lines) + b"\n"


def test_replay_stopped_by_ctrl_c_says_how_to_resume_and_resuming_sends_the_rest_once(
    make_settings: Callable[..., Settings],
    unique_name: Callable[[str], str],
    consume: Callable[..., list[ConsumerRecord]],
    read_topic: Callable[..., list[ConsumerRecord]],
    tmp_path: Path,
) -> None:
    settings = make_settings()
    target = unique_name("replayed")
    ensure_topics(settings.bootstrap_servers, {target: 1})
    path = tmp_path / "incident.jsonl"
    path.write_bytes(_recording(unique_name("recorded"), 4))
    replayer = _start(settings, "replay", str(path), "--topic", target, "--speed", "1")
    try:
        consume(settings.bootstrap_servers, target, at_least=1)  # then it waits an hour
    finally:
        code, err = _stop(replayer, signal.SIGINT)

    assert code == 130, err
    assert err == [
        f"stopped by SIGINT: {path}: Kafka confirmed 1 of its 4 records; to resume, replay it "
        "again with --skip 1"
    ]
    resumed = subprocess.run(
        [FRAUDSTREAM, "replay", str(path), "--topic", target, "--skip", "1", "--no-progress"],
        env=settings_env(settings),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert [r.value for r in read_topic(settings.bootstrap_servers, target)] == [
        b"r0",
        b"r1",
        b"r2",
        b"r3",
    ]


def test_a_simulation_sent_to_kafka_stopped_by_sigterm_says_what_kafka_confirmed(
    make_settings: Callable[..., Settings],
    consume: Callable[..., list[ConsumerRecord]],
) -> None:
    settings = make_settings()
    ensure_topics(
        settings.bootstrap_servers, {settings.topic_transactions: 2, settings.topic_labels: 2}
    )
    args = ["simulate", "--customers", "100", "--terminals", "200", "--days", "2", "--speed", "1"]
    simulator = _start(settings, *args)
    try:
        # Paced in real time: two days of transactions, the first sent at once.
        consume(settings.bootstrap_servers, settings.topic_transactions, at_least=1)
    finally:
        code, err = _stop(simulator, signal.SIGTERM)

    assert code == 143, err
    said = re.fullmatch(
        r"stopped by SIGTERM: Kafka confirmed ([\d,]+) of the simulation's [\d,]+ transactions "
        r"and [\d,]+ labels; run the same command again to resume: transactions and labels "
        r"already sent are recognised by id and not counted twice",
        err[-1],
    )
    assert said, err
    confirmed = int(said.group(1).replace(",", ""))
    sent = consume(settings.bootstrap_servers, settings.topic_transactions, at_least=confirmed)
    assert confirmed >= 1 and len(sent) == confirmed
