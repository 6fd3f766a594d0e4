"""Prometheus metrics and the health endpoint.

Each :class:`Metrics` owns its own registry (no global state), so several
applications can run in one process (tests) without clashing. One small HTTP
server serves ``/metrics`` (Prometheus text format), ``/healthz`` (liveness:
the loops turn and make progress when records wait) and ``/readyz``
(readiness: Kafka and Redis reachable, partitions assigned and the last batch
committed, or nothing to do).
"""

from __future__ import annotations

import collections
import errno
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fraudstream.service.errors import ConfigurationError

#: End-to-end latency buckets in seconds: fine around the targets (p50 5 ms, p99 25 ms),
#: coarse up to a minute for a scorer catching up on a backlog.
LATENCY_BUCKETS_S = (
    0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
#: Seconds a connection to the metrics and health endpoints may stay silent
#: before it is closed: a client that connects and sends nothing (or too
#: little) would otherwise hold a thread of the service for ever.
IDLE_CONNECTION_TIMEOUT_S = 10.0

_BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)

#: Progressive (prequential) metrics of the learner: report key -> (gauge name, help).
PROGRESSIVE_GAUGES: dict[str, tuple[str, str]] = {
    "roc_auc": (
        "fraudstream_progressive_roc_auc",
        "Learner's prequential ROC AUC over its rolling window of labels (ratio).",
    ),
    "average_precision": (
        "fraudstream_progressive_average_precision",
        "Learner's prequential average precision over its rolling window (ratio).",
    ),
    "precision": (
        "fraudstream_progressive_precision",
        "Share of window transactions scored at/above the alert threshold that were fraud.",
    ),
    "recall": (
        "fraudstream_progressive_recall",
        "Share of window frauds scored at/above the alert threshold.",
    ),
    "n": ("fraudstream_progressive_window_labels", "Labels in the rolling window (count)."),
    "positives": ("fraudstream_progressive_window_frauds", "Frauds in the rolling window (count)."),
    "alerts": (
        "fraudstream_progressive_window_alerts",
        "Window transactions scored at/above the alert threshold (count).",
    ),
}


class BatchHistogram(Histogram):
    """A :class:`~prometheus_client.Histogram` that takes a whole batch of values at once.

    ``observe_many`` gives the same buckets, ``_count`` and ``_sum`` as one
    ``observe`` per value, in a handful of numpy calls: ``searchsorted`` finds
    each value's bucket (the first upper bound ``>=`` the value, as ``observe``
    does), ``bincount`` counts them, and each non-empty bucket and the sum are
    incremented once. It relies on two attributes of prometheus-client's
    ``Histogram`` (``_upper_bounds``, the sorted bounds ending in ``+Inf``, and
    ``_buckets``/``_sum``, per-bucket and sum values), stable since 0.4 and
    checked against ``observe`` by a unit test. Non-finite values are ignored.

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry
    >>> h = BatchHistogram("x_seconds", "x", buckets=(0.1, 1), registry=CollectorRegistry())
    >>> h.observe_many(np.array([0.05, 0.1, 0.5, 3.0]))
    >>> [(s.labels.get("le"), s.value) for s in h.collect()[0].samples if s.name.endswith("bucket")]
    [('0.1', 2.0), ('1.0', 3.0), ('+Inf', 4.0)]
    """

    def observe_many(self, values: np.ndarray | Sequence[float]) -> None:
        """Observe every value of ``values`` (one call per batch, not per value)."""
        array = np.asarray(values, dtype=np.float64)
        array = array[np.isfinite(array)]
        if not len(array):
            return
        self._raise_if_not_observable()  # type: ignore[no-untyped-call]  # prometheus-client's own check
        bounds = np.asarray(self._upper_bounds, dtype=np.float64)
        counts = np.bincount(np.searchsorted(bounds, array, side="left"), minlength=len(bounds))
        self._sum.inc(float(array.sum()))
        for bucket, count in zip(self._buckets, counts.tolist(), strict=False):
            if count:
                bucket.inc(count)


