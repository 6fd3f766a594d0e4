"""Keyed, idempotent sending to Kafka with delivery checks and a progress bar.

Every producer command sends through :class:`KafkaSink`: the client comes
from :func:`fraudstream.service.kafka.make_producer` (``acks=all``, idempotence on, so
retries never duplicate or reorder a key's records) and every send goes
through :class:`fraudstream.service.kafka.DeliveryTracker` (which it is), flushed every
``flush_every`` records, so a failed delivery stops the run with a
:class:`fraudstream.service.kafka.DeliveryError` instead of being lost.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from tqdm import tqdm

from fraudstream.service.kafka import DeliveryTracker, make_producer
from fraudstream.service.settings import Settings


class KafkaSink(DeliveryTracker):
    """A :class:`~fraudstream.service.kafka.DeliveryTracker` over its own producer.

    Use as a context manager.

    ``send``, ``flush``, ``pending`` and ``delivered`` are the tracker's: a
    failed delivery raises :class:`~fraudstream.service.kafka.DeliveryError`. Leaving the
    ``with`` block flushes (unless an exception is on its way) and closes.

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
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client_suffix: str = "producer",
        flush_every: int = 20_000,
        linger_ms: int = 5,
        **producer_overrides: Any,
    ) -> None:
        producer = make_producer(
            settings,
            client_id=f"{settings.client_id}-{client_suffix}",
            linger_ms=linger_ms,
            **producer_overrides,
        )
        super().__init__(producer, flush_every=flush_every)
        self.settings = settings

    def warm_up(self, topics: list[str] | set[str]) -> None:
        """Fetch the topics' metadata now, so the first paced send is not late by a round trip."""
        for topic in topics:
            self.producer.partitions_for(topic)

    def close(self, timeout_s: float = 30.0) -> None:
        """Close the producer (after :meth:`flush` when delivery matters)."""
        self.producer.close(timeout=timeout_s)

    def __enter__(self) -> KafkaSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.flush()  # a delivery failure surfaces here, never silently
        finally:
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
