"""Readiness needs more than a live process.

It needs Redis, a reachable Kafka bootstrap server and running loops.
"""

from __future__ import annotations

from collections.abc import Callable

from conftest import AppUnderTest

from fraudstream.devstack import free_port
from fraudstream.service.app import Application
from fraudstream.service.redis_client import redis_client
from fraudstream.service.settings import Settings


def test_ready_only_when_redis_and_kafka_answer_and_the_loops_run(
    make_settings: Callable[..., Settings],
    run_app: Callable[[Settings], AppUnderTest],
    wait_for: Callable[..., None],
) -> None:
    nothing_there = f"127.0.0.1:{free_port()}"
    app = Application(make_settings(role="learner", bootstrap_servers=nothing_there))
    assert app.ready() == (False, "starting")
    app._redis = redis_client(app.settings)
    try:
        assert app.ready() == (False, f"kafka unreachable at {nothing_there}")
    finally:
        app._redis.close()

    running = run_app(make_settings(role="learner"))
    wait_for(lambda: running.ready() == (True, "ready"), 60, "the learner to be ready")


def test_a_second_learner_of_one_model_says_it_stands_by_then_takes_over(
    make_settings: Callable[..., Settings],
    run_app: Callable[[Settings], AppUnderTest],
    wait_for: Callable[..., None],
) -> None:
    """Two learners (two applications in one process): ready both, the second standing by."""
    settings = make_settings(role="learner")
    first = run_app(settings)
    wait_for(lambda: first.ready() == (True, "ready"), 60, "the first learner to be ready")
    second = run_app(settings)
    wait_for(
        lambda: second.ready()[1].startswith("ready; the learner stands by (fraudstream on "),
        60,
        "the second learner standing by",
    )
    assert second.ready()[0] and first.ready() == (True, "ready")
    assert first.metrics.learner_active._value.get() == 1
    assert second.metrics.learner_active._value.get() == 0
    first.stop()  # gives the lease up
    wait_for(lambda: second.ready() == (True, "ready"), 60, "the second learner taking over")
    wait_for(lambda: second.metrics.learner_active._value.get() == 1, 30, "active")
    assert first.metrics.learner_active._value.get() == 0
