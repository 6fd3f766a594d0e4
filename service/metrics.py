"""Prometheus metrics and the health endpoint.

Each :class:`Metrics` owns its own registry (no global state), so several
applications can run in one process (tests) without clashing. One small HTTP
server serves ``/metrics`` (Prometheus text format), ``/healthz`` (liveness:
the loops turn and make progress when records wait) and ``/readyz``
(readiness: Kafka and Redis reachable, partitions assigned and the last batch
committed, or nothing to do).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fraudstream.service.errors import ConfigurationError

_LATENCY_BUCKETS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)


class Metrics:
    """Every metric fraudstream exports, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "fraudstream_events_consumed", "Records consumed.", ["topic"], registry=r
        )
        self.processed = Counter(
            "fraudstream_transactions_processed", "Transactions scored.", registry=r
        )
        self.duplicates = Counter(
            "fraudstream_transactions_duplicate",
            "Transactions seen before (replays), not counted again.",
            registry=r,
        )
        self.dead_lettered = Counter(
            "fraudstream_dead_letters", "Records dead-lettered.", ["topic", "error"], registry=r
        )
        self.alerts = Counter("fraudstream_alerts", "Alerts published.", ["scorer"], registry=r)
        self.batch_size = Histogram(
            "fraudstream_batch_size",
            "Records per processed batch.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "fraudstream_batch_processing_seconds",
            "Time to process one batch, poll excluded.",
            buckets=tuple(b / 1000 for b in _LATENCY_BUCKETS_MS),
            registry=r,
        )
        self.end_to_end_ms = Histogram(
            "fraudstream_end_to_end_latency_ms",
            "Record produce time to decision, per transaction.",
            buckets=_LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.lag = Gauge(
            "fraudstream_consumer_lag",
            "Records behind the end of a partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.model_version = Gauge(
            "fraudstream_model_version",
            "Model version used for scoring (0 = rules prior).",
            registry=r,
        )
        self.model_refused = Counter(
            "fraudstream_model_versions_refused",
            "Model versions refused (unsigned, tampered or unreadable).",
            registry=r,
        )
        self.errors = Counter(
            "fraudstream_dependency_errors",
            "Errors talking to Kafka or Redis.",
            ["dependency"],
            registry=r,
        )
        self.labels_learnt = Counter("fraudstream_labels_learnt", "Labels learnt.", registry=r)
        self.labels_rejected = Counter(
            "fraudstream_labels_rejected",
            "Labels dead-lettered or duplicate.",
            ["reason"],
            registry=r,
        )
        self.progressive = Gauge(
            "fraudstream_progressive_metric",
            "Prequential metrics of the learner over its rolling window.",
            ["metric"],
            registry=r,
        )
        self.last_loop_s = Gauge(
            "fraudstream_last_loop_timestamp_seconds",
            "Wall time of the last turn of the processing loop.",
            registry=r,
        )

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return bytes(generate_latest(self.registry))


class HealthServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` from a daemon thread.

    Parameters
    ----------
    metrics
        What ``/metrics`` shows.
    ready
        Returns ``(ready, reason)``; ``/readyz`` answers 200 or 503 with the reason.
    live
        Returns ``(alive, reason)``; ``/healthz`` answers 200 or 503 with the reason.
    host, port
        Where to listen (``port`` 0: any free port, see :attr:`port`).

    Raises
    ------
    ConfigurationError
        When the port is taken, naming it and the setting that chooses it.
    """

    def __init__(
        self,
        metrics: Metrics,
        ready: Callable[[], tuple[bool, str]],
        live: Callable[[], tuple[bool, str]],
        host: str,
        port: int,
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        self.live = live
        handler = self._handler()
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ConfigurationError(
                f"metrics port {port} on {host} is taken by another process: stop it, or choose "
                "another port with FRAUDSTREAM_METRICS_PORT (0 turns the endpoint off)"
            ) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    self._reply(200, outer.metrics.exposition(), CONTENT_TYPE_LATEST)
                elif self.path.startswith("/healthz"):
                    alive, reason = outer.live()
                    self._reply(200 if alive else 503, (reason + "\n").encode())
                elif self.path.startswith("/readyz"):
                    ok, reason = outer.ready()
                    self._reply(200 if ok else 503, (reason + "\n").encode())
                else:
                    self._reply(404, b"not found\n")

            def _reply(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # scrapes every few seconds would flood the log

        return Handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
