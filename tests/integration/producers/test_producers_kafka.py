"""Producers against a real broker: simulator feed, file producer, record -> replay."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import known_position

from fraudstream.producers.labels import LabelDelay
from fraudstream.producers.pacing import FakeClock, Pacer
from fraudstream.producers.produce import produce_file
from fraudstream.producers.recorder import read_recording, record_topic
from fraudstream.producers.replayer import replay_file
from fraudstream.producers.simulator import SimulationConfig
from fraudstream.producers.sink import KafkaSink
from fraudstream.producers.stream import stream_simulation
from fraudstream.service.errors import ConfigurationError
from fraudstream.service.kafka import DeliveryError, ensure_topics, make_consumer
from fraudstream.service.kafka.protocols import ConsumerRecord, TopicPartition
from fraudstream.service.settings import Settings


def _read_all(settings: Settings, topic: str) -> list[ConsumerRecord]:
    """Every record of ``topic`` (group-less reader, stops at the end offsets)."""
    consumer = make_consumer(settings.bootstrap_servers, client_id="test-reader", group_id=None)
    try:
        partitions = consumer.partitions_for_topic(topic)
        assert partitions is not None, f"{topic} is unknown"
        parts = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        end = consumer.end_offsets(parts)
        out: list[ConsumerRecord] = []
        while any(known_position(consumer, tp) < end[tp] for tp in parts):
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(records)
        return out
    finally:
        consumer.close()


def test_stream_simulation_sends_keyed_transactions_then_labels(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    config = SimulationConfig(seed=11, n_customers=60, n_terminals=120, n_days=3)
    stats = stream_simulation(settings, config, label_delay=LabelDelay(delay_s=86_400))
    txs = _read_all(settings, settings.topic_transactions)
    labels = _read_all(settings, settings.topic_labels)
    assert len(txs) == stats.transactions == len(labels) == stats.labels > 0
    by_id = {}
    for rec in txs:
        value = orjson.loads(rec.value or b"")
        assert rec.key == value["card_id"].encode()
        assert "is_fraud" not in value and "fraud_scenario" not in value
        by_id[value["transaction_id"]] = (value, rec)
    for rec in labels:
        label = orjson.loads(rec.value or b"")
        tx, tx_rec = by_id[label["transaction_id"]]
        assert label["labeled_at"] > tx["timestamp"]  # same RFC 3339 layout: text order is time
        assert rec.timestamp >= tx_rec.timestamp  # and it was sent after its transaction
        assert rec.partition == tx_rec.partition  # same key, same partition


def test_file_producer_sends_valid_rows_reports_bad_ones(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    settings = make_settings()
    path = tmp_path / "tx.jsonl"
    rows: list[dict[str, Any]] = [
        {
            "transaction_id": f"f{i}",
            "card_id": f"c{i % 3}",
            "terminal_id": "t",
            "amount": 10 + i,
            "timestamp": 1_700_000_000_000 + i * 3_600_000,
            "is_fraud": i == 4,
        }
        for i in range(10)
    ]
    lines = [orjson.dumps(r) for r in rows]
    lines.insert(3, b'{"transaction_id": "bad", "amount": 1}')
    path.write_bytes(b"\n".join(lines) + b"\n")
    seen: list[int] = []
    stats = produce_file(
        settings,
        path,
        fmt="jsonl",
        label_delay=LabelDelay(delay_s=7_200),
        on_bad_row=lambda e: seen.append(e.line),
    )
    assert seen == [4] and stats.bad_rows == 1
    assert stats.transactions == 10 and stats.labels == 10
    sent = [orjson.loads(r.value or b"") for r in _read_all(settings, settings.topic_transactions)]
    assert sorted(s["transaction_id"] for s in sent) == sorted(r["transaction_id"] for r in rows)
    labels = [orjson.loads(r.value or b"") for r in _read_all(settings, settings.topic_labels)]
    assert sum(label["is_fraud"] for label in labels) == 1


def _b(text: str) -> bytes:
    return text.encode()


def test_record_replay_round_trip_keeps_keys_values_headers_and_order(
    make_settings: Callable[..., Settings],
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    settings = make_settings()
    source, target = unique_name("incident"), unique_name("replayed")
    ensure_topics(settings.bootstrap_servers, {source: 3, target: 3})
    with KafkaSink(settings, client_suffix="test") as sink:
        for i in range(300):
            key = _b(f"card-{i % 7}")
            value = bytes([i % 256, 0, 255]) + _b(f"#{i}")  # not UTF-8: must survive untouched
            headers = [("seq", _b(str(i))), ("bin", b"\x00\xff")]
            sink.send(source, value, key=key, headers=headers)
        sink.send(source, None, key=_b("tombstone"))  # null value stays null
    recording = tmp_path / "incident.jsonl.gz"
    stats = record_topic(settings, source, recording)
    assert stats.records == 301
    meta, records = read_recording(recording)
    assert meta["topic"] == source and len(records) == 301

    replay_file(settings, recording, topic=target)
    original, replayed = _read_all(settings, source), _read_all(settings, target)

    def per_key(
        recs: list[ConsumerRecord],
    ) -> dict[bytes | None, list[tuple[bytes | None, list[tuple[str, bytes]]]]]:
        out: dict[bytes | None, list[tuple[bytes | None, list[tuple[str, bytes]]]]] = {}
        for rec in sorted(recs, key=lambda r: (r.partition, r.offset)):
            out.setdefault(rec.key, []).append((rec.value, list(rec.headers)))
        return out

    assert per_key(replayed) == per_key(original)


def test_record_from_time_and_offset_ranges(
    make_settings: Callable[..., Settings],
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    settings = make_settings()
    topic = unique_name("ranged")
    ensure_topics(settings.bootstrap_servers, {topic: 1})
    base = 1_700_000_000_000
    with KafkaSink(settings, client_suffix="test") as sink:
        for i in range(10):
            sink.send(topic, _b(str(i)), key=b"k", timestamp_ms=base + i * 1000)
    out = tmp_path / "r.jsonl"
    record_topic(settings, topic, out, from_time_ms=base + 3000, to_time_ms=base + 7000)
    assert [r["offset"] for r in read_recording(out)[1]] == [3, 4, 5, 6]
    record_topic(settings, topic, out, from_offset=8)
    _, records = read_recording(out)
    assert [r["value"] for r in records] == [b"8", b"9"]
    assert records[0]["timestamp_ms"] == base + 8000


def test_paced_replay_keeps_inter_arrival_times(
    make_settings: Callable[..., Settings],
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    settings = make_settings()
    topic = unique_name("paced")
    ensure_topics(settings.bootstrap_servers, {topic: 1})
    gaps_ms = [0, 100, 300, 50, 400, 250, 900]  # 2 s of event time
    t, lines = 1_700_000_000_000, [orjson.dumps({"fraudstream_recording": 1, "topic": topic})]
    for i, gap in enumerate(gaps_ms):
        t += gap
        lines.append(
            orjson.dumps(
                {
                    "topic": topic,
                    "partition": 0,
                    "offset": i,
                    "timestamp_ms": t,
                    "timestamp_type": 0,
                    "key": base64.b64encode(b"k").decode(),
                    "value": base64.b64encode(_b(str(i))).decode(),
                    "headers": [],
                }
            )
        )
    recording = tmp_path / "paced.jsonl"
    recording.write_bytes(b"\n".join(lines) + b"\n")
    # An injected clock makes the pace exact and the test independent of machine load:
    # the replayer must wait for each event's gap, halved at 2x, and never sleep to
    # catch up (no timing of the wall clock is asserted).
    clock = FakeClock(start=100.0)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(round(seconds, 6))
        clock.sleep(seconds)

    stats = replay_file(settings, recording, pacer=Pacer(speed=2.0, clock=clock.now, sleep=sleep))
    assert stats.records == len(gaps_ms)
    assert waits == [gap / 2 / 1000 for gap in gaps_ms[1:]]
    sent = sorted(_read_all(settings, topic), key=lambda r: r.offset)
    assert [r.value for r in sent] == [_b(str(i)) for i in range(len(gaps_ms))]


def _recording_lines(
    topic: str, placements: list[tuple[int, int]], stamps: list[int] | None = None
) -> bytes:
    """A recording of ``topic`` with one record per ``(partition, offset)``, all keyed ``k``.

    Record ``i`` is stamped ``stamps[i]`` (default: 1,700,000,000,000 + ``i`` ms).
    """
    lines = [
        orjson.dumps(
            {
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "timestamp_ms": stamps[i] if stamps else 1_700_000_000_000 + i,
                "timestamp_type": 0,
                "key": base64.b64encode(b"k").decode(),
                "value": base64.b64encode(_b(f"p{partition}o{offset}")).decode(),
                "headers": [],
            }
        )
        for i, (partition, offset) in enumerate(placements)
    ]
    return b"\n".join(lines) + b"\n"


def test_replay_keep_partitions_sends_each_record_to_its_original_partition(
    make_settings: Callable[..., Settings],
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    settings = make_settings()
    source, target = unique_name("kp-source"), unique_name("kp-target")
    ensure_topics(settings.bootstrap_servers, {target: 3})
    placements = [(0, 0), (2, 0), (1, 0), (2, 1), (0, 1), (1, 1)]
    recording = tmp_path / "kp.jsonl"
    # One key throughout: partitioning by key would put every record in one partition.
    recording.write_bytes(_recording_lines(source, placements))

    stats = replay_file(settings, recording, topic=target, keep_partitions=True)

    assert stats.records == len(placements)
    sent = _read_all(settings, target)
    assert sorted((r.partition, r.value) for r in sent) == sorted(
        (p, _b(f"p{p}o{o}")) for p, o in placements
    )


def test_replay_keep_partitions_refuses_a_target_with_too_few_partitions(
    make_settings: Callable[..., Settings],
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    settings = make_settings()
    source, target = unique_name("kp-source"), unique_name("kp-small")
    ensure_topics(settings.bootstrap_servers, {target: 2})
    recording = tmp_path / "kp.jsonl"
    recording.write_bytes(_recording_lines(source, [(0, 0), (3, 0)]))

    with pytest.raises(ConfigurationError) as caught:
        replay_file(settings, recording, topic=target, keep_partitions=True)

    assert str(caught.value) == (
        f"topic {target!r} has 2 partition(s), the recording uses 4: replay without "
        "--keep-partitions, or add partitions to the topic"
    )
    assert _read_all(settings, target) == []


def test_replay_of_a_timestamp_the_broker_refuses_says_why_and_how_to_resume(
    make_settings: Callable[..., Settings],
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    # A recording from a broker that accepted a record dated 2099 (an older
    # Kafka, or a topic allowing it): Kafka 4 refuses that timestamp, and with
    # it the rest of its batch. Before, the error named the batch's first
    # record's plain "part of a batch which had invalid records".
    import time

    settings = make_settings()
    target = unique_name("ahead")
    ensure_topics(settings.bootstrap_servers, {target: 1})
    now_ms = int(time.time() * 1000)
    stamps = [now_ms - 1000, 4_070_908_800_000, now_ms]
    recording = tmp_path / "ahead.jsonl"
    recording.write_bytes(_recording_lines(target, [(0, 0), (0, 1), (0, 2)], stamps))

    with pytest.raises(DeliveryError) as refused:
        replay_file(settings, recording, keep_timestamps=True)

    said = str(refused.value)
    assert said.startswith(
        f"{recording}: 3 record(s) not delivered to Kafka at {settings.bootstrap_servers}, "
    ), said
    assert "first: InvalidTimestampError('Timestamp 4070908800000 of message" in said
    assert "the rest of its batch was refused with it" in said
    assert said.endswith(
        "Kafka confirmed 0 of its 3 records; once the cause is fixed, replay it again with "
        "--skip 0 (records after it that Kafka confirmed are sent again) (or without "
        "--keep-timestamps: the records stamped when sent)"
    ), said
    assert _read_all(settings, target) == []

    assert replay_file(settings, recording).records == 3
    assert [r.value for r in _read_all(settings, target)] == [_b(f"p0o{i}") for i in range(3)]
