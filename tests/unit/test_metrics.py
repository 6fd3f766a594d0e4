"""The health endpoint over real HTTP on a free port (no Kafka or Redis needed)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from fraudstream.devstack import free_port
from fraudstream.service.metrics import HealthServer, Metrics


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_metrics_healthz_and_readyz() -> None:
    metrics = Metrics()
    state = {"ready": (False, "redis unreachable: connection refused")}
    server = HealthServer(
        metrics, lambda: state["ready"], "127.0.0.1", free_port(), live_within_s=30
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

        assert _get(f"{base}/healthz")[0] == 200  # the loop has not started: alive
        metrics.last_loop_s.set(time.time() - 120)  # a loop stalled for two minutes
        assert _get(f"{base}/healthz") == (503, "stalled\n")
        assert _get(f"{base}/nope")[0] == 404
    finally:
        server.stop()
