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


#: The handler :func:`configure_logging` installed last (replaced, never stacked).
_installed: logging.Handler | None = None


def configure_logging(level: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) as text or JSON.

    Calling it again replaces the handler it installed before (no doubled
    lines) and leaves other handlers (an embedding application's, a test
    runner's) alone. Kafka's client logs only warnings; its selector's
    GIL-contention warnings (expected with a scorer and a learner in one
    process) are dropped.
    """
    global _installed
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    )
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
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
