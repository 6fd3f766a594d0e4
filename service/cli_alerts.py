"""``fraudstream alerts tail``: follow the alerts topic from a terminal or a pipe.

On a terminal each alert is one coloured, readable line; piped (or with
``--json``) each alert is the JSON document the service published, one per
line, ready for ``jq`` or another program. The reader sees committed records
only (``read_committed``), so in exactly-once mode an alert of an aborted
batch is never shown. It joins no consumer group and commits nothing: tailing
never disturbs a real downstream consumer (see ``examples/case_queue.py``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import click
import orjson

from fraudstream.service.cli_options import TOPIC, FloatRange
from fraudstream.service.errors import ConfigurationError
from fraudstream.service.kafka import check_reachable, make_consumer
from fraudstream.service.kafka.protocols import Consumer, TopicPartition
from fraudstream.service.settings import Settings


@dataclass(frozen=True)
class TailedAlert:
    """One alert read from the topic: its raw bytes (shown as-is in JSON mode) and fields."""

    raw: bytes
    fields: dict[str, Any]
    partition: int
    offset: int


def open_alerts(settings: Settings, topic: str, *, from_beginning: bool) -> Consumer:
    """A group-less, ``read_committed`` consumer on every partition of ``topic``.

    Positioned at the end (only new alerts) or at the beginning.

    Raises
    ------
    UnavailableError
        Kafka does not answer.
    ConfigurationError
        The topic does not exist (the service creates it when it starts).
    """
    check_reachable(settings)
    consumer = make_consumer(
        settings,
        client_id=f"{settings.client_id}-alerts-tail",
        group_id=None,
        read_committed=True,
    )
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise ConfigurationError(
                f"topic {topic!r} does not exist on {settings.bootstrap_servers}: "
                "start the service (`fraudstream serve` creates it) or pass --topic"
            )
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        if from_beginning:
            consumer.seek_to_beginning(*assigned)
        else:
            consumer.seek_to_end(*assigned)
            for tp in assigned:
                consumer.position(tp)  # resolve "end" now, not at the first poll
    except BaseException:
        consumer.close()
        raise
    return consumer


def tail_alerts(
    consumer: Consumer,
    *,
    min_score: float = 0.0,
    idle_timeout_s: float | None = None,
    clock: Any = time.monotonic,
) -> Iterator[TailedAlert]:
    """Alerts as they arrive, in each partition's order, ``score >= min_score`` only.

    Ends after ``idle_timeout_s`` without a record (never, by default).
    Records that are not JSON objects are skipped with a note on stderr.
    """
    last = clock()
    while True:
        batches = consumer.poll(timeout_ms=500)
        if batches:
            last = clock()
        elif idle_timeout_s is not None and clock() - last >= idle_timeout_s:
            return
        for records in batches.values():
            for record in records:
                raw = record.value or b""
                try:
                    fields = orjson.loads(raw)
                    score = float(fields["score"])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    click.echo(
                        f"skipped {record.topic}[{record.partition}]@{record.offset}: not an alert",
                        err=True,
                    )
                    continue
                if score >= min_score:
                    yield TailedAlert(raw, fields, record.partition, record.offset)


def format_alert(alert: dict[str, Any], color: bool = True) -> str:
    r"""One readable line: time, score against threshold, card, amount, terminal, reasons.

    >>> print(format_alert({"event_time": "2024-05-01T10:00:00.000+00:00", "score": 0.93,
    ...     "threshold": 0.5, "card_id": "C1", "amount": 412.5, "terminal_id": "T9",
    ...     "scorer": "model", "model_version": 4, "latency_ms": 6.2,
    ...     "reasons": [{"feature": "amount_z", "value": 4.1, "contribution": 1.7}]},
    ...     color=False).replace("  ", "\n"))
    2024-05-01 10:00:00
    score 0.930 (>= 0.500)
    card C1
    amount 412.50
    terminal T9
    model v4
    6 ms
    amount_z=4.1 (+1.70)
    """
    score = float(alert.get("score", 0.0))
    card = str(alert.get("card_id"))
    if color:
        shown_score = click.style(f"score {score:.3f}", fg="red" if score >= 0.9 else "yellow",
                                  bold=score >= 0.9)  # fmt: skip
        card = click.style(card, bold=True)
    else:
        shown_score = f"score {score:.3f}"
    scorer = "model v{}".format(alert.get("model_version", 0))
    if alert.get("scorer") != "model":
        scorer = "rules prior"
    reasons = ", ".join(
        f"{r['feature']}={r['value']:.4g} ({r['contribution']:+.2f})"
        for r in (alert.get("reasons") or [])[:3]
    )
    fields = [
        str(alert.get("event_time", ""))[:19].replace("T", " "),
        f"{shown_score} (>= {float(alert.get('threshold', 0.0)):.3f})",
        f"card {card}",
        f"amount {float(alert.get('amount', 0.0)):.2f}",
        f"terminal {alert.get('terminal_id')}",
        scorer,
        f"{float(alert.get('latency_ms', 0.0)):.0f} ms",
    ]
    if reasons:
        fields.append(reasons)
    return "  ".join(fields)


def _close_quietly(consumer: Consumer) -> None:
    """Close without kafka-python's "Metadata refresh: failed Cancelled" on the way out."""
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        consumer.close()
    finally:
        kafka_log.setLevel(level)


