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
