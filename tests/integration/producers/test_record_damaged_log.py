"""``fraudstream record`` over a batch damaged in the broker's log: skipped, counted, named.

On a broker of the module's own, a byte of one record is flipped in its log
segment (``tests/broker_log.py``). The recorder skips that batch as the scorer
and ``state rebuild`` do, warns once naming the topic, partition and offsets,
records every other record and says in its summary how many it could not read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from broker_log import flip_a_byte, write_one_batch_each
from click.testing import CliRunner
from producer_cli import producers_cli

from fraudstream.devstack import KafkaServer
from fraudstream.producers.recorder import read_recording
from fraudstream.service.kafka import ensure_topics
from fraudstream.service.settings import Settings


def test_a_damaged_batch_is_skipped_counted_and_named_once(
    own_kafka: KafkaServer,
    make_settings: Callable[..., Settings],
    unique_name: Callable[[str], str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bootstrap = own_kafka.bootstrap_servers
    settings = make_settings(bootstrap_servers=bootstrap, redis_url="redis://127.0.0.1:1/0")
    topic = unique_name("damaged")
    ensure_topics(bootstrap, {topic: 2})
    records = [(p, b"k", f"value-{p}-{i}".encode()) for p in (0, 1) for i in range(6)]
    offsets = write_one_batch_each(bootstrap, topic, records)
    damaged = b"value-0-3"
    flip_a_byte(own_kafka.data_dir / "logs", topic, damaged)

    out = tmp_path / "incident.jsonl.gz"
    with caplog.at_level(logging.WARNING, logger="fraudstream.producers.recorder"):
        result = CliRunner().invoke(
            producers_cli(settings), ["record", "--topic", topic, "-o", str(out), "--no-progress"]
        )

    assert result.exit_code == 0, result.output
    _, recorded = read_recording(out)
    assert sorted(r["value"] for r in recorded) == sorted(v for _, _, v in records if v != damaged)
    offset = offsets[damaged]
    said = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].startswith(f"{topic} partition 0 offsets {offset}..{offset} cannot be read")
    assert re.fullmatch(
        rf"recorded 11 records from 2 partition\(s\) to {re.escape(str(out))} in [\d.]+ s; "
        r"1 records could not be read \(damaged in the broker's log\) and were skipped: the "
        r"warnings above name them",
        result.stderr.strip().splitlines()[-1],
    ), result.stderr