@click.group("alerts")
def alerts() -> None:
    """Read the alerts the service publishes (topic FRAUDSTREAM_TOPIC_ALERTS)."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _stop_on_sigterm() -> Any:
    """SIGTERM stops a follow like Ctrl-C (whole lines out, the summary, exit 0).

    Returns the handler it replaced (``None`` off the main thread, where Python
    delivers no signal).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _interrupt)


@alerts.command("tail")
@click.option(
    "--from-beginning", is_flag=True, help="Start at the oldest alert kept, not at new ones."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON alert per line (the default when stdout is not a terminal).",
)
@click.option(
    "--min-score",
    type=FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Only alerts scored at least this high.",
)
@click.option("--topic", type=TOPIC, help="Alerts topic (default from settings).")
@click.option("--max-alerts", "-n", type=click.IntRange(min=1), help="Stop after this many alerts.")
@click.option(
    "--idle-timeout",
    type=FloatRange(min=0, min_open=True),
    help="Stop after this many seconds without a new record (default: follow until Ctrl-C).",
)
@click.pass_obj
def tail(
    settings: Settings,
    from_beginning: bool,
    as_json: bool,
    min_score: float,
    topic: str | None,
    max_alerts: int | None,
    idle_timeout: float | None,
) -> None:
    """Follow the alerts topic: readable and coloured on a terminal, JSON lines when piped."""
    json_lines = as_json or not sys.stdout.isatty()
    name = topic or settings.topic_alerts
    consumer = open_alerts(settings, name, from_beginning=from_beginning)
    if not json_lines:
        click.echo(
            f"following {name} on {settings.bootstrap_servers}"
            f"{' from the beginning' if from_beginning else ''} (Ctrl-C to stop)",
            err=True,
        )
    shown = 0
    previous = _stop_on_sigterm()
    try:
        for alert in tail_alerts(consumer, min_score=min_score, idle_timeout_s=idle_timeout):
            if json_lines:
                click.echo(alert.raw.decode("utf-8", errors="replace").rstrip("\n"))
                sys.stdout.flush()
            else:
                click.echo(format_alert(alert.fields))
            shown += 1
            if max_alerts is not None and shown >= max_alerts:
                break
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `| head` closed the pipe: a normal way to stop
        # Python would complain when flushing stdout at exit; send the rest nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _close_quietly(consumer)
    if not json_lines:
        click.echo(f"{shown:,} alert(s) shown", err=True)


#: Mounted by :mod:`fraudstream.cli`.
COMMANDS: list[click.Command] = [alerts]
