"""Keyed, idempotent sending to Kafka with delivery checks and a progress bar.

Every producer command sends through :class:`KafkaSink`: the client comes
from :func:`fraudstream.service.kafka.make_producer` (``acks=all``, idempotence on, so
retries never duplicate or reorder a key's records) and every send is
tracked like :class:`fraudstream.service.kafka.DeliveryTracker` does (which it is),
flushed every ``flush_every`` records, so a failed delivery stops the run with a
:class:`fraudstream.service.kafka.DeliveryError` instead of being lost.

Waits are bounded: a broker that goes away part-way makes a send or a flush
fail after about :data:`DELIVERY_TIMEOUT_S`, never hang the command.
"""

from __future__ import annotations

import contextlib
import time
from types import TracebackType
from typing import Any

from kafka.errors import InvalidTimestampError, KafkaError
from tqdm import tqdm

from fraudstream.service.errors import FraudstreamError
from fraudstream.service.kafka import DeliveryError, DeliveryTracker, make_producer
from fraudstream.service.kafka.protocols import SendFuture
from fraudstream.service.settings import Settings

#: Seconds a record may take to be confirmed (retries included) before the run
#: fails; also the longest a send waits for metadata or buffer space.
DELIVERY_TIMEOUT_S = 30.0

#: Seconds a flush waits beyond the delivery timeout (the producer's own
#: expiry of records comes first; this is the hard bound).
_FLUSH_MARGIN_S = 5.0

#: Seconds a forced close waits for the producer's network thread to end.
_FORCE_CLOSE_WAIT_S = 2.0

#: Longest single wait inside a flush, so the deadline is kept (kafka-python's
#: flush waits ``timeout`` for *each* batch).
_FLUSH_STEP_S = 0.2

#: Seconds the records in flight get to be confirmed after Ctrl-C, before the
#: run says what Kafka confirmed.
INTERRUPT_FLUSH_S = 5.0


class RunCancelledError(FraudstreamError):
    """Ctrl-C (or SIGTERM, through the CLI) stopped a producer run part-way.

    The message says what Kafka confirmed and how to resume; the command exits
    with 128 + the signal's number (130 for Ctrl-C).
    """


