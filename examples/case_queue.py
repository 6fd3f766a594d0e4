"""A downstream consumer of fraudstream: alerts into a case queue, one case per alert.

The fraud team works from a queue of cases. This program reads the alerts
topic with its own consumer group and turns each alert into a case row in
SQLite. It is safe against everything Kafka delivery can do:

* **at least once**: offsets are committed only after the cases are stored,
  so a crash re-reads alerts rather than losing them;
* **deduplicated by ``alert_id``**: the id derives from the transaction id, so
  a re-read, a replay of the transactions or a scorer that retried a batch
  gives the same id, and ``INSERT OR IGNORE`` on the primary key keeps one case;
* **committed alerts only** (``read_committed``), for the exactly-once mode.

Run it next to a running service::

    python examples/case_queue.py --bootstrap-servers 127.0.0.1:9092 --db cases.sqlite

It needs only ``kafka-python`` and, from ``fraudstream``, the public
:class:`fraudstream.Alert` model and the connection settings: it reads
``FRAUDSTREAM_BOOTSTRAP_SERVERS`` and ``FRAUDSTREAM_KAFKA_*`` (TLS, SASL) as the
service does, and :class:`fraudstream.KafkaConnection` turns them into
kafka-python options.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer
from pydantic import ValidationError

from fraudstream import Alert, KafkaConnection, Settings

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    alert_id       TEXT PRIMARY KEY,
    transaction_id TEXT NOT NULL,
    card_id        TEXT NOT NULL,
    amount         REAL NOT NULL,
    score          REAL NOT NULL,
    event_time     TEXT NOT NULL,
    reasons        TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'open',
    received_at    TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
)
"""


class CaseQueue:
    """Cases in a SQLite file, one per alert id."""

    def __init__(self, path: Path | str) -> None:
        self.db = sqlite3.connect(str(path))
        self.db.execute(_SCHEMA)

    def add(self, alert: Alert) -> bool:
        """Queue a case for ``alert``; ``False`` when its alert id is already queued."""
        reasons = ", ".join(f"{r.feature}={r.value:.4g}" for r in alert.reasons)
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO cases (alert_id, transaction_id, card_id, amount, score,"
            " event_time, reasons) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                alert.alert_id,
                alert.transaction_id,
                alert.card_id,
                alert.amount,
                alert.score,
                alert.event_time.isoformat(),
                reasons,
            ),
        )
        return cursor.rowcount == 1

    def commit(self) -> None:
        """Make the cases stored so far durable."""
        self.db.commit()

    def open_cases(self) -> list[tuple[str, str, float]]:
        """``(alert_id, card_id, score)`` of the open cases, most suspicious first."""
        rows = self.db.execute(
            "SELECT alert_id, card_id, score FROM cases WHERE status = 'open' ORDER BY score DESC"
        )
        return [(str(a), str(c), float(s)) for a, c, s in rows]

    def close(self) -> None:
        """Close the database."""
        self.db.close()


@dataclass
class Stats:
    """What one run of :func:`run` did."""

    read: int = 0
    queued: int = 0
    duplicates: int = 0
    invalid: int = 0


def _batches(consumer: KafkaConsumer, idle_timeout_s: float | None) -> Iterator[list[bytes]]:
    last = time.monotonic()
    while True:
        polled = consumer.poll(timeout_ms=500)
        values = [r.value for records in polled.values() for r in records]
        if values or not consumer.assignment():  # idle only counts once the group is joined
            last = time.monotonic()
        if values:
            yield values
        elif idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
            return


def run(
    kafka: str | Mapping[str, Any],
    queue: CaseQueue,
    *,
    topic: str = "fraud-alerts",
    group: str = "case-management",
    idle_timeout_s: float | None = None,
) -> Stats:
    """Move alerts into ``queue`` until ``idle_timeout_s`` without new ones (or forever).

    ``kafka`` is the bootstrap servers, or kafka-python connection options
    (``KafkaConnection.from_settings(settings).options()``: servers, TLS, SASL).
    """
    options = {"bootstrap_servers": kafka} if isinstance(kafka, str) else dict(kafka)
    consumer = KafkaConsumer(
        topic,
        **options,
        group_id=group,
        enable_auto_commit=False,  # commit only after the cases are stored
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    stats = Stats()
    try:
        for values in _batches(consumer, idle_timeout_s):
            for value in values:
                stats.read += 1
                try:
                    alert = Alert.model_validate_json(value)
                except ValidationError:
                    stats.invalid += 1  # not an alert: a real system would park it
                    continue
                if queue.add(alert):
                    stats.queued += 1
                else:
                    stats.duplicates += 1
            queue.commit()  # 1. the cases are durable ...
            consumer.commit()  # 2. ... then Kafka may forget the alerts
    finally:
        consumer.close()
    return stats


def main() -> None:
    """Consume alerts into the case queue until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bootstrap-servers", default=None, help="default: FRAUDSTREAM_BOOTSTRAP_SERVERS"
    )
    parser.add_argument("--topic", default="fraud-alerts")
    parser.add_argument("--group", default="case-management")
    parser.add_argument("--db", default="cases.sqlite")
    parser.add_argument("--idle-timeout", type=float, default=None)
    args = parser.parse_args()
    # The service's own connection settings: servers, TLS and SASL (FRAUDSTREAM_KAFKA_*).
    settings = Settings()
    if args.bootstrap_servers:
        settings = settings.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    queue = CaseQueue(args.db)
    try:
        stats = run(
            KafkaConnection.from_settings(settings).options(),
            queue,
            topic=args.topic,
            group=args.group,
            idle_timeout_s=args.idle_timeout,
        )
    except KeyboardInterrupt:
        return
    finally:
        queue.close()
    print(
        f"{stats.read} alerts read: {stats.queued} new cases, {stats.duplicates} duplicates, "
        f"{stats.invalid} invalid"
    )


if __name__ == "__main__":
    main()
