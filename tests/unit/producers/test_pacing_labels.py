"""Event-time pacing with a fake clock, and the label-delay model."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fraudstream.producers.labels import DelayedQueue, LabelDelay
from fraudstream.producers.pacing import FakeClock, Pacer


def _send_times(speed: float | None, events_ms: list[int], work_s: float = 0.0) -> list[float]:
    clock = FakeClock(100.0)
    pacer = Pacer(speed, clock=clock.now, sleep=clock.sleep)
    sent = []
    for event in events_ms:
        pacer.wait(event)
        sent.append(clock.now())
        clock.t += work_s  # time spent producing
    return sent


def test_real_time_keeps_inter_arrival_times() -> None:
    events = [0, 250, 1_000, 1_000, 4_000]
    sent = _send_times(1.0, events)
    assert np.allclose(np.diff(sent), np.diff(events) / 1000)


def test_speed_divides_inter_arrival_times() -> None:
    events = [0, 60_000, 3_600_000]
    sent = _send_times(100.0, events, work_s=0.01)
    assert np.allclose(np.array(sent) - sent[0], np.array(events) / 1000 / 100)


def test_as_fast_as_possible_never_sleeps() -> None:
    for speed in (None, 0.0, float("inf")):
        assert _send_times(speed, [0, 10_000_000]) == [100.0, 100.0]


def test_late_producer_does_not_sleep_and_reports_lag() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, clock=clock.now, sleep=clock.sleep)
    pacer.wait(0)
    clock.t = 5.0  # producing took far longer than the 0.1 s the next event allows
    assert pacer.wait(1_000) == 0.0
    assert pacer.max_lag_s == pytest.approx(4.9)
    assert pacer.wait(900) == 0.0  # an older event is sent at once, never reordered


def test_negative_speed_is_refused() -> None:
    with pytest.raises(ValueError):
        Pacer(-1.0)


def test_label_delay_vectorised_and_scalar_agree_on_rules() -> None:
    delay = LabelDelay(delay_s=1_000.0, early_fraud_prob=0.4, early_min_s=10.0)
    fraud = np.arange(10_000) % 2 == 0
    ms, source = delay.sample(np.random.default_rng(1), fraud)
    assert (ms[~fraud] == 1_000_000).all() and (source[~fraud] == 0).all()
    early = ms[fraud] < 1_000_000
    assert 0.35 < early.mean() < 0.45 and (ms[fraud] >= 10_000).all()
    rng = random.Random(1)
    samples = [delay.sample_one(rng, True) for _ in range(2_000)]
    assert {s for _, s in samples} == {"chargeback", "analyst"}
    assert all(10_000 <= d <= 1_000_000 for d, _ in samples)
    assert delay.sample_one(rng, False) == (1_000_000, "cleared")


def test_label_delay_must_be_positive() -> None:
    with pytest.raises(ValueError, match="never comes with"):
        LabelDelay(delay_s=0)


def test_delayed_queue_releases_in_due_order() -> None:
    queue: DelayedQueue[str] = DelayedQueue()
    for due, item in [(30, "c"), (10, "a"), (10, "a2"), (20, "b")]:
        queue.push(due, item)
    assert queue.pop_due(9) == []
    assert queue.pop_due(10) == [(10, "a"), (10, "a2")]
    assert queue.pop_all() == [(20, "b"), (30, "c")]
    assert len(queue) == 0
