"""Health tells the truth: records waiting and no progress is a stall, whatever else turns.

A batch retried forever (here: Redis away) keeps the loop turning; /healthz must
still fail once records wait and nothing was done for ``stall_timeout_s``, /readyz
must say why, and the lag metric must count the records not processed. A loop
stuck inside one call is not ready, whatever its last turn said.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from conftest import AppUnderTest, http_get

from fraudstream.devstack import RedisServer, free_port
from fraudstream.service.app import Application
from fraudstream.service.checkpoint import Checkpoint
from fraudstream.service.settings import Settings


def _lag(app: Application) -> float:
    return sum(
        sample.value
        for family in app.metrics.lag.collect()
        for sample in family.samples
        if sample.labels.get("topic") == app.settings.topic_transactions
    )


def test_a_batch_stuck_retrying_fails_healthz_and_the_lag_shows_what_waits(
    make_settings: Callable[..., Settings],
    card_stream: Callable[..., list[tuple[bytes, bytes]]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    wait_for: Callable[..., None],
    counting_problems: Callable[..., list[str]],
    own_redis: RedisServer,
) -> None:
    server = own_redis
    port = free_port()
    settings = make_settings(
        redis_url=server.url, role="scorer", metrics_port=port, stall_timeout_s=3.0
    )
    app = run_app(settings)
    first = card_stream("h", cards=5, per_card=4)
    produce(settings.bootstrap_servers, settings.topic_transactions, first)
    wait_for(lambda: not counting_problems(settings, first, server.url), 60, "first scored")
    wait_for(lambda: http_get(port, "/readyz") == (200, "ready\n"), 30, "ready")
    assert http_get(port, "/healthz") == (200, "ok\n")

    server.stop()
    stuck = card_stream("h", cards=5, per_card=6, first=4)
    produce(settings.bootstrap_servers, settings.topic_transactions, stuck)
    wait_for(lambda: http_get(port, "/healthz")[0] == 503, 30, "/healthz to report the stall")
    _, reason = http_get(port, "/healthz")
    assert "scorer: stalled, no batch done for" in reason
    assert "with 30 records waiting; last error: ConnectionError" in reason
    wait_for(lambda: _lag(app) == len(stuck), 10, "the lag metric to count what waits")
    assert http_get(port, "/readyz")[0] == 503

    server.start()
    wait_for(lambda: http_get(port, "/healthz") == (200, "ok\n"), 60, "/healthz to recover")
    wait_for(lambda: _lag(app) == 0, 30, "the lag to drain")
    assert counting_problems(settings, first + stuck, server.url) == []


def test_a_scorer_stuck_inside_one_call_is_not_ready_until_it_returns(
    make_settings: Callable[..., Settings],
    card_stream: Callable[..., list[tuple[bytes, bytes]]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    wait_for: Callable[..., None],
    counting_problems: Callable[..., list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A commit that blocks: the last turn said "done", and /readyz must not repeat it.

    kafka-python's transaction commit blocks up to a minute while the broker restarts.
    """
    armed, inside, release = threading.Event(), threading.Event(), threading.Event()
    commit = Checkpoint.commit

    def blocking_commit(self: Checkpoint, *args: Any, **kwargs: Any) -> Any:
        if armed.is_set() and not inside.is_set():
            inside.set()
            release.wait(60)
        return commit(self, *args, **kwargs)

    monkeypatch.setattr(Checkpoint, "commit", blocking_commit)
    port = free_port()
    settings = make_settings(role="scorer", metrics_port=port)
    app = run_app(settings)
    first = card_stream("b", cards=3, per_card=2)
    produce(settings.bootstrap_servers, settings.topic_transactions, first)
    wait_for(lambda: not counting_problems(settings, first), 60, "first scored")
    wait_for(lambda: app.ready()[0], 30, "ready")

    armed.set()
    then = card_stream("b", cards=3, per_card=2, first=2)
    produce(settings.bootstrap_servers, settings.topic_transactions, then)
    try:
        wait_for(inside.is_set, 30, "the scorer inside a commit")
        wait_for(lambda: not app.ready()[0], 15, "not ready while the call blocks")
        assert "scorer: no poll for" in app.ready()[1]
        assert http_get(port, "/readyz")[0] == 503
        assert http_get(port, "/healthz") == (200, "ok\n")  # stuck, not hung (yet)
    finally:
        release.set()
    wait_for(lambda: app.ready()[0], 30, "ready again once the call returned")
    wait_for(lambda: not counting_problems(settings, first + then), 60, "all scored")
