"""Simulated transactions and their delayed labels, to files or to Kafka.

:func:`stream_simulation` is what the demo calls to feed a running service:
transactions (key = card id) and their labels (same key, so they land on the
transaction's partition) interleaved in event-time order, optionally paced.

Kafka record timestamps are the wall-clock send time, not the event time:
the event time travels in the JSON (``timestamp``/``labeled_at``), and a
2018 or future record timestamp would trip the broker's retention or its
``log.message.timestamp.*.max.ms`` checks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from fraudstream.producers.files import is_stdio, open_output
from fraudstream.producers.labels import SOURCES, LabelDelay
from fraudstream.producers.pacing import Pacer
from fraudstream.producers.simulator import Simulation, SimulationConfig, format_times_ms, simulate
from fraudstream.producers.sink import (
    INTERRUPT_FLUSH_S,
    KafkaSink,
    RunCancelledError,
    progress_bar,
)
from fraudstream.service.kafka import DeliveryError, check_reachable, ensure_topics
from fraudstream.service.settings import Settings

_DEFAULT_DELAY = LabelDelay()


@dataclass(frozen=True)
class SimulatedLabels:
    """Label of every simulation row: when it arrives and who gave it."""

    labeled_ms: np.ndarray  # int64, > the row's time_ms
    source: np.ndarray  # int8 index into labels.SOURCES


@dataclass
class StreamStats:
    """What a producer run did."""

    transactions: int = 0
    labels: int = 0
    frauds: int = 0
    wall_s: float = 0.0
    max_lag_s: float = 0.0
    #: ``should_stop`` ended the run early (files written are complete up to there).
    stopped: bool = False

    @property
    def events(self) -> int:
        """Transactions plus labels."""
        return self.transactions + self.labels


def label_simulation(sim: Simulation, delay: LabelDelay) -> SimulatedLabels:
    """Draw every row's label delay (seeded by the simulation's seed)."""
    rng = np.random.default_rng([sim.config.seed, 0x1ABE1])  # own stream: labels never shift tx
    delay_ms, source = delay.sample(rng, sim.is_fraud)
    return SimulatedLabels(labeled_ms=sim.time_ms + delay_ms, source=source)


def label_rows(
    sim: Simulation, labels: SimulatedLabels, index: np.ndarray
) -> Iterator[dict[str, Any]]:
    """Label-contract dicts of the rows in ``index`` (plus ``card_id``, the Kafka key)."""
    cards = sim.card_names()
    width = max(8, len(str(len(sim) - 1)))
    prefix = sim.config.transaction_id_prefix
    columns = zip(
        index.tolist(),
        format_times_ms(labels.labeled_ms[index]),
        sim.is_fraud[index].tolist(),
        labels.source[index].tolist(),
        sim.customer[index].tolist(),
        strict=True,
    )
    for row, stamp, fraud, source, cust in columns:
        yield {
            "transaction_id": f"{prefix}{row:0{width}d}",
            "is_fraud": fraud,
            "labeled_at": stamp,
            "source": SOURCES[source],
            "card_id": cards[cust],
        }


def _never() -> bool:
    return False


def write_simulation(
    sim: Simulation,
    output: Path | None,
    labels_output: Path | None = None,
    *,
    delay: LabelDelay | None = None,
    progress: bool = False,
    should_stop: Callable[[], bool] = _never,
) -> StreamStats:
    """Write transactions (with ground truth) and/or labels as JSON Lines.

    Labels are written in the order they arrive (``labeled_at``). A path ending
    in ``.gz`` is gzip-compressed. Lines are written whole, and flushed (a gzip
    file with a sync flush) every 50,000 lines, so a process killed outright
    leaves readable data up to the last flush.

    Parameters
    ----------
    should_stop
        Asked before each line: ``True`` ends the writing there, the files
        closed complete with whole lines only (``stats.stopped``; the counts
        are the lines written). The CLI sets it on SIGINT and SIGTERM.
    """
    start = time.perf_counter()
    stats = StreamStats(frauds=int(sim.is_fraud.sum()))
    if output is not None:
        with (
            _named(output),
            open_output(output) as out,
            progress_bar(len(sim), enabled=progress, desc="transactions", unit="tx") as bar,
        ):
            lines = sim.to_json_lines(ground_truth=True)
            stats.transactions = _write_lines(out, lines, should_stop, bar)
        stats.stopped = stats.transactions < len(sim)
        stats.frauds = int(sim.is_fraud[: stats.transactions].sum())
    if labels_output is not None and not stats.stopped:
        labels = label_simulation(sim, delay or LabelDelay())
        order = np.argsort(labels.labeled_ms, kind="stable")
        rows = (
            orjson.dumps(r)
            for lo in range(0, len(order), 100_000)
            for r in label_rows(sim, labels, order[lo : lo + 100_000])
        )
        with _named(labels_output), open_output(labels_output) as out:
            stats.labels = _write_lines(out, rows, should_stop)
        stats.stopped = stats.labels < len(sim)
    stats.wall_s = time.perf_counter() - start
    return stats


@contextlib.contextmanager
def _named(path: Path) -> Iterator[None]:
    """Give an :class:`OSError` without a file name (a failed write or close) ``path``'s name.

    Parameters
    ----------
    path
        The output being written (``-``: standard output, named ``<stdout>``).
    """
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = "<stdout>" if is_stdio(path) else str(path)
        raise


def _write_lines(
    out: BinaryIO, lines: Iterable[bytes], should_stop: Callable[[], bool], bar: Any = None
) -> int:
    """Write ``lines`` (no newlines) to ``out`` until they end or ``should_stop``; how many."""
    written = 0
    buffer: list[bytes] = []
    for line in lines:
        if should_stop():
            break
        buffer.append(line)
        if len(buffer) >= 50_000:
            out.write(b"\n".join(buffer) + b"\n")
            out.flush()
            written += len(buffer)
            if bar is not None:
                bar.update(len(buffer))
            buffer.clear()
    if buffer:
        out.write(b"\n".join(buffer) + b"\n")
        written += len(buffer)
        if bar is not None:
            bar.update(len(buffer))
    return written


def simulation_events(
    sim: Simulation, labels: SimulatedLabels | None, *, chunk: int = 50_000
) -> Iterator[tuple[int, bool, bytes, bytes]]:
    """Transactions and labels merged in event-time order.

    Yields ``(event_ms, is_label, key, value)``. A label's event time is its
    ``labeled_at``, always later than its transaction's, so it always comes
    after it. Transactions carry no ground-truth field.
    """
    n = len(sim)
    if labels is None:
        times = sim.time_ms
        is_label = np.zeros(n, dtype=bool)
    else:
        times = np.concatenate([sim.time_ms, labels.labeled_ms])
        is_label = np.concatenate([np.zeros(n, dtype=bool), np.ones(n, dtype=bool)])
    order = np.argsort(times, kind="stable")  # ties: transactions (first half) first
    cards = sim.card_names()
    dumps = orjson.dumps
    for lo in range(0, order.shape[0], chunk):
        part = order[lo : lo + chunk]
        kinds = is_label[part]
        rows = part % n
        tx_rows = sim.rows(rows[~kinds], ground_truth=False)
        label_iter = label_rows(sim, labels, rows[kinds]) if labels is not None else iter(())
        for event_ms, label, row in zip(
            times[part].tolist(), kinds.tolist(), rows.tolist(), strict=True
        ):
            record = next(label_iter) if label else next(tx_rows)
            yield event_ms, label, cards[sim.customer[row]].encode(), dumps(record)


def stream_simulation(
    settings: Settings,
    config: SimulationConfig | None = None,
    *,
    label_delay: LabelDelay | None = _DEFAULT_DELAY,
    speed: float | None = None,
    fast_label_tail: bool = True,
    progress: bool = False,
    max_events: int | None = None,
) -> StreamStats:
    """Simulate and send transactions plus delayed labels to Kafka, in event-time order.

    This is the demo's feed: for example ``stream_simulation(settings,
    SimulationConfig(n_customers=500, n_terminals=1000, n_days=3, start=today),
    speed=3600)`` plays three days in about 72 minutes of wall time (one event
    hour per second), labels included.

    Parameters
    ----------
    settings
        Bootstrap servers, topics (``topic_transactions``, ``topic_labels``),
        topic creation policy and partitions.
    config
        The simulation (default: the handbook's full 183-day dataset).
    label_delay
        Label delay model; ``None`` sends no labels.
    speed
        Event seconds per wall second (1 = real time); ``None`` = as fast as possible.
    fast_label_tail
        After the last transaction, send the remaining labels (up to the label
        delay later in event time) at once instead of pacing them.
    progress
        Show a progress bar with rate and ETA on stderr.
    max_events
        Stop after this many events (for smoke runs).

    Returns
    -------
    StreamStats
        Counts delivered (every send is confirmed; a failure raises
        :class:`fraudstream.service.kafka.DeliveryError`).
    """
    config = config or SimulationConfig()
    sim = simulate(config)
    labels = label_simulation(sim, label_delay) if label_delay is not None else None
    topics = [settings.topic_transactions] + ([settings.topic_labels] if labels else [])
    check_reachable(settings)
    ensure_topics(
        settings,
        dict.fromkeys(topics, settings.topic_partitions),
        replication=settings.topic_replication,
        create=settings.create_topics,
    )
    pacer = Pacer(speed)
    stats = StreamStats()
    last_tx_ms = int(sim.time_ms[-1]) if len(sim) else 0
    total = len(sim) * (2 if labels else 1)
    if max_events is not None:
        total = min(total, max_events)
    start = time.perf_counter()
    linger_ms = 5 if pacer.paced else 20  # unpaced: bigger batches
    with (
        KafkaSink(settings, client_suffix="simulator", linger_ms=linger_ms) as sink,
        progress_bar(total, enabled=progress, desc="simulate", unit="ev") as bar,
    ):
        try:
            sink.warm_up(topics)
            for event_ms, is_label, key, value in simulation_events(sim, labels):
                if stats.events >= total:
                    break
                if not (fast_label_tail and is_label and event_ms > last_tx_ms):
                    pacer.wait(event_ms)
                if is_label:
                    sink.send(settings.topic_labels, value, key=key)
                    stats.labels += 1
                else:
                    sink.send(settings.topic_transactions, value, key=key)
                    stats.transactions += 1
                bar.update(1)
            sink.flush()
        except KeyboardInterrupt:
            raise _cancelled(settings, sink, len(sim)) from None
    # Rows are time-ordered, so the first ones are those sent.
    stats.frauds = int(sim.is_fraud[: stats.transactions].sum())
    stats.wall_s = time.perf_counter() - start
    stats.max_lag_s = pacer.max_lag_s
    return stats


def _cancelled(settings: Settings, sink: KafkaSink, total: int) -> RunCancelledError:
    """What Kafka confirmed of a simulation stream stopped by Ctrl-C.

    Records in flight get :data:`~fraudstream.producers.sink.INTERRUPT_FLUSH_S`
    to be confirmed first.
    """
    with contextlib.suppress(DeliveryError):
        sink.flush(timeout_s=INTERRUPT_FLUSH_S)
    transactions = sink.delivered_by_topic.get(settings.topic_transactions, 0)
    labels = sink.delivered_by_topic.get(settings.topic_labels, 0)
    return RunCancelledError(
        f"Kafka confirmed {transactions:,} of the simulation's {total:,} transactions and "
        f"{labels:,} labels; run the same command again to resume: transactions and labels "
        "already sent are recognised by id and not counted twice"
    )
