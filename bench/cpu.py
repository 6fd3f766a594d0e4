"""CPU time of the processes a benchmark phase keeps busy: the broker, Redis, the scorers.

The capacity model (cores, partitions and Redis shards for a target rate) needs
per-transaction CPU of each part measured over the same span of one run.
:class:`CpuSampler` samples, on ``CLOCK_MONOTONIC`` (``time.monotonic``, the same
clock in every process on Linux), the Redis server's CPU (``INFO cpu``: main
thread and I/O threads) and the broker JVM's (``/proc/<pid>/stat``, every thread,
when the benchmark started the broker and so knows its pid). The scorer children
report the window they were timed over on the same clock;
:meth:`CpuSampler.seconds_between` gives each part's CPU seconds within it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads); ``None`` if unreadable.

    >>> proc_cpu_s(os.getpid()) >= 0.0
    True
    >>> proc_cpu_s(2**22 + 1) is None
    True
    """
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115 - tiny file, read at once
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) start after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS_PER_S


def redis_cpu_s(client: Any, masters_only: bool = False) -> float:
    """CPU seconds the Redis server has used (``used_cpu_sys + used_cpu_user``).

    On a Redis Cluster client, the sum over every node (masters and replicas), or
    over the masters only.
    """
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        nodes = RedisCluster.PRIMARIES if masters_only else RedisCluster.ALL_NODES
        infos = client.info("cpu", target_nodes=nodes)
        return sum(_cpu_s(info) for info in infos.values())
    return _cpu_s(client.info("cpu"))


def _cpu_s(info: Any) -> float:
    return float(info.get("used_cpu_sys", 0.0)) + float(info.get("used_cpu_user", 0.0))


def interpolate(times: Sequence[float], values: Sequence[float], at: float) -> float:
    """Value of a sampled, increasing series at time ``at`` (linear; clamped at the ends).

    >>> interpolate([0.0, 1.0, 2.0], [0.0, 10.0, 30.0], 1.5)
    20.0
    >>> interpolate([0.0, 1.0], [5.0, 6.0], 9.0), interpolate([], [], 1.0)
    (6.0, nan)
    """
    if not len(times):
        return float("nan")
    return float(np.interp(at, np.asarray(times), np.asarray(values)))


class CpuSampler:
    """Samples Redis and broker CPU every ``every_s`` in a background thread.

    Parameters
    ----------
    redis_client
        Client of the Redis server (``None``: not sampled).
    broker_pid
        Pid of the broker JVM (``None`` when the broker was given, not started).
    every_s
        Sampling period (default 50 ms: about 20 ``INFO`` calls a second).
    masters_only
        On a Redis Cluster, sample its masters only (default: every node).
    """

    def __init__(
        self,
        redis_client: Any,
        broker_pid: int | None,
        every_s: float = 0.05,
        masters_only: bool = False,
    ) -> None:
        self.redis_client = redis_client
        self.masters_only = masters_only
        self.broker_pid = broker_pid
        self.every_s = every_s
        self.times: list[float] = []
        self.redis_s: list[float] = []
        self.broker_s: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        """Take one sample now."""
        now = time.monotonic()
        redis_s = (
            redis_cpu_s(self.redis_client, self.masters_only)
            if self.redis_client is not None
            else np.nan
        )
        broker = proc_cpu_s(self.broker_pid) if self.broker_pid is not None else None
        self.times.append(now)
        self.redis_s.append(redis_s)
        self.broker_s.append(np.nan if broker is None else broker)

    @contextlib.contextmanager
    def running(self) -> Iterator[CpuSampler]:
        """Sample from entry to exit (one sample at each end at least)."""
        self._stop.clear()
        self.sample()

        def loop() -> None:
            while not self._stop.wait(self.every_s):
                self.sample()

        self._thread = threading.Thread(target=loop, name="bench-cpu-sampler", daemon=True)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=5)
            self.sample()

    def seconds_between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds of Redis and of the broker between two ``time.monotonic`` instants."""
        return {
            "redis": interpolate(self.times, self.redis_s, end)
            - interpolate(self.times, self.redis_s, start),
            "broker": interpolate(self.times, self.broker_s, end)
            - interpolate(self.times, self.broker_s, start),
        }
