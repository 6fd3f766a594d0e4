"""`fraudstream serve` as an operator meets it: clear lines, answers while waiting, clean exits."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from conftest import http_get

from fraudstream.devstack import free_port
from fraudstream.service.settings import Settings


def _log(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}-0.log").read_text(errors="replace")


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
