"""File producer: a JSON Lines or CSV file to ``transactions`` (and delayed ``labels``).

Rows are sent in file order, keyed by card id. When a row carries a verdict
(``is_fraud``, or the mapped ``TX_FRAUD``), its label is held back by the
:class:`fraudstream.producers.labels.LabelDelay` model and sent once the file's event
time passes the label's due time (the rest after the last row), so a label
never precedes its transaction. Bad rows are reported with their line
number and skipped, or stop the run.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from fraudstream.producers.files import BadRowError, ParsedRow, RowParser, read_rows
from fraudstream.producers.labels import DelayedQueue, LabelDelay
from fraudstream.producers.pacing import Pacer
from fraudstream.producers.simulator import format_times_ms
from fraudstream.producers.sink import KafkaSink, progress_bar
from fraudstream.service.kafka import ensure_topics
from fraudstream.service.settings import Settings


@dataclass
class ProduceStats:
    """What a file run did."""

    rows: int = 0
    transactions: int = 0
    labels: int = 0
    bad_rows: int = 0
    first_errors: list[BadRowError] = field(default_factory=list)
    wall_s: float = 0.0


def _label_value(row: ParsedRow, labeled_ms: int, source: str) -> bytes:
    stamp = format_times_ms(np.array([labeled_ms]))[0]
    return orjson.dumps(
        {
            "transaction_id": row.transaction_id,
            "is_fraud": row.is_fraud,
            "labeled_at": stamp,
            "source": source,
            "card_id": row.key.decode(),
        }
    )


def produce_file(
    settings: Settings,
    path: Path,
    *,
    fmt: str,
    mapping: Mapping[str, str] | None = None,
    keep_unmapped: bool = False,
    assume_utc: bool = False,
    stop_on_error: bool = False,
    send_labels: bool = True,
    label_delay: LabelDelay | None = None,
    seed: int = 0,
    speed: float | None = None,
    progress: bool = False,
    on_bad_row: Callable[[BadRowError], None] | None = None,
    topic: str | None = None,
) -> ProduceStats:
    """Send a file's transactions (and delayed labels) to Kafka.

    Parameters
    ----------
    fmt
        ``jsonl`` or ``csv`` (see :func:`fraudstream.producers.files.detect_format`).
    mapping, keep_unmapped, assume_utc
        See :func:`~fraudstream.producers.files.read_rows` and
        :class:`~fraudstream.producers.files.RowParser`.
    stop_on_error
        Raise the first :class:`BadRowError` (after flushing what was sent)
        instead of skipping bad rows.
    send_labels
        Send labels of rows that carry one (default yes).
    label_delay
        Delay model (default :class:`LabelDelay`); ``seed`` seeds its draws.
    speed
        Pacing by event time (see :class:`fraudstream.producers.pacing.Pacer`).
    on_bad_row
        Called with every bad row (the CLI prints them); they are also counted.
    topic
        Transactions topic (default ``settings.topic_transactions``).
    """
    delay = label_delay or LabelDelay()
    rng = random.Random(seed)
    topic_tx = topic or settings.topic_transactions
    topics = {topic_tx: settings.topic_partitions}
    if send_labels:
        topics[settings.topic_labels] = settings.topic_partitions
    ensure_topics(
        settings.bootstrap_servers,
        topics,
        replication=settings.topic_replication,
        create=settings.create_topics,
    )
    parser = RowParser(assume_utc=assume_utc)
    pacer = Pacer(speed)
    pending: DelayedQueue[tuple[ParsedRow, str]] = DelayedQueue()
    stats = ProduceStats()
    start = time.perf_counter()

    def send_labels_due(due: list[tuple[int, tuple[ParsedRow, str]]]) -> None:
        for due_ms, (held, source) in due:
            sink.send(settings.topic_labels, _label_value(held, due_ms, source), key=held.key)
            stats.labels += 1

    with (
        KafkaSink(settings, client_suffix="file-producer") as sink,
        progress_bar(None, enabled=progress, desc=path.name, unit="row") as bar,
    ):
        sink.warm_up(list(topics))
        for line, raw in read_rows(path, fmt, mapping=mapping, keep_unmapped=keep_unmapped):
            stats.rows += 1
            bar.update(1)
            try:
                if isinstance(raw, BadRowError):
                    raise raw
                row = parser.parse(line, raw)
            except BadRowError as exc:
                stats.bad_rows += 1
                if len(stats.first_errors) < 20:
                    stats.first_errors.append(exc)
                if on_bad_row is not None:
                    on_bad_row(exc)
                if stop_on_error:
                    sink.flush()
                    raise
                continue
            pacer.wait(row.event_ms)
            send_labels_due(pending.pop_due(row.event_ms))
            sink.send(topic_tx, row.value, key=row.key)
            stats.transactions += 1
            if send_labels and row.is_fraud is not None:
                delay_ms, source = delay.sample_one(rng, row.is_fraud)
                pending.push(row.event_ms + delay_ms, (row, source))
        send_labels_due(pending.pop_all())
        sink.flush()
    stats.wall_s = time.perf_counter() - start
    return stats
