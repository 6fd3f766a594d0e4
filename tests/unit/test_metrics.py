"""The health endpoint over real HTTP on a free port (no Kafka or Redis needed)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from fraudstream.devstack import free_port
from fraudstream.service.errors import ConfigurationError
from fraudstream.service.metrics import HealthServer, Metrics


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_metrics_healthz_and_readyz() -> None:
    metrics = Metrics()
    state = {
        "ready": (False, "redis unreachable: connection refused"),
        "live": (True, "ok"),
    }
    server = HealthServer(
        metrics, lambda: state["ready"], lambda: state["live"], "127.0.0.1", free_port()
    )
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        metrics.processed.inc(7)
        metrics.dead_lettered.labels("transactions.dlq", "DecodeError").inc()
        code, body = _get(f"{base}/metrics")
        assert code == 200
        assert "fraudstream_transactions_processed_total 7.0" in body
        assert (
            'fraudstream_dead_letters_total{error="DecodeError",topic="transactions.dlq"} 1.0'
            in body
        )

        assert _get(f"{base}/readyz") == (503, "redis unreachable: connection refused\n")
        state["ready"] = (True, "ready")
        assert _get(f"{base}/readyz") == (200, "ready\n")

        assert _get(f"{base}/healthz") == (200, "ok\n")
        state["live"] = (False, "scorer: stalled, no batch done for 130 s with 40 records waiting")
        assert _get(f"{base}/healthz") == (503, state["live"][1] + "\n")
        assert _get(f"{base}/nope")[0] == 404
    finally:
        server.stop()


def test_a_taken_port_is_one_clear_error_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError) as error:
            HealthServer(Metrics(), lambda: (True, ""), lambda: (True, ""), "127.0.0.1", port)
    assert str(error.value) == (
        f"metrics port {port} on 127.0.0.1 is taken by another process: stop it, or choose "
        "another port with FRAUDSTREAM_METRICS_PORT (0 turns the endpoint off)"
    )
