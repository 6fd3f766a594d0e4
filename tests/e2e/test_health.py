"""Health tells the truth: records waiting and no progress is a stall, whatever else turns.

A batch retried forever (here: Redis away) keeps the loop turning; /healthz must
still fail once records wait and nothing was done for ``stall_timeout_s``, /readyz
must say why, and the lag metric must count the records not processed.
"""

from __future__ import annotations

from collections.abc import Callable

from conftest import AppUnderTest, http_get

from fraudstream.devstack import RedisServer, free_port
from fraudstream.service.app import Application
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
