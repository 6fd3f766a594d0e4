"""An application that embeds fraudstream in its own process.

It has its own package named ``service`` next to fraudstream's.

Run from this folder (so that ``service`` is the application's package)::

    FRAUDSTREAM_BOOTSTRAP_SERVERS=127.0.0.1:9092 python app.py

The application builds :class:`fraudstream.Settings` (from ``FRAUDSTREAM_*``
variables, or explicitly), runs :class:`fraudstream.Application` in a thread
beside its own work, checks readiness with ``app.ready()`` and stops it with
``app.stop()``. ``--check`` starts, waits until ready, prints one JSON line
about what was imported from where, and stops (the test runs that).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time

import fraudstream

# The application's own package: this folder comes first on sys.path.
from service import NAME
from service.payments import describe


def start(settings: fraudstream.Settings) -> tuple[fraudstream.Application, threading.Thread]:
    """Start fraudstream's scorer and learner in a background thread."""
    app = fraudstream.Application(settings)
    app.ensure_topics()
    thread = threading.Thread(target=app.run, name="fraudstream", daemon=True)
    thread.start()
    return app, thread


def wait_ready(app: fraudstream.Application, timeout_s: float = 60.0) -> str:
    """Wait until fraudstream reports ready; return its readiness reason."""
    deadline = time.monotonic() + timeout_s
    ready, reason = app.ready()
    while not ready and time.monotonic() < deadline:
        time.sleep(0.2)
        ready, reason = app.ready()
    if not ready:
        raise SystemExit(f"fraudstream not ready after {timeout_s:.0f} s: {reason}")
    return reason


def main(argv: list[str]) -> None:
    """Run the application's own work and fraudstream side by side."""
    settings = fraudstream.Settings()  # FRAUDSTREAM_* from the environment
    app, thread = start(settings)
    try:
        reason = wait_ready(app)
        if "--check" in argv:
            import service as own

            print(
                json.dumps(
                    {
                        "ready": reason,
                        "own_service": own.__file__,
                        "own_name": NAME,
                        "fraudstream_service": fraudstream.service.__file__,
                        "application": fraudstream.Application.__module__,
                        "payment": describe(12.5),
                    }
                )
            )
            return
        print(f"{NAME}: fraudstream ready ({reason}); Ctrl-C to stop", file=sys.stderr)
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        with contextlib.suppress(KeyboardInterrupt):
            stopped.wait()
    finally:
        app.stop()
        thread.join(timeout=60)


if __name__ == "__main__":
    main(sys.argv[1:])