class KafkaSink(DeliveryTracker):
    """A :class:`~fraudstream.service.kafka.DeliveryTracker` over its own producer.

    Use as a context manager.

    ``send``, ``flush``, ``pending``, ``delivered`` and ``last_delivered`` work
    as the tracker's: a failed delivery raises
    :class:`~fraudstream.service.kafka.DeliveryError`. Unlike the tracker's,
    every wait is bounded by ``delivery_timeout_s`` (a broker that dies
    part-way is an error, not a hang), and deliveries are also counted by
    topic, with the ``line`` given to ``send``. Leaving the ``with`` block
    flushes (unless an exception is on its way) and closes.

    Parameters
    ----------
    settings
        Bootstrap servers and client id come from here.
    client_suffix
        Appended to ``settings.client_id`` (e.g. ``simulator``), for broker logs.
    flush_every
        Pending sends after which the sink waits for delivery (bounds memory
        and reports failures early; default 20,000).
    linger_ms
        Producer linger; larger batches when sending as fast as possible.
    delivery_timeout_s
        Longest time a record may take to be confirmed, and a send may block
        (default :data:`DELIVERY_TIMEOUT_S`).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client_suffix: str = "producer",
        flush_every: int = 20_000,
        linger_ms: int = 5,
        delivery_timeout_s: float | None = None,
        **producer_overrides: Any,
    ) -> None:
        timeout_s = DELIVERY_TIMEOUT_S if delivery_timeout_s is None else delivery_timeout_s
        delivery_ms = max(round(timeout_s * 1000), linger_ms + 2000)
        bounded: dict[str, Any] = {
            "delivery_timeout_ms": delivery_ms,
            # kafka-python wants delivery_timeout_ms >= linger_ms + request_timeout_ms.
            "request_timeout_ms": min(30_000, max(1000, (delivery_ms - linger_ms) // 2)),
            "max_block_ms": delivery_ms,
        }
        producer = make_producer(
            settings,
            client_id=f"{settings.client_id}-{client_suffix}",
            linger_ms=linger_ms,
            **{**bounded, **producer_overrides},
        )
        # The parent's flush_every stays off: this class flushes by itself (bounded).
        super().__init__(producer, flush_every=None)
        self.settings = settings
        self.sink_flush_every = flush_every
        self.delivery_timeout_s = delivery_ms / 1000
        self._sent: list[tuple[SendFuture, str, int | None]] = []
        #: Topic -> records delivered to it.
        self.delivered_by_topic: dict[str, int] = {}
        #: Topic -> the largest ``line`` of a record delivered to it (sent with one).
        self.last_delivered_line: dict[str, int] = {}
        #: The smallest ``line`` of a record a flush found failed or unconfirmed (any topic).
        self.first_undelivered_line: int | None = None

    def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        line: int | None = None,
    ) -> None:
        """Hand one record to the producer (asynchronous); ``line``: where it came from.

        Raises ``DeliveryError`` if the producer refuses it (or cannot take it
        within the delivery timeout), or if the flush that ``flush_every``
        triggers finds an earlier record undelivered.
        """
        try:
            future: SendFuture = self.producer.send(
                topic,
                value=value,
                key=key,
                headers=headers,
                partition=partition,
                timestamp_ms=timestamp_ms,
            )
        except KafkaError as exc:
            raise DeliveryError(f"could not send to {topic}: {exc}") from exc
        self._sent.append((future, topic, line))
        if len(self._sent) >= self.sink_flush_every:
            self.flush()

    @property
    def pending(self) -> int:
        """Records handed over and not yet confirmed."""
        return len(self._sent)

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait for all pending sends (bounded); return how many were delivered.

        Parameters
        ----------
        timeout_s
            Longest wait; default the delivery timeout plus a few seconds.

        Raises
        ------
        DeliveryError
            When any record failed, or was not confirmed in time.
        """
        limit = self.delivery_timeout_s + _FLUSH_MARGIN_S if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        while True:
            step = min(_FLUSH_STEP_S, max(0.0, deadline - time.monotonic()))
            try:
                self.producer.flush(timeout=step)
                break
            except KafkaError:  # KafkaTimeoutError: a batch is not done yet
                if time.monotonic() >= deadline:
                    break
        failures: list[tuple[str, BaseException | None]] = []
        count = 0
        for future, topic, line in self._sent:
            if future.succeeded():
                count += 1
                meta = future.value
                self.last_delivered[meta.topic] = (meta.partition, meta.offset)
                self.delivered_by_topic[topic] = self.delivered_by_topic.get(topic, 0) + 1
                if line is not None:
                    last = self.last_delivered_line.get(topic, 0)
                    self.last_delivered_line[topic] = max(last, line)
                continue
            if future.failed():
                failures.append((repr(future.exception), future.exception))
            else:
                failures.append((f"not confirmed within {limit:.0f} s", None))
            if line is not None:
                first = self.first_undelivered_line
                self.first_undelivered_line = line if first is None else min(first, line)
        self._sent.clear()
        self.delivered += count
        if failures:
            raise DeliveryError(
                f"{len(failures):,} record(s) not delivered to Kafka at "
                f"{self.settings.bootstrap_servers}, first: {_first_cause(failures)}"
            )
        return count

    def warm_up(self, topics: list[str] | set[str]) -> None:
        """Fetch the topics' metadata now, so the first paced send is not late by a round trip.

        Raises ``DeliveryError`` when the metadata does not come within the delivery timeout.
        """
        for topic in topics:
            try:
                self.producer.partitions_for(topic)
            except KafkaError as exc:
                raise DeliveryError(f"could not get the partitions of {topic}: {exc}") from exc

    def close(self, timeout_s: float = 30.0) -> None:
        """Close the producer (after :meth:`flush` when delivery matters).

        Records still unconfirmed after ``timeout_s`` are dropped (the producer is
        closed by force), never waited for longer.
        """
        try:
            self.producer.close(timeout=timeout_s)
        except KafkaError:
            # kafka-python 3.0 flushes first in close() and raises there when records are
            # still unconfirmed (the broker is gone), never reaching its own force close:
            # force it here, which fails the records left, then close for good.
            sender = getattr(self.producer, "_sender", None)
            if sender is not None:
                sender.force_close()
                sender.join(_FORCE_CLOSE_WAIT_S)
            with contextlib.suppress(KafkaError):
                self.producer.close(timeout=0)

    def __enter__(self) -> KafkaSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            # An error or Ctrl-C is on its way: a few seconds for what is in flight, no more
            # (none at all once Kafka has failed to take the records, or the run has waited
            # for them already).
            self.close(0.0 if isinstance(exc, DeliveryError | RunCancelledError) else 5.0)
            return
        try:
            self.flush()  # a delivery failure surfaces here, never silently
        except BaseException:
            self.close(0.0)
            raise
        self.close()


def progress_bar(total: int | None, *, enabled: bool, desc: str, unit: str = "ev") -> tqdm[Any]:
    """A tqdm bar with rate and ETA (to stderr), or a disabled one."""
    return tqdm(
        total=total,
        disable=not enabled,
        desc=desc,
        unit=unit,
        unit_scale=True,
        mininterval=0.5,
        smoothing=0.1,
        dynamic_ncols=True,
    )


def _first_cause(failures: list[tuple[str, BaseException | None]]) -> str:
    """What to say of a flush's failures: the first record refused for itself.

    The broker refuses a whole batch for one bad record; kafka-python fails
    the others with a plain ``KafkaError`` ("part of a batch which had ... invalid
    records"), which says nothing of the cause when it comes first.

    >>> from kafka.errors import KafkaError
    >>> late = InvalidTimestampError("out of range")
    >>> _first_cause([("KafkaError('part of a batch')", KafkaError("part of a batch")),
    ...               ("InvalidTimestampError('out of range')", late)])
    "InvalidTimestampError('out of range') (a record timestamp further from the broker's clock \
than the topic's message.timestamp.after.max.ms or before.max.ms allow; the rest of its batch \
was refused with it)"
    """
    said, exc = next(
        ((said, exc) for said, exc in failures if exc is not None and type(exc) is not KafkaError),
        failures[0],
    )
    if isinstance(exc, InvalidTimestampError):
        said += (
            " (a record timestamp further from the broker's clock than the topic's "
            "message.timestamp.after.max.ms or before.max.ms allow; the rest of its batch was "
            "refused with it)"
        )
    return said
