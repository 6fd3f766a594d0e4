"""The supervisor of ``serve --scorers N`` with stand-in children (small Python processes).

No Kafka here: the children only sleep, crash or ignore SIGTERM, as told. The
end-to-end run with real scorers is ``tests/e2e/test_serve_scorers.py``. Waits
are generous upper bounds, never timings under test.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fraudstream.service.errors import ConfigurationError
from fraudstream.service.settings import Role, Settings
from fraudstream.service.supervisor import ChildSpec, Supervisor, child_specs

#: A stand-in child: saves its standard input, then behaves as argv[1] says.
CHILD = """
import pathlib, signal, sys, time
behaviour, home = sys.argv[1], pathlib.Path(sys.argv[2])
home.mkdir(parents=True, exist_ok=True)
(home / "stdin.json").write_bytes(sys.stdin.buffer.read())
runs = home / "runs"
runs.write_text(str(int(runs.read_text()) + 1 if runs.exists() else 1))
if behaviour == "crash" or (behaviour == "crash-once" and runs.read_text() == "1"):
    sys.exit(3)
if behaviour == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
(home / "ready").write_text(runs.read_text())
while True:
    time.sleep(0.05)
"""


def _specs(*names: str) -> list[ChildSpec]:
    settings = Settings(_env_file=None, metrics_port=0)
    return [ChildSpec(name, settings) for name in names]


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Callable[..., tuple[Supervisor, threading.Thread]]]:
    """``supervise(behaviours, **options)``: a running supervisor (in a thread) of stand-ins."""
    started: list[tuple[Supervisor, threading.Thread]] = []

    def start(behaviours: dict[str, str], **options: Any) -> tuple[Supervisor, threading.Thread]:
        def command(spec: ChildSpec) -> list[str]:
            return [sys.executable, "-c", CHILD, behaviours[spec.name], str(tmp_path / spec.name)]

        supervisor = Supervisor(_specs(*behaviours), command=command, **options)
        result: dict[str, int] = {}
        thread = threading.Thread(
            target=lambda: result.setdefault("code", supervisor.run(poll_s=0.02)), daemon=True
        )
        thread.result = result  # type: ignore[attr-defined]
        thread.start()
        started.append((supervisor, thread))
        return supervisor, thread

    yield start
    for supervisor, thread in started:
        supervisor.stop()
        thread.join(timeout=30)


def _wait(predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _all_running(supervisor: Supervisor, tmp_path: Path, run: int = 1) -> bool:
    """Every child is up, has read its input and handles SIGTERM (its ``run``-th start)."""
    ready = [tmp_path / name / "ready" for name in supervisor.pids()]
    return all(supervisor.pids().values()) and all(
        path.exists() and path.read_text() == str(run) for path in ready
    )


def _code(thread: threading.Thread) -> int:
    thread.join(timeout=60)
    assert not thread.is_alive(), "the supervisor did not return"
    return int(thread.result["code"])  # type: ignore[attr-defined]


def test_stop_terminates_every_child_and_exits_zero(
    supervise: Callable[..., tuple[Supervisor, threading.Thread]], tmp_path: Path
) -> None:
    supervisor, thread = supervise({"scorer-1": "sleep", "scorer-2": "sleep"})
    _wait(lambda: _all_running(supervisor, tmp_path), "both children")
    pids = [pid for pid in supervisor.pids().values() if pid is not None]
    # Each child got its settings, secrets in clear, on standard input.
    received = json.loads((tmp_path / "scorer-1" / "stdin.json").read_text())
    assert received["model_signing_key"] == "dev-only-insecure-key-change-me"
    supervisor.stop()
    assert _code(thread) == 0
    assert not any(_alive(pid) for pid in pids)


def test_a_crashed_child_is_reported_on_one_line_and_restarted(
    supervise: Callable[..., tuple[Supervisor, threading.Thread]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fraudstream.service.supervisor")
    supervisor, thread = supervise({"scorer-1": "crash-once", "scorer-2": "sleep"}, backoff_s=0.01)
    ready = tmp_path / "scorer-1" / "ready"
    _wait(lambda: ready.exists() and ready.read_text() == "2", "the restart")
    crashes = [r.getMessage() for r in caplog.records if "crashed" in r.getMessage()]
    assert len(crashes) == 1
    assert crashes[0].startswith("scorer-1 (pid ")
    assert (
        "crashed: exit code 3; restarting it in 0.0 s (crash 1 of at most 5 in 60 s)" in crashes[0]
    )
    supervisor.stop()
    assert _code(thread) == 0


def test_a_killed_child_is_reported_with_its_signal(
    supervise: Callable[..., tuple[Supervisor, threading.Thread]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="fraudstream.service.supervisor")
    supervisor, thread = supervise({"scorer-1": "sleep"}, backoff_s=0.01)
    _wait(lambda: _all_running(supervisor, tmp_path), "the child")
    first = supervisor.pids()["scorer-1"]
    assert first is not None
    os.kill(first, signal.SIGKILL)
    _wait(lambda: _all_running(supervisor, tmp_path, run=2), "the restart")
    assert any("killed by SIGKILL" in r.getMessage() for r in caplog.records)
    supervisor.stop()
    assert _code(thread) == 0


def test_a_crash_loop_stops_every_child_and_exits_one(
    supervise: Callable[..., tuple[Supervisor, threading.Thread]], tmp_path: Path
) -> None:
    supervisor, thread = supervise(
        {"scorer-1": "crash", "learner": "sleep"}, backoff_s=0.01, max_restarts=2
    )
    assert _code(thread) == 1
    assert supervisor.gave_up is not None
    assert supervisor.gave_up.startswith("scorer-1 (pid ")
    assert "crashed (exit code 3) 3 times within 60 s: stopping every child" in supervisor.gave_up
    assert (tmp_path / "scorer-1" / "runs").read_text() == "3"
    assert supervisor.pids() == {"scorer-1": None, "learner": None}


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout(
    supervise: Callable[..., tuple[Supervisor, threading.Thread]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="fraudstream.service.supervisor")
    supervisor, thread = supervise({"scorer-1": "ignore-term"}, stop_timeout_s=0.5)
    _wait(lambda: _all_running(supervisor, tmp_path), "the child")
    supervisor.stop()
    assert _code(thread) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("did not stop within 0.5 s: killing it" in m for m in messages)
    assert any("stopped with killed by SIGKILL" in m for m in messages)


def test_child_specs_need_a_scoring_role() -> None:
    settings = Settings(_env_file=None, role=Role.LEARNER)
    with pytest.raises(ValueError, match="needs role all or scorer"):
        child_specs(settings, 2)


def test_each_scorer_child_has_a_transactional_id_of_its_own_stable_across_restarts() -> None:
    """Two producers with one transactional id fence each other: every child needs its own."""
    settings = Settings(_env_file=None, guarantee="exactly_once", transactional_id="pod-a")
    specs = child_specs(settings, 3)
    ids = [spec.settings.transactional_id for spec in specs if spec.settings.role is Role.SCORER]
    assert ids == ["pod-a-1", "pod-a-2", "pod-a-3"]
    assert [s.settings.transactional_id for s in child_specs(settings, 3)] == [
        spec.settings.transactional_id for spec in specs
    ]
    unset = child_specs(Settings(_env_file=None, guarantee="exactly_once"), 2)
    assert {spec.settings.transactional_id for spec in unset} == {""}  # random per process


def test_serve_refuses_several_scorers_for_the_learner_role() -> None:
    from click.testing import CliRunner

    from fraudstream.cli import main

    result = CliRunner().invoke(main, ["serve", "--role", "learner", "--scorers", "2"])
    assert result.exit_code == 2
    assert "--scorers needs role all or scorer: the learner runs once per model" in result.output


@pytest.mark.parametrize(
    ("role", "port", "processes", "highest"),
    [(Role.SCORER, 65535, 2, 65534), (Role.ALL, 65534, 3, 65533)],
)
def test_metrics_ports_beyond_65535_are_one_clear_error(
    role: Role, port: int, processes: int, highest: int
) -> None:
    from click.testing import CliRunner

    from fraudstream.cli import main

    env = {"FRAUDSTREAM_METRICS_PORT": str(port), "FRAUDSTREAM_ROLE": role.value}
    result = CliRunner().invoke(main, ["serve", "--scorers", "2"], env=env)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: serve --scorers 2 needs {processes} metrics ports, {port} to "
        f"{port + processes - 1}, beyond the last port 65535: set FRAUDSTREAM_METRICS_PORT to "
        f"{highest} or lower (0 turns the endpoints off)"
    )
    assert child_specs(Settings(_env_file=None, metrics_port=highest, role=role), 2)


def test_a_taken_metrics_port_of_a_child_is_one_clear_error_before_any_starts() -> None:
    started: list[str] = []

    def command(spec: ChildSpec) -> list[str]:
        started.append(spec.name)
        return [sys.executable, "-c", "pass"]

    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(_env_file=None, metrics_port=port, role=Role.SCORER)
        supervisor = Supervisor(child_specs(settings, 2), command=command)
        with pytest.raises(ConfigurationError) as error:
            supervisor.run(poll_s=0.01)
    assert str(error.value) == (
        f"metrics port {port} on 127.0.0.1 (for scorer-1; the 2 processes use ports {port} "
        f"to {port + 1}) is taken by another process: stop it, or set FRAUDSTREAM_METRICS_PORT to "
        "the first of 2 free ports in a row (0 turns the endpoints off)"
    )
    assert started == []


def test_more_scorers_than_the_cores_can_run_is_refused_before_any_starts() -> None:
    from click.testing import CliRunner

    from fraudstream.cli import main
    from fraudstream.service.supervisor import SCORERS_PER_CORE

    settings = Settings(_env_file=None, metrics_port=0)
    assert len(child_specs(settings, 8, cores=2)) == 9  # 8 scorers and the learner
    with pytest.raises(ValueError, match="--scorers 9 is more than 4 scorer processes per CPU"):
        child_specs(settings, 9, cores=2)
    # A typo's worth of processes, with the metrics endpoints off (no port
    # range to stop it first): refused in one line, nothing started.
    result = CliRunner().invoke(
        main, ["serve", "--scorers", "100000"], env={"FRAUDSTREAM_METRICS_PORT": "0"}
    )
    assert result.exit_code == 2
    cores = os.cpu_count() or 1
    assert (
        f"Error: --scorers 100000 is more than {SCORERS_PER_CORE} scorer processes per CPU core "
        f"({cores} here): they would only compete for the cores; start at most "
        f"{SCORERS_PER_CORE * cores} here, and more on other machines in the same group"
    ) in result.output
