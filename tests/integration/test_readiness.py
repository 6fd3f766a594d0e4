"""Readiness needs Redis and a reachable Kafka bootstrap server, not only a live process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fraudstream.devstack import free_port
from fraudstream.service.app import Application, redis_client


def test_ready_only_when_redis_and_kafka_answer(
    make_settings: Callable[..., Any], kafka_bootstrap: str
) -> None:
    nothing_there = f"127.0.0.1:{free_port()}"
    app = Application(make_settings(role="learner", bootstrap_servers=nothing_there))
    assert app.ready() == (False, "starting")
    app._redis = redis_client(app.settings)
    try:
        assert app.ready() == (False, f"kafka unreachable at {nothing_there}")
    finally:
        app._redis.close()

    reachable = Application(make_settings(role="learner", bootstrap_servers=kafka_bootstrap))
    reachable._redis = redis_client(reachable.settings)
    try:
        assert reachable.ready() == (True, "ready")
    finally:
        reachable._redis.close()
