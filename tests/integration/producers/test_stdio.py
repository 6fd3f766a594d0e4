"""`-` as standard input/output with a real broker, and a file that breaks part-way."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from producer_cli import producers_cli

from fraudstream.service.kafka import make_consumer
from fraudstream.service.kafka.protocols import ConsumerRecord, TopicPartition
from fraudstream.service.settings import Settings


def _rows(n: int) -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "transaction_id": f"s{i}",
                "card_id": f"c{i % 11}",
                "terminal_id": f"m{i % 7}",
                "amount": 5 + i % 90,
                "timestamp": 1_700_000_000_000 + i * 60_000,
                "is_fraud": i % 40 == 0,
            }
        )
        + b"\n"
        for i in range(n)
    )


def _record_at(settings: Settings, topic: str, partition: int, offset: int) -> ConsumerRecord:
    consumer = make_consumer(settings.bootstrap_servers, client_id="t-read", group_id=None)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        for _ in range(50):
            for records in consumer.poll(timeout_ms=200).values():
                return records[0]
        raise AssertionError(f"nothing at {topic}[{partition}]@{offset}")
    finally:
        consumer.close()


def test_gzip_cut_short_on_stdin_says_what_was_sent_and_the_last_offset(
    make_settings: Callable[..., Settings], consume: Callable[..., list[ConsumerRecord]]
) -> None:
    settings = make_settings()
    data = gzip.compress(_rows(30_000))
    result = CliRunner().invoke(
        producers_cli(settings), ["produce", "-", "--no-progress"], input=data[: len(data) // 2]
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    found = re.fullmatch(
        r"Error: <stdin>: the gzip data ends early after line ([\d,]+) \(the file is truncated\); "
        r"sent ([\d,]+) transactions, the last from line ([\d,]+) at (\S+) partition (\d+) "
        r"offset ([\d,]+), and ([\d,]+) labels; ([\d,]+) labels held back were not sent\. "
        r"Repair or re-create the file and send it again: transactions and labels already sent "
        r"are recognised by id and not counted twice\.",
        lines[0],
    )
    assert found, lines[0]
    intact, sent, last_line, topic, partition, offset, _, _ = (
        g.replace(",", "") for g in found.groups()
    )
    assert topic == settings.topic_transactions
    assert int(sent) == int(last_line) == int(intact) > 1000
    last = _record_at(settings, topic, int(partition), int(offset))
    assert orjson.loads(last.value or b"")["transaction_id"] == f"s{int(last_line) - 1}"
    delivered = consume(settings.bootstrap_servers, topic, at_least=int(sent), settle_s=1)
    assert len(delivered) == int(sent)


def test_produce_record_and_replay_through_pipes(
    make_settings: Callable[..., Settings],
    unique_name: Callable[[str], str],
    consume: Callable[..., list[ConsumerRecord]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = make_settings()
    cli = producers_cli(settings)
    produced = CliRunner().invoke(
        cli, ["produce", "-", "--no-labels", "--no-progress"], input=_rows(300)
    )
    assert produced.exit_code == 0, produced.output
    recorded = CliRunner().invoke(cli, ["record", "-o", "-", "--no-progress"])
    assert recorded.exit_code == 0, recorded.output
    assert not (tmp_path / "-").exists()
    lines = recorded.stdout.splitlines()
    assert orjson.loads(lines[0])["fraudstream_recording"] == 1 and len(lines) == 301
    target = unique_name("replayed")
    replayed = CliRunner().invoke(
        cli, ["replay", "-", "--topic", target, "--no-progress"], input=recorded.stdout
    )
    assert replayed.exit_code == 0, replayed.output
    copies = consume(settings.bootstrap_servers, target, at_least=300, settle_s=1)
    assert sorted(orjson.loads(r.value or b"")["transaction_id"] for r in copies) == sorted(
        f"s{i}" for i in range(300)
    )
