"""``fraudstream serve --scorers N``: N scorer processes in one consumer group, supervised.

One Python process scores at the speed of one core; Kafka spreads the partitions
of ``transactions`` over the members of the scorer group, so more scorer
processes on the same machine (or on several) are how a deployment scales out.
:class:`Supervisor` starts the children, watches them and stops them:

* **children**: ``scorer-1`` .. ``scorer-N`` (role ``scorer``, client id
  ``<client_id>-<i>``, metrics on ``metrics_port + i - 1``, in exactly-once mode
  transactional id ``<transactional_id>-<i>`` when one is set), plus one ``learner``
  (role ``learner``, metrics on ``metrics_port + N``) unless the role is
  ``scorer``. Each is ``python -m fraudstream.service.supervisor`` reading its
  settings, secrets included, as JSON from its standard input (never from the
  command line or the environment, where other users could read them); it runs
  the ordinary :class:`~fraudstream.service.app.Application`.
* **stopping**: SIGTERM or SIGINT to the supervisor sends SIGTERM to every
  child, which finishes its batch, commits and exits; a child still running
  after ``stop_timeout_s`` (default 60 s) is killed. The supervisor exits 0 when
  every child stopped cleanly, 1 otherwise. A child whose supervisor disappears
  (killed with SIGKILL) stops itself within a second.
* **a crashed child** (any exit the supervisor did not ask for) is reported on
  one log line naming it, its pid and its exit code or signal, and restarted
  after a back-off (1 s, doubling per crash in the window, at most 30 s). Its
  partitions go to the other scorers meanwhile (the group rebalances), and
  uncommitted work is replayed by whoever owns the partition next, which the
  at-least-once guarantees already cover. More than ``max_restarts`` crashes of
  one child within ``restart_window_s`` (default 5 in 60 s) is a crash loop:
  the supervisor stops every child and exits 1, so that the orchestrator above
  (systemd, Kubernetes) sees the failure instead of a service that limps.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import SecretStr

from fraudstream.service.errors import ConfigurationError
from fraudstream.service.settings import Role, Settings

log = logging.getLogger(__name__)

#: The highest TCP port.
MAX_PORT = 65535

#: Longest wait before restarting a crashed child.
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class ChildSpec:
    """One supervised process: a name for the logs and the settings it runs with."""

    name: str
    settings: Settings


#: Most scorer processes ``serve --scorers`` starts per CPU core: a scorer under
#: load keeps about one core busy, so more only compete for the cores (and a
#: typo such as ``--scorers 4000`` would start thousands of processes).
SCORERS_PER_CORE = 4


def scorer_transactional_id(transactional_id: str, scorer: int) -> str:
    """The transactional id of scorer ``scorer`` (1-based) of ``serve --scorers``.

    Each scorer needs its own: two producers with one id fence each other (the
    older one fails on its next send). Derived from the configured id, so that
    every scorer keeps its id across restarts and aborts its predecessor's open
    transaction; empty stays empty (a random id per process).

    >>> scorer_transactional_id("pod-a", 2), scorer_transactional_id("", 2)
    ('pod-a-2', '')
    """
    return f"{transactional_id}-{scorer}" if transactional_id else ""


def child_specs(settings: Settings, scorers: int, cores: int | None = None) -> list[ChildSpec]:
    """The children of ``serve --scorers N``: N scorers, plus the learner unless role is scorer.

    At most :data:`SCORERS_PER_CORE` scorers per core of ``cores`` (default:
    this machine's).

    Examples
    --------
    >>> s = Settings(_env_file=None, client_id="fs", metrics_port=9108)
    >>> [(c.name, c.settings.role.value, c.settings.client_id, c.settings.metrics_port)
    ...  for c in child_specs(s, 2)]
    [('scorer-1', 'scorer', 'fs-1', 9108), ('scorer-2', 'scorer', 'fs-2', 9109), \
('learner', 'learner', 'fs', 9110)]
    >>> [c.name for c in child_specs(s.model_copy(update={"role": Role.SCORER}), 2)]
    ['scorer-1', 'scorer-2']
    """
    if settings.role is Role.LEARNER:
        raise ValueError("--scorers needs role all or scorer: the learner runs once per model")
    if scorers < 1:
        raise ValueError(f"scorers must be at least 1, got {scorers}")
    cores = cores or os.cpu_count() or 1
    if scorers > SCORERS_PER_CORE * cores:
        raise ValueError(
            f"--scorers {scorers} is more than {SCORERS_PER_CORE} scorer processes per CPU core "
            f"({cores} here): they would only compete for the cores; start at most "
            f"{SCORERS_PER_CORE * cores} here, and more on other machines in the same group"
        )
    processes = scorers + (1 if settings.role is Role.ALL else 0)
    last = settings.metrics_port + processes - 1
    if settings.metrics_port and last > MAX_PORT:
        raise ConfigurationError(
            f"serve --scorers {scorers} needs {processes} metrics ports, "
            f"{settings.metrics_port} to {last}, beyond the last port {MAX_PORT}: set "
            f"FRAUDSTREAM_METRICS_PORT to {MAX_PORT - processes + 1} or lower "
            "(0 turns the endpoints off)"
        )

    def port(offset: int) -> int:
        return settings.metrics_port + offset if settings.metrics_port else 0

    specs = [
        ChildSpec(
            f"scorer-{i}",
            settings.model_copy(
                update={
                    "role": Role.SCORER,
                    "client_id": f"{settings.client_id}-{i}",
                    "metrics_port": port(i - 1),
                    "transactional_id": scorer_transactional_id(settings.transactional_id, i),
                }
            ),
        )
        for i in range(1, scorers + 1)
    ]
    if settings.role is Role.ALL:
        specs.append(
            ChildSpec(
                "learner",
                settings.model_copy(update={"role": Role.LEARNER, "metrics_port": port(scorers)}),
            )
        )
    return specs


def check_metrics_ports(specs: Sequence[ChildSpec]) -> None:
    """Check that every child can listen on its metrics port, before any starts.

    A child that cannot would crash at start, again and again, until the
    supervisor gives up: better one clear error at once.

    Raises
    ------
    ConfigurationError
        Naming the first port (and its child) that cannot be listened on, and what to do.
    """
    from fraudstream.service.metrics import bind_problem

    ports = [spec.settings.metrics_port for spec in specs if spec.settings.metrics_port]
    for spec in specs:
        host, port = spec.settings.metrics_host, spec.settings.metrics_port
        if not port:
            continue
        try:
            ThreadingHTTPServer((host, port), BaseHTTPRequestHandler).server_close()
        except (OSError, UnicodeError) as exc:
            problem = bind_problem(exc, host, port)
            if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
                raise ConfigurationError(
                    f"metrics port {port} on {host} (for {spec.name}; the {len(ports)} processes "
                    f"use ports {min(ports)} to {max(ports)}) is taken by another process: stop "
                    "it, or set FRAUDSTREAM_METRICS_PORT to the first of "
                    f"{len(ports)} free ports in a row (0 turns the endpoints off)"
                ) from exc
            raise problem from exc


def settings_payload(settings: Settings) -> bytes:
    """``settings`` as JSON, secrets in clear: what a child reads from its standard input.

    >>> import json
    >>> json.loads(settings_payload(Settings(_env_file=None, redis_url="redis://:pw@h:1/0")))[
    ...     "redis_url"]
    'redis://:pw@h:1/0'
    """
    values: dict[str, Any] = {}
    for name, value in settings.model_dump().items():
        values[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
    return json.dumps(values, default=str).encode()


def child_command(spec: ChildSpec) -> list[str]:
    """The command line of a child (its settings come on standard input)."""
    return [sys.executable, "-m", "fraudstream.service.supervisor", spec.name]


def describe_exit(code: int) -> str:
    """A process's exit status in words.

    >>> describe_exit(1), describe_exit(-9), describe_exit(0)
    ('exit code 1', 'killed by SIGKILL', 'exit code 0')
    """
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes] | None = None
    crashes: deque[float] = field(default_factory=deque)
    restart_at: float | None = None


class Supervisor:
    """Runs child processes until stopped; restarts crashed ones (see the module docstring).

    Parameters
    ----------
    specs
        The children.
    max_restarts
        Crashes of one child tolerated within ``restart_window_s`` (default 5);
        one more stops everything (exit 1).
    restart_window_s
        The window of that count (default 60 s).
    backoff_s
        Wait before the first restart; doubles per crash in the window (default 1 s).
    stop_timeout_s
        How long children may take to stop after SIGTERM before SIGKILL (default 60 s).
    command
        The command line of a child (default :func:`child_command`); tests pass their own.
    payload
        The bytes written to a child's standard input (default :func:`settings_payload`).
    """

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        max_restarts: int = 5,
        restart_window_s: float = 60.0,
        backoff_s: float = 1.0,
        stop_timeout_s: float = 60.0,
        command: Callable[[ChildSpec], list[str]] = child_command,
        payload: Callable[[Settings], bytes] = settings_payload,
    ) -> None:
        self.children = [_Child(spec) for spec in specs]
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self.backoff_s = backoff_s
        self.stop_timeout_s = stop_timeout_s
        self._command = command
        self._payload = payload
        self.stopping = threading.Event()
        self.gave_up: str | None = None

    def stop(self, *_: object) -> None:
        """Ask every child to stop (safe from a signal handler)."""
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the supervisor and its children."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def pids(self) -> dict[str, int | None]:
        """Pid of every child by name (``None`` while one waits for its restart)."""
        return {
            c.spec.name: c.process.pid if c.process and c.process.poll() is None else None
            for c in self.children
        }

    def run(self, poll_s: float = 0.2) -> int:
        """Start the children and supervise them until stopped; return the exit code.

        Raises
        ------
        ConfigurationError
            A child's metrics port cannot be listened on (see
            :func:`check_metrics_ports`); no child was started.
        """
        check_metrics_ports([child.spec for child in self.children])
        for child in self.children:
            self._start(child)
        try:
            while not self.stopping.is_set():
                for child in self.children:
                    self._check(child)
                self.stopping.wait(poll_s)
        finally:
            clean = self._stop_all()
        return 0 if clean and self.gave_up is None else 1

    # -- internals ---------------------------------------------------------------

    def _start(self, child: _Child) -> None:
        process = subprocess.Popen(self._command(child.spec), stdin=subprocess.PIPE)
        assert process.stdin is not None
        try:
            process.stdin.write(self._payload(child.spec.settings))
            process.stdin.close()
        except BrokenPipeError:
            pass  # it died at once: _check reports it
        child.process = process
        child.restart_at = None
        log.info("started %s (pid %d)", child.spec.name, process.pid)

    def _check(self, child: _Child) -> None:
        now = time.monotonic()
        if child.process is None:
            if child.restart_at is not None and now >= child.restart_at:
                self._start(child)
            return
        code = child.process.poll()
        if code is None:
            return
        pid = child.process.pid
        child.process = None
        child.crashes.append(now)
        while child.crashes and child.crashes[0] < now - self.restart_window_s:
            child.crashes.popleft()
        crashes = len(child.crashes)
        if crashes > self.max_restarts:
            self.gave_up = (
                f"{child.spec.name} (pid {pid}) crashed ({describe_exit(code)}) "
                f"{crashes} times within {self.restart_window_s:g} s: stopping every child"
            )
            log.error("%s", self.gave_up)
            self.stopping.set()
            return
        delay = min(self.backoff_s * 2 ** (crashes - 1), MAX_BACKOFF_S)
        child.restart_at = now + delay
        log.error(
            "%s (pid %d) %s: %s; restarting it in %.1f s (crash %d of at most %d in %g s)",
            child.spec.name,
            pid,
            "crashed" if code else "exited unexpectedly",
            describe_exit(code),
            delay,
            crashes,
            self.max_restarts,
            self.restart_window_s,
        )

    def _stop_all(self) -> bool:
        """SIGTERM every child, SIGKILL those still running after the timeout.

        Returns whether every child stopped cleanly (exit code 0).
        """
        running = [c for c in self.children if c.process is not None]
        for child in running:
            assert child.process is not None
            if child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + self.stop_timeout_s
        clean = True
        for child in running:
            assert child.process is not None
            try:
                code = child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error(
                    "%s (pid %d) did not stop within %g s: killing it",
                    child.spec.name,
                    child.process.pid,
                    self.stop_timeout_s,
                )
                child.process.kill()
                code = child.process.wait()
            if code not in (0, -signal.SIGTERM):  # dying of our SIGTERM is stopping too
                clean = False
                log.error(
                    "%s (pid %d) stopped with %s",
                    child.spec.name,
                    child.process.pid,
                    describe_exit(code),
                )
            else:
                log.info("%s (pid %d) stopped", child.spec.name, child.process.pid)
            child.process = None
        return clean


def _watch_parent(stop: Callable[[], None], every_s: float = 1.0) -> None:
    """Call ``stop`` once this process's parent is gone (it was re-parented)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        log.error("the supervisor (pid %d) is gone: stopping", parent)
        stop()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _child_main(name: str) -> None:
    """Entry of a child: settings from standard input, then the ordinary Application."""
    from fraudstream.service.app import Application

    settings = Settings(_env_file=None, **json.loads(sys.stdin.buffer.read()))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    app = Application(settings)
    app.install_signal_handlers()
    _watch_parent(app.stop)
    app.run()


if __name__ == "__main__":
    _child_main(sys.argv[1] if len(sys.argv) > 1 else "child")
