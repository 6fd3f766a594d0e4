"""`fraudstream serve` as an operator meets it: clear lines, answers while waiting, clean exits."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import http_get

from fraudstream.devstack import free_port
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.settings import Settings


def _log(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}-0.log").read_text(errors="replace")


class _Forwarder:
    """Forwards TCP connections from a port of its own to ``target``, once opened."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.port = free_port()
        self._server: socket.socket | None = None

    def open(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()


@pytest.fixture
def kafka_later(kafka_bootstrap: str) -> Iterator[_Forwarder]:
    """A bootstrap address where the session's broker appears once ``open()`` is called."""
    forwarder = _Forwarder(kafka_bootstrap)
    yield forwarder
    forwarder.close()


def test_serve_waiting_for_redis_says_where_and_what_to_do_and_stops_cleanly(
    make_settings: Callable[..., Settings],
    spawn_service: Callable[..., subprocess.Popen[bytes]],
    wait_for: Callable[..., None],
    tmp_path: Path,
) -> None:
    port, nothing_there = free_port(), free_port()
    url = f"redis://:hunter2@127.0.0.1:{nothing_there}/0"
    settings = make_settings(redis_url=url, metrics_port=port)
    process = spawn_service(settings, name="no-redis")

    wait_for(lambda: http_get(port, "/readyz")[0] == 503, 60, "/readyz to answer")
    _, reason = http_get(port, "/readyz")
    assert reason.startswith(f"Redis at redis://:***@127.0.0.1:{nothing_there}/0 is not reachable")
    assert http_get(port, "/healthz") == (
        200,
        f"ok (waiting for redis at redis://:***@127.0.0.1:{nothing_there}/0)\n",
    )
    wait_for(lambda: _log(tmp_path, "no-redis").count("Attempt ") >= 3, 30, "three attempts")

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    log = _log(tmp_path, "no-redis")
    waits = [line for line in log.splitlines() if "is Redis running there?" in line]
    assert len(waits) >= 3
    assert len(set(waits)) == len(waits), "the same line again and again"
    assert f"Redis at redis://:***@127.0.0.1:{nothing_there}/0 is not reachable" in waits[0]
    assert "FRAUDSTREAM_REDIS_URL" in waits[0] and "fraudstream dev up" in waits[0]
    assert "Attempt 1, next in 0.5 s" in waits[0] and "Attempt 2, next in 1.0 s" in waits[1]
    assert "hunter2" not in log
    assert "Traceback" not in log


def test_serve_waits_for_a_kafka_that_is_not_there_yet_then_scores(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    spawn_service: Callable[..., subprocess.Popen[bytes]],
    wait_for: Callable[..., None],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    kafka_later: _Forwarder,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    """A broker that starts after the service (a compose file, a cluster restart) delays it only.

    Before, ``serve`` gave up after kafka-python's 30 s bootstrap timeout and
    exited 1, so its orchestrator had to restart it.
    """
    port, where = free_port(), f"127.0.0.1:{kafka_later.port}"
    settings = make_settings(bootstrap_servers=where, metrics_port=port, publish_scores=True)
    process = spawn_service(settings, name="no-kafka")
    wait_for(lambda: _log(tmp_path, "no-kafka").count("Attempt ") >= 3, 60, "three attempts")
    assert http_get(port, "/readyz") == (503, f"kafka unreachable at {where}\n")
    assert http_get(port, "/healthz") == (200, f"ok (waiting for kafka at {where})\n")
    assert process.poll() is None

    kafka_later.open()
    wait_for(lambda: http_get(port, "/readyz")[0] == 200, 120, "the service to be ready")
    tx = make_transaction("late-kafka", "c1", "T1", 12.5, datetime.now(UTC))
    produce(kafka_bootstrap, settings.topic_transactions, [tx])
    scored = consume(kafka_bootstrap, settings.topic_scores, at_least=1, timeout_s=60)
    assert [r.key for r in scored] == [b"c1"]

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    log = _log(tmp_path, "no-kafka")
    waits = [line for line in log.splitlines() if "is the broker running?" in line]
    assert len(waits) >= 3 and len(set(waits)) == len(waits), "one line per attempt"
    assert f"kafka unreachable at {where}: no bootstrap server accepts connections" in waits[0]
    assert "FRAUDSTREAM_BOOTSTRAP_SERVERS" in waits[0] and "fraudstream dev up" in waits[0]
    assert "Attempt 1, next in 0.5 s" in waits[0] and "Attempt 2, next in 1.0 s" in waits[1]
    assert "Traceback" not in log


def test_a_taken_metrics_port_is_one_line_naming_it_and_the_setting(
    make_settings: Callable[..., Settings],
    spawn_service: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = spawn_service(make_settings(metrics_port=port), name="port-taken")
        assert process.wait(timeout=60) == 1
    log = _log(tmp_path, "port-taken")
    assert "Traceback" not in log
    # Besides the start-up log records (timestamped), exactly one line: the error.
    lines = [
        line
        for line in log.splitlines()
        if not line.startswith("fraudstream serving") and not re.match(r"\d{4}-\d\d-\d\d ", line)
    ]
    assert lines == [
        f"Error: metrics port {port} on 127.0.0.1 is taken by another process: stop it, "
        "or choose another port with FRAUDSTREAM_METRICS_PORT (0 turns the endpoint off)"
    ]
