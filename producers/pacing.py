"""Event time to wall time: send as fast as possible, in real time, or at N x speed.

The first event anchors the two clocks; event ``t`` is then due at
``wall_0 + (t - t_0) / speed``. A producer that falls behind sends at once
(it never sleeps to "make up"), and an event older than the previous one is
sent at once too (events are never reordered by pacing).

Examples
--------
>>> fake = FakeClock()
>>> pacer = Pacer(speed=10.0, clock=fake.now, sleep=fake.sleep)
>>> [pacer.wait(t) for t in (0, 1_000, 1_000, 5_000)]
[0.0, 0.1, 0.0, 0.4]
>>> fake.t
0.5
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Pacer:
    """Sleeps so that events leave at their (scaled) event-time spacing.

    Parameters
    ----------
    speed
        Event seconds per wall second: 1 is real time, 100 is 100x faster;
        ``None``, 0 or ``inf`` mean as fast as possible (default).
    clock
        Monotonic clock in seconds (default :func:`time.monotonic`); inject a
        fake in tests.
    sleep
        Sleep function (default :func:`time.sleep`).
    """

    def __init__(
        self,
        speed: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if speed is not None and (speed < 0 or math.isnan(speed)):
            raise ValueError("speed must be positive (or None for as fast as possible)")
        self.speed = None if not speed or math.isinf(speed) else float(speed)
        self._clock = clock
        self._sleep = sleep
        self._anchor: tuple[int, float] | None = None
        self.slept_s = 0.0
        self.max_lag_s = 0.0  # how far behind schedule the caller got, at worst

    @property
    def paced(self) -> bool:
        """False when sending as fast as possible."""
        return self.speed is not None

    def wait(self, event_ms: int) -> float:
        """Block until ``event_ms`` is due; return the seconds slept."""
        if self.speed is None:
            return 0.0
        now = self._clock()
        if self._anchor is None:
            self._anchor = (event_ms, now)
            return 0.0
        event_0, wall_0 = self._anchor
        due = wall_0 + (event_ms - event_0) / 1000.0 / self.speed
        delay = due - now
        if delay <= 0:
            self.max_lag_s = max(self.max_lag_s, -delay)
            return 0.0
        self._sleep(delay)
        self.slept_s += delay
        return delay


class FakeClock:
    """A clock whose ``sleep`` advances time instantly (for tests and doctests)."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start

    def now(self) -> float:
        """Current fake time in seconds."""
        return self.t

    def sleep(self, seconds: float) -> None:
        """Advance the fake time."""
        self.t = round(self.t + seconds, 9)
