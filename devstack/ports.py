"""Local TCP ports and process helpers for the dev stack."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, ClassVar

from fraudstream.service.errors import DevStackError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now.

    >>> 1024 < free_port() < 65536
    True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: connections of a stopped server lingering in
        # TIME_WAIT must not make the port look taken; a listener still does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@contextlib.contextmanager
def quiet_kafka_logs() -> Iterator[None]:
    """Silence kafka-python while probing a broker that may not be up yet.

    Its connection errors are expected during a start and would drown the one
    line that matters.
    """
    logger = logging.getLogger("kafka")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie we own)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def stop_pid(pid: int, timeout_s: float = 20.0) -> None:
    """SIGTERM a process, wait for it, SIGKILL it if it does not stop in time."""
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while pid_alive(pid):
        time.sleep(0.05)


def read_pid(path: Path) -> int | None:
    """The pid stored in ``path``, if the file exists and the process is alive."""
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class ManagedServer:
    """A server process fraudstream starts from a data folder and stops again.

    The pid file in ``data_dir`` lets another command (``dev status``/``down``)
    find a server started earlier.
    """

    data_dir: Path
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    name: ClassVar[str] = "server"
    pid_name: ClassVar[str] = "server.pid"
    log_name: ClassVar[str] = "server.log"

    @property
    def pid_file(self) -> Path:
        """Where the server's pid is written."""
        return self.data_dir / self.pid_name

    @property
    def log_file(self) -> Path:
        """Where the server's output goes."""
        return self.data_dir / self.log_name

    def running_pid(self) -> int | None:
        """Pid of the server started from this folder, if it is alive."""
        if self._process is not None and pid_alive(self._process.pid):
            return self._process.pid
        return read_pid(self.pid_file)

    def _launch(self, args: list[str], output: int | IO[bytes] = subprocess.DEVNULL) -> None:
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid_file.write_text(str(self._process.pid))

    def _exit_code(self) -> int | None:
        """Exit code when the process we launched has ended, else ``None``."""
        return None if self._process is None else self._process.poll()

    def _logs(self) -> str:
        """The end of the server's log(s), for an error message."""
        return f"log {self.log_file}:\n{tail(self.log_file)}"

    def _await_ready(
        self, answers: Callable[[], bool], what: str, timeout_s: float, every_s: float
    ) -> None:
        """Wait until ``answers()``; a process that exits or stays silent is one clear error."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (code := self._exit_code()) is not None:
                raise DevStackError(f"{self.name} exited at start (code {code}); {self._logs()}")
            if answers():
                return
            time.sleep(every_s)
        self.stop()
        raise DevStackError(
            f"{self.name} did not answer {what} within {timeout_s:.0f} s; {self._logs()}"
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server and wait for its process to end."""
        pid = self.running_pid()
        if pid is not None:
            stop_pid(pid, timeout_s=timeout_s)
        if self._process is not None:
            self._process.wait()
            self._process = None
        self.pid_file.unlink(missing_ok=True)
