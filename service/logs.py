"""Log output: readable text for people, or one JSON object per line for collectors.

:func:`configure_logging` is called once by the ``fraudstream`` command
(:mod:`fraudstream.cli`) with ``FRAUDSTREAM_LOG_LEVEL`` and
``FRAUDSTREAM_LOG_FORMAT``. The service logs lifecycle events only (start,
partitions assigned, model versions used and published, back-off, stop): one
line each, never one per transaction, so the JSON stream stays small enough
to ship and alert on.

Examples
--------
>>> import logging
>>> record = logging.LogRecord("fraudstream.service.app", logging.INFO, "app.py", 1,
...     "published model version %s", (3,), None)
>>> line = JsonFormatter().format(record)
>>> import json; entry = json.loads(line)
>>> entry["level"], entry["logger"], entry["message"]
('INFO', 'fraudstream.service.app', 'published model version 3')
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

#: Attributes every LogRecord has; anything else was passed with ``extra=`` and is kept.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record.

    Keys: ``ts``, ``level``, ``logger``, ``message``, extras, and ``exception`` (the traceback as
    one string) when there is one.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time of each record (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


class HeldOffsetsNote(logging.Filter):
    """kafka-python's "UnstableOffsetCommitError" lines, as one explanation every ``every_s``.

    In exactly-once mode, a scorer that stopped without ending its transaction
    (killed, its machine lost) leaves the offsets of its partitions held until the
    broker aborts that transaction. The member that takes them over retries its
    offset fetch about ten times a second meanwhile, each time logging an
    ERROR line that says neither why nor what to do. The first line, and one
    every ``every_s`` after it, becomes one WARNING that says both; the others
    are dropped and counted in the next one.

    Examples
    --------
    >>> clock = iter([0.0, 1.0, 2.0, 31.0]).__next__
    >>> note = HeldOffsetsNote(every_s=30.0, clock=clock)
    >>> def record(msg, *args):
    ...     return logging.LogRecord("kafka.coordinator.consumer", logging.ERROR, "", 0,
    ...                              msg, args, None)
    >>> line = "Unknown error fetching offsets for %s: %s"
    >>> error = "[Error 88] UnstableOffsetCommitError"
    >>> first = record(line, "TopicPartition(topic='tx', partition=2)", error)
    >>> note.filter(first), first.levelname
    (True, 'WARNING')
    >>> print(first.getMessage())  # doctest: +ELLIPSIS
    offsets of TopicPartition(topic='tx', partition=2) are held by an open transaction ...
    >>> note.filter(record(line, "tp", error)), note.filter(record(line, "tp", error))
    (False, False)
    >>> again = record(line, "tp", error)
    >>> note.filter(again), again.getMessage().endswith("(2 more such answers since the last note)")
    (True, True)
    >>> note.filter(record("Unknown error fetching offsets for %s: %s", "tp", "[Error 7]"))
    True
    """

    def __init__(self, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.every_s, self._clock = every_s, clock
        self._last: float | None = None
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the first held-offsets line of a period, drop the rest."""
        if "UnstableOffsetCommitError" not in record.getMessage():
            return True
        now = self._clock()
        if self._last is not None and now - self._last < self.every_s:
            self._dropped += 1
            return False
        where = record.args[0] if isinstance(record.args, tuple) and len(record.args) > 1 else ""
        record.msg = (
            "offsets of %s are held by an open transaction of a scorer that stopped without "
            "ending it (UnstableOffsetCommitError): this member polls nothing until the "
            "broker aborts it (after FRAUDSTREAM_TRANSACTION_TIMEOUT_S of that scorer, 60 s "
            "by default) or that scorer is restarted with its FRAUDSTREAM_TRANSACTIONAL_ID"
        )
        record.args = (where or "a partition",)
        if self._dropped:
            record.msg += f" ({self._dropped} more such answers since the last note)"
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self._last, self._dropped = now, 0
        return True


class KafkaLogThrottle(logging.Filter):
    """kafka-python's repeated lines: one per logger and message every ``every_s``.

    While a broker is away, kafka-python logs every reconnection attempt,
    metadata refresh and coordinator lookup, each time (about ten lines a second
    from one scorer, measured); the service's own lines, which say what it does
    about it, drown. The first line of each kind (logger and message template)
    passes, then one every ``every_s``, saying how many like it were dropped in
    between (as librdkafka suppresses repeated connection errors). Records of
    other loggers pass untouched.

    Examples
    --------
    >>> clock = iter([0.0, 1.0, 2.0, 31.0]).__next__
    >>> throttle = KafkaLogThrottle(every_s=30.0, clock=clock)
    >>> def record(name, msg, *args):
    ...     return logging.LogRecord(name, logging.ERROR, "", 0, msg, args, None)
    >>> lost = "Connection failed: %s"
    >>> throttle.filter(record("kafka.net.manager", lost, "111 ECONNREFUSED"))
    True
    >>> throttle.filter(record("kafka.net.manager", lost, "111 ECONNREFUSED"))
    False
    >>> throttle.filter(record("kafka.cluster", "Metadata refresh: failed %s", "refused"))
    True
    >>> throttle.filter(record("fraudstream.service.loop", "retrying after back-off"))
    True
    >>> later = record("kafka.net.manager", lost, "111 ECONNREFUSED")
    >>> throttle.filter(later), later.getMessage()
    (True, 'Connection failed: 111 ECONNREFUSED (1 more like it dropped in the last 31 s)')
    """

    #: Kinds remembered at most (then forgotten all at once: a line more, never fewer).
    MAX_KINDS = 1000

    def __init__(self, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.every_s, self._clock = every_s, clock
        #: (logger, message template) -> [when last passed, dropped since]
        self._kinds: dict[tuple[str, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass the first line of a kind in each period, drop (and count) the others."""
        if record.name != "kafka" and not record.name.startswith("kafka."):
            return True
        now = self._clock()
        kind = (record.name, str(record.msg))
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self.every_s:
            seen[1] += 1
            return False
        if len(self._kinds) >= self.MAX_KINDS:
            self._kinds.clear()
        if seen is not None and seen[1]:
            record.msg = (
                f"{record.msg} ({seen[1]:.0f} more like it dropped in the last "
                f"{now - seen[0]:.0f} s)"
            )
        self._kinds[kind] = [now, 0]
        return True


#: The held-offsets note on kafka-python's consumer coordinator (installed once).
_HELD_OFFSETS = HeldOffsetsNote()

#: The handler :func:`configure_logging` installed last (replaced, never stacked).
_installed: logging.Handler | None = None


def configure_logging(level: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) as text or JSON.

    Calling it again replaces the handler it installed before (no doubled
    lines) and leaves other handlers (an embedding application's, a test
    runner's) alone. Kafka's client logs only warnings; its selector's
    GIL-contention warnings (expected with a scorer and a learner in one
    process) are dropped, its repeated held-offsets errors become one
    explanation every 30 s (:class:`HeldOffsetsNote`), and any other line it
    repeats passes once every 30 s (:class:`KafkaLogThrottle`).
    """
    global _installed
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    )
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(KafkaLogThrottle())
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    _installed = handler
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # kafka-python 3 warns whenever another thread holds the GIL for >100 ms;
    # with a scorer and a learner in one process that is expected, not a fault.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    coordinator = logging.getLogger("kafka.coordinator.consumer")
    if _HELD_OFFSETS not in coordinator.filters:
        coordinator.addFilter(_HELD_OFFSETS)
