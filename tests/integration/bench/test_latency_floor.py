"""The latency measure's floor (a consume → produce loop doing nothing else), on a real broker."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

from fraudstream.bench.passthrough import pass_through
from fraudstream.bench.pipeline import _Run, measure_latency_floor
from fraudstream.service.kafka import ensure_topics
from fraudstream.service.kafka.clients import make_producer
from fraudstream.service.kafka.protocols import ConsumerRecord


def _records(n: int) -> tuple[list[bytes], list[bytes]]:
    keys = [f"card{i % 7}".encode() for i in range(n)]
    values = [orjson.dumps({"transaction_id": f"t{i}", "amount": i}) for i in range(n)]
    return keys, values


def test_pass_through_copies_every_record_with_its_key(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    consume: Callable[..., list[ConsumerRecord]],
    tmp_path: Path,
) -> None:
    topic_in, topic_out = unique_name("pt-in"), unique_name("pt-out")
    ensure_topics(kafka_bootstrap, {topic_in: 3, topic_out: 3})
    keys, values = _records(300)
    producer = make_producer(kafka_bootstrap, client_id="test-pt")
    for key, value in zip(keys, values, strict=True):
        producer.send(topic_in, key=key, value=value)
    producer.flush()
    producer.close()
    spec = {
        "settings": {"bootstrap_servers": kafka_bootstrap},
        "group": unique_name("pt"),
        "topic_in": topic_in,
        "topic_out": topic_out,
        "ready_file": str(tmp_path / "ready"),
    }
    stop = threading.Event()
    copied: list[int] = []
    thread = threading.Thread(target=lambda: copied.append(pass_through(spec, stop)))
    thread.start()
    try:
        records = consume(kafka_bootstrap, topic_out, at_least=300, settle_s=0.5)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert sorted((r.value, r.key) for r in records) == sorted(zip(values, keys, strict=True))
    assert copied == [300]
    assert (tmp_path / "ready").exists()


def test_the_floor_measures_every_record_sent(kafka_bootstrap: str) -> None:
    keys, values = _records(400)
    floor = measure_latency_floor(
        kafka_bootstrap,
        {"bootstrap_servers": kafka_bootstrap},
        keys,
        values,
        rate=200,
        seconds=1.0,
        run=_Run(),
        partitions=3,
    )
    assert floor["latency_floor_expected"] == 200
    assert floor["latency_floor_samples"] == 200
    # From the send includes from the append; both are real durations.
    assert 0 <= floor["latency_floor_kafka_p50_ms"] <= floor["latency_floor_p50_ms"]
    assert np.isfinite(floor["latency_floor_p99_ms"])
