"""The health endpoint over real HTTP on a free port (no Kafka or Redis needed)."""

from __future__ import annotations

import errno
import socket
import urllib.error
import urllib.request

import pytest

from fraudstream.devstack import free_port
from fraudstream.service import metrics as metrics_module
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


def _health_server(host: str, port: int) -> HealthServer:
    return HealthServer(Metrics(), lambda: (True, ""), lambda: (True, ""), host, port)


def test_an_address_of_another_machine_is_one_clear_error_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError) as error:
        _health_server("192.0.2.1", 0)  # TEST-NET-1: never an address of this machine
    assert str(error.value) == (
        "metrics host 192.0.2.1 is not an address of this machine: set "
        "FRAUDSTREAM_METRICS_HOST to an address of this machine (127.0.0.1: this machine only, "
        "0.0.0.0: every interface)"
    )


@pytest.mark.parametrize(
    ("host", "port", "raised", "expected"),
    [
        (
            "bogus.invalid",
            9108,
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "metrics host 'bogus.invalid' is not a name of this machine (Name or service not "
            "known): set FRAUDSTREAM_METRICS_HOST to an address",
        ),
        (
            "::1",
            9108,
            socket.gaierror(socket.EAI_ADDRFAMILY, "Address family for hostname not supported"),
            "metrics host ::1 is an IPv6 address, and the metrics endpoint listens on IPv4 only",
        ),
        (
            "127.0.0.1",
            80,
            PermissionError(errno.EACCES, "Permission denied"),
            "metrics port 80 on 127.0.0.1 may not be used by this process (ports below 1024 need "
            "root or the CAP_NET_BIND_SERVICE capability): choose another port with "
            "FRAUDSTREAM_METRICS_PORT (0 turns the endpoint off)",
        ),
        (
            "127.0.0.1",
            9108,
            OSError(errno.ENOBUFS, "No buffer space available"),
            "the metrics endpoint cannot listen on 127.0.0.1:9108 (No buffer space available): "
            "check FRAUDSTREAM_METRICS_HOST and FRAUDSTREAM_METRICS_PORT",
        ),
    ],
)
def test_every_bind_error_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, host: str, port: int, raised: OSError, expected: str
) -> None:
    """The errors the operating system gives, for hosts and ports not usable here for real.

    A resolver's answer and a missing capability depend on the machine.
    """

    def refuse(address: tuple[str, int], handler: object) -> None:
        assert address == (host, port)
        raise raised

    monkeypatch.setattr(metrics_module, "ThreadingHTTPServer", refuse)
    with pytest.raises(ConfigurationError) as error:
        _health_server(host, port)
    assert str(error.value).startswith(expected)


def test_a_client_that_connects_and_says_nothing_is_let_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_module, "IDLE_CONNECTION_TIMEOUT_S", 0.5)
    server = HealthServer(Metrics(), lambda: (True, "ready"), lambda: (True, "ok"), "127.0.0.1", 0)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as silent:
            silent.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the end of the headers
            # The endpoints answer others meanwhile.
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz") as reply:
                assert reply.status == 200
            # The server closes the silent connection (an empty read), well
            # before this socket's own 10 s timeout (without the server's
            # timeout, this read times out).
            assert silent.recv(1024) == b""
    finally:
        server.stop()
