"""File producer: a JSON Lines or CSV file to ``transactions`` (and delayed ``labels``).

Rows are sent in file order, keyed by card id. When a row carries a verdict
(``is_fraud``, or the mapped ``TX_FRAUD``), its label is held back by the
:class:`fraudstream.producers.labels.LabelDelay` model and sent once the file's event
time passes the label's due time (the rest after the last row), so a label
never precedes its transaction. Bad rows are reported with their line
number and skipped, or stop the run.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Generator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from fraudstream.producers.files import (
    BadRowError,
    CorruptFileError,
    FileFormatError,
    ParsedRow,
    RowParser,
    display_name,
    read_rows,
    verify_gzip,
)
from fraudstream.producers.labels import DelayedQueue, LabelDelay
from fraudstream.producers.pacing import Pacer
from fraudstream.producers.simulator import format_times_ms
from fraudstream.producers.sink import INTERRUPT_FLUSH_S, KafkaSink, RunCancelledError, progress_bar
from fraudstream.service.errors import FraudstreamError
from fraudstream.service.kafka import DeliveryError, check_reachable, ensure_topics
from fraudstream.service.settings import Settings

#: Rows read and checked before anything is sent: if none of them is a valid
#: transaction, the file is refused whole (a misspelt column, a wrong format).
HEAD_ROWS = 100


@dataclass
class ProduceStats:
    """What a file run did."""

    rows: int = 0
    transactions: int = 0
    labels: int = 0
    bad_rows: int = 0
    first_errors: list[BadRowError] = field(default_factory=list)
    wall_s: float = 0.0
    last_line: int = 0  # line of the last transaction sent
    last_offset: tuple[str, int, int] | None = None  # (topic, partition, offset) of the last one
    labels_held: int = 0  # labels not sent because the run stopped early

    def summary(self, verb: str = "sent") -> str:
        """What was sent (``verb``), for a message about a run that stopped early."""
        where = ""
        if self.last_offset is not None:
            topic, partition, offset = self.last_offset
            where = f", the last from line {self.last_line:,} at {topic} partition {partition} "
            where += f"offset {offset:,}"
        held = f"; {self.labels_held:,} labels held back were not sent" if self.labels_held else ""
        return f"{verb} {self.transactions:,} transactions{where}, and {self.labels:,} labels{held}"


class ProduceInterruptedError(FraudstreamError):
    """A file run stopped part-way; the message says what was sent before it stopped."""

    def __init__(self, message: str, stats: ProduceStats) -> None:
        super().__init__(message)
        self.stats = stats


class ProduceCancelledError(ProduceInterruptedError, RunCancelledError):
    """Ctrl-C (or SIGTERM, through the CLI) stopped a file run.

    The message says what Kafka confirmed and how to resume.
    """


_RESEND = (
    "Repair or re-create the file and send it again: transactions and labels already "
    "sent are recognised by id and not counted twice."
)

_RESUME = (
    "Send it again to resume: transactions and labels already sent are recognised by id "
    "and not counted twice."
)


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
    name = display_name(path)
    # The file first, Kafka second, so a bad file is refused before anything is sent:
    # a damaged gzip file, a header without a required column, or rows that are all bad.
    try:
        verify_gzip(path)
    except CorruptFileError as exc:
        raise CorruptFileError(f"{exc}; nothing was sent", exc.after_line) from None
    rows = _checked_rows(
        path, fmt, mapping, keep_unmapped, RowParser(assume_utc=assume_utc), on_bad_row
    )
    delay = label_delay or LabelDelay()
    rng = random.Random(seed)
    topic_tx = topic or settings.topic_transactions
    label_topic = settings.topic_labels if send_labels else None
    topics = _ensure_file_topics(settings, topic_tx, send_labels, rows)
    pacer = Pacer(speed)
    pending: DelayedQueue[tuple[ParsedRow, str]] = DelayedQueue()
    stats = ProduceStats()
    start = time.perf_counter()

    def send_labels_due(due: list[tuple[int, tuple[ParsedRow, str]]]) -> None:
        for due_ms, (held, source) in due:
            sink.send(settings.topic_labels, _label_value(held, due_ms, source), key=held.key)
            stats.labels += 1

    def stop(message: str) -> ProduceInterruptedError:
        sink.flush()  # what was handed to the producer is delivered (or raises)
        _note_last_offset(stats, sink, topic_tx)
        stats.labels_held = len(pending)
        stats.wall_s = time.perf_counter() - start
        return ProduceInterruptedError(f"{message}; {stats.summary()}. {_RESEND}", stats)

    with (
        closing(rows),  # the file is closed however the run ends (a pipe's writer sees it)
        KafkaSink(settings, client_suffix="file-producer") as sink,
        progress_bar(None, enabled=progress, desc=Path(name).name, unit="row") as bar,
    ):
        try:
            sink.warm_up(list(topics))
            try:
                for line, row in rows:
                    stats.rows += 1
                    bar.update(1)
                    if isinstance(row, BadRowError):
                        _note_bad_row(stats, row)
                        if stop_on_error:
                            raise stop(f"{name}:{line}: {row.reason} (stopped: --on-error stop)")
                        continue
                    pacer.wait(row.event_ms)
                    send_labels_due(pending.pop_due(row.event_ms))
                    sink.send(topic_tx, row.value, key=row.key, line=line)
                    stats.transactions += 1
                    stats.last_line = line
                    if send_labels and row.is_fraud is not None:
                        delay_ms, source = delay.sample_one(rng, row.is_fraud)
                        pending.push(row.event_ms + delay_ms, (row, source))
            except FileFormatError as exc:  # the file breaks part-way (stdin, or changed)
                raise stop(str(exc)) from exc
            send_labels_due(pending.pop_all())
            sink.flush()
        except DeliveryError as exc:
            # Kafka stopped taking records (broker gone): do not wait for it again.
            _confirmed(stats, sink, topic_tx, label_topic, len(pending), start)
            raise ProduceInterruptedError(
                f"{name}: Kafka stopped confirming records ({exc}); {stats.summary()}. {_RESEND}",
                stats,
            ) from exc
        except KeyboardInterrupt:
            # Ctrl-C: a few seconds for what is in flight to be confirmed, then say what was.
            with contextlib.suppress(DeliveryError):
                sink.flush(timeout_s=INTERRUPT_FLUSH_S)
            _confirmed(stats, sink, topic_tx, label_topic, len(pending), start)
            summary = stats.summary("Kafka confirmed")
            raise ProduceCancelledError(f"{name}: {summary}. {_RESUME}", stats) from None
    _note_last_offset(stats, sink, topic_tx)
    stats.wall_s = time.perf_counter() - start
    return stats


def _confirmed(
    stats: ProduceStats,
    sink: KafkaSink,
    topic_tx: str,
    topic_labels: str | None,
    labels_held: int,
    start: float,
) -> None:
    """Count in ``stats`` what Kafka confirmed, not what was handed to the producer."""
    stats.transactions = sink.delivered_by_topic.get(topic_tx, 0)
    stats.labels = 0 if topic_labels is None else sink.delivered_by_topic.get(topic_labels, 0)
    stats.last_line = sink.last_delivered_line.get(topic_tx, 0)
    _note_last_offset(stats, sink, topic_tx)
    stats.labels_held = labels_held
    stats.wall_s = time.perf_counter() - start


def _ensure_file_topics(
    settings: Settings,
    topic_tx: str,
    send_labels: bool,
    rows: Generator[tuple[int, ParsedRow | BadRowError], None, None],
) -> dict[str, int]:
    """Check Kafka, make sure the transactions topic (and the labels one if sent) exist.

    Returns their partitions; on failure, ``rows`` (the open file) is closed.
    """
    topics = {topic_tx: settings.topic_partitions}
    if send_labels:
        topics[settings.topic_labels] = settings.topic_partitions
    try:
        check_reachable(settings)
        ensure_topics(
            settings,
            topics,
            replication=settings.topic_replication,
            create=settings.create_topics,
        )
    except BaseException:
        rows.close()
        raise
    return topics


def _note_bad_row(stats: ProduceStats, row: BadRowError) -> None:
    """Count a bad row; the first 20 are kept for the report."""
    stats.bad_rows += 1
    if len(stats.first_errors) < 20:
        stats.first_errors.append(row)


def _note_last_offset(stats: ProduceStats, sink: KafkaSink, topic: str) -> None:
    """The last delivered offset of ``topic``, once anything was delivered to it."""
    if topic in sink.last_delivered:
        stats.last_offset = (topic, *sink.last_delivered[topic])


def _checked_rows(
    path: Path,
    fmt: str,
    mapping: Mapping[str, str] | None,
    keep_unmapped: bool,
    parser: RowParser,
    on_bad_row: Callable[[BadRowError], None] | None,
) -> Generator[tuple[int, ParsedRow | BadRowError], None, None]:
    """Parsed rows of the file, after checking that its first rows hold valid transactions.

    The first :data:`HEAD_ROWS` rows are read (and the CSV header checked) at
    once; if there are none, or none is valid, the whole file is refused (with
    the first reason) before anything is sent. Bad rows are passed to
    ``on_bad_row`` as they come. Closing the returned generator closes the file
    (a pipe's writer then sees it closed).
    """
    raw_rows = read_rows(path, fmt, mapping=mapping, keep_unmapped=keep_unmapped)

    def parse(line: int, raw: dict[str, Any] | BadRowError) -> ParsedRow | BadRowError:
        if isinstance(raw, BadRowError):
            return raw
        try:
            return parser.parse(line, raw)
        except BadRowError as exc:
            return exc

    try:
        head = [(line, parse(line, raw)) for line, raw in islice(raw_rows, HEAD_ROWS)]
    except BaseException:
        raw_rows.close()
        raise
    if not head:
        raw_rows.close()
        also = "a header or blank lines" if fmt == "csv" else "blank lines"
        raise FileFormatError(
            f"{display_name(path)}: no rows to send (the file is empty, or has only {also}); "
            "nothing was sent"
        )
    if head and all(isinstance(row, BadRowError) for _, row in head):
        raw_rows.close()
        line, first = head[0]
        assert isinstance(first, BadRowError)
        hint = ""
        if "timezone" in first.reason:
            hint = " (timestamps without an offset need --assume-utc)"
        raise FileFormatError(
            f"{display_name(path)}: none of the first {len(head)} rows is a valid transaction "
            f"(line {line}: {first.reason}){hint}; nothing was sent"
        )

    def rows() -> Generator[tuple[int, ParsedRow | BadRowError], None, None]:
        try:
            for line, raw in chain(head, ((n, parse(n, r)) for n, r in raw_rows)):
                if isinstance(raw, BadRowError) and on_bad_row is not None:
                    on_bad_row(raw)
                yield line, raw
        finally:
            raw_rows.close()

    return rows()
