"""The latency floor: a kafka-python loop that consumes and produces, and does nothing else.

``python -m fraudstream.bench.passthrough spec.json`` connects with the
service's ``settings`` (a mapping of :class:`~fraudstream.service.settings.Settings`
values), reads ``topic_in`` and
produces every record's key and value to ``topic_out`` with the service's
producer settings (acks=all, idempotent, 5 ms linger), flushing after each
poll as the scorer's commit does; it writes ``ready_file`` once it holds its
partitions and stops on SIGTERM. Fed at the latency measure's offered rate
(:func:`fraudstream.bench.pipeline.measure_latency`), the time from a record's
append to its copy's append is what Kafka and kafka-python take on this machine
before any work: the part of the service's latency no scorer can remove.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from fraudstream.service.kafka.clients import make_consumer, make_producer
from fraudstream.service.settings import Settings


def pass_through(spec: dict[str, Any], stop: threading.Event) -> int:
    """Copy ``topic_in`` to ``topic_out`` until ``stop``; return how many records were copied."""
    # The settings themselves: the consumer decodes records as the scorer's does.
    settings = Settings(_env_file=None, **spec["settings"])
    consumer = make_consumer(
        settings,
        client_id="fraudstream-bench-passthrough",
        group_id=spec["group"],
        topics=[spec["topic_in"]],
    )
    producer = make_producer(settings, client_id="fraudstream-bench-passthrough")
    copied = 0
    ready = False
    try:
        while not stop.is_set():
            # The poll that joins the group may return records already.
            for batch in consumer.poll(timeout_ms=50, max_records=2000).values():
                for record in batch:
                    producer.send(spec["topic_out"], key=record.key, value=record.value)
                    copied += 1
            producer.flush()
            if not ready and consumer.assignment():
                Path(spec["ready_file"]).touch()
                ready = True
    finally:
        producer.close(timeout=10)
        consumer.close()
    return copied


def _main(spec_path: str) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    copied = pass_through(json.loads(Path(spec_path).read_text()), stop)
    print(json.dumps({"copied": copied}), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1])