class Metrics:
    """Every metric fraudstream exports, in one registry.

    Names follow Prometheus conventions: counters end in ``_total`` when
    exposed, durations are in seconds, ratios and counts are separate gauges.
    Label values known in advance (scorer kinds, dependencies, roles) are
    created at start, so every series exists, at zero, before its first event.
    """

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
        self.not_keyed_by_card = Counter(
            "fraudstream_transactions_not_keyed_by_card",
            "Transactions whose record key is not their card id (scored; a card's "
            "transactions may then be read out of order and by several scorers).",
            registry=r,
        )
        self.alerts = Counter(
            "fraudstream_alerts",
            "Alerts published, by scorer (rules prior or model).",
            ["scorer"],
            registry=r,
        )
        self.batch_size = Histogram(
            "fraudstream_batch_size",
            "Records per processed batch.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "fraudstream_batch_processing_seconds",
            "Time to process one batch, poll excluded.",
            buckets=_BATCH_SECONDS_BUCKETS,
            registry=r,
        )
        self.end_to_end_s = BatchHistogram(
            "fraudstream_end_to_end_latency_seconds",
            "Record produce time to decision, one observation per scored transaction.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.lag = Gauge(
            "fraudstream_consumer_lag",
            "Records behind the end of a partition, per consuming role (scorer, learner).",
            ["role", "topic", "partition"],
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
        self.records_lost = Counter(
            "fraudstream_records_lost",
            "Records deleted from Kafka before this group read them (retention, "
            "delete-records, a truncated partition): never processed.",
            ["topic"],
            registry=r,
        )
        self.last_error_s = Gauge(
            "fraudstream_dependency_last_error_timestamp_seconds",
            "Wall time of the last error talking to a dependency (0: none yet).",
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
        self.labels_waiting = Gauge(
            "fraudstream_labels_waiting",
            "Labels waiting for their transaction's feature snapshot (label_wait_s).",
            registry=r,
        )
        self.learner_version = Gauge(
            "fraudstream_learner_model_version",
            "Last model version the learner published (0: none yet).",
            registry=r,
        )
        self.learner_active = Gauge(
            "fraudstream_learner_active",
            "1 while this process's learner holds the learner lease and learns, 0 on standby.",
            registry=r,
        )
        self.learner_published_s = Gauge(
            "fraudstream_learner_last_publish_timestamp_seconds",
            "Wall time the learner last published a model version (0: never).",
            registry=r,
        )
        self.progressive = {
            key: Gauge(name, help_text, registry=r)
            for key, (name, help_text) in PROGRESSIVE_GAUGES.items()
        }
        for gauge in self.progressive.values():
            gauge.set(float("nan"))  # undefined until the learner publishes
        self.insecure_signing_key = Gauge(
            "fraudstream_insecure_signing_key",
            "1 when model versions are signed with the built-in development key.",
            registry=r,
        )
        self.last_loop_s = Gauge(
            "fraudstream_last_loop_timestamp_seconds",
            "Wall time of the last turn of the processing loop.",
            registry=r,
        )
        for scorer in ("rules", "model"):
            self.alerts.labels(scorer)
        for dependency in ("kafka", "redis"):
            self.errors.labels(dependency)
            self.last_error_s.labels(dependency)

    def observe_latencies_ms(self, latencies_ms: np.ndarray) -> None:
        """One end-to-end latency observation per transaction of a batch (milliseconds in)."""
        self.end_to_end_s.observe_many(np.asarray(latencies_ms, dtype=np.float64) / 1000.0)

    def count_dead_letters(self, topic: str, error_classes: Iterable[str]) -> None:
        """Count a batch's dead letters sent to ``topic``: one increment per error class."""
        for error, count in collections.Counter(error_classes).items():
            self.dead_lettered.labels(topic, error).inc(count)

    def dependency_error(self, dependency: str) -> None:
        """Count an error talking to ``kafka`` or ``redis`` and remember when it happened."""
        self.errors.labels(dependency).inc()
        self.last_error_s.labels(dependency).set(time.time())

    def model_published(self, version: int, report: Mapping[str, object]) -> None:
        """The learner published ``version``; ``report`` holds its progressive metrics."""
        self.learner_version.set(version)
        self.learner_published_s.set(time.time())
        for key, gauge in self.progressive.items():
            value = report.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                gauge.set(float(value))

    def report_lag(self, role: str, lags: Mapping[tuple[str, int], int]) -> None:
        """Set the lag of every partition ``role`` consumes; forget partitions it lost."""
        current = {(role, topic, str(partition)) for topic, partition in lags}
        for labels in list(self._lag_labels()):
            if labels[0] == role and labels not in current:
                self.lag.remove(*labels)
        for (topic, partition), lag in lags.items():
            self.lag.labels(role, topic, str(partition)).set(lag)

    def _lag_labels(self) -> list[tuple[str, str, str]]:
        return [
            (s.labels["role"], s.labels["topic"], s.labels["partition"])
            for family in self.lag.collect()
            for s in family.samples
        ]

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return bytes(generate_latest(self.registry))


def bind_problem(exc: OSError | UnicodeError, host: str, port: int) -> ConfigurationError:
    """Why the metrics endpoint cannot listen on ``host``:``port``, and what to do, in one line.

    >>> import errno
    >>> str(bind_problem(OSError(errno.EADDRNOTAVAIL, "Cannot assign"), "8.8.8.8", 9108))[:60]
    'metrics host 8.8.8.8 is not an address of this machine: set '
    """
    fix_port = "choose another port with FRAUDSTREAM_METRICS_PORT (0 turns the endpoint off)"
    fix_host = (
        "set FRAUDSTREAM_METRICS_HOST to an address of this machine (127.0.0.1: this machine "
        "only, 0.0.0.0: every interface)"
    )
    reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return ConfigurationError(
            f"metrics port {port} on {host} is taken by another process: stop it, or {fix_port}"
        )
    if ":" in host and isinstance(exc, socket.gaierror):
        return ConfigurationError(
            f"metrics host {host} is an IPv6 address, and the metrics endpoint listens on IPv4 "
            f"only: {fix_host}"
        )
    if isinstance(exc, socket.gaierror | UnicodeError):
        return ConfigurationError(
            f"metrics host {host!r} is not a name of this machine ({reason}): {fix_host}"
        )
    if isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
        return ConfigurationError(
            f"metrics host {host} is not an address of this machine: {fix_host}"
        )
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        low = " (ports below 1024 need root or the CAP_NET_BIND_SERVICE capability)"
        return ConfigurationError(
            f"metrics port {port} on {host} may not be used by this process"
            f"{low if 0 < port < 1024 else ''}: {fix_port}"
        )
    return ConfigurationError(
        f"the metrics endpoint cannot listen on {host}:{port} ({reason}): check "
        "FRAUDSTREAM_METRICS_HOST and FRAUDSTREAM_METRICS_PORT (0 turns the endpoint off)"
    )


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
        When it cannot listen on ``host``:``port`` (see :func:`bind_problem`).
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
        except (OSError, UnicodeError) as exc:
            raise bind_problem(exc, host, port) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._server.server_address[1])

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = IDLE_CONNECTION_TIMEOUT_S

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
        """Serve in a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
