"""Partitions that move while Redis is down: no record returned by a poll is dropped.

Two scorers share four partitions; Redis goes away; one scorer leaves, so the
other is assigned its partitions while it is backing off. Those arrive
unpaused: whatever a poll returns for them must be read again once Redis is
back, never skipped (it was, and later commits moved past it).

Opt-in (``-m slow``, ~14 s): the default suite covers the same case in
``test_faults.py::test_scorers_one_to_three_to_one_the_scale_in_while_redis_is_down``
(one scorer given five more partitions while it backs off, records flowing).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from conftest import AppUnderTest

from fraudstream.devstack import RedisServer
from fraudstream.service.settings import Settings


@pytest.mark.slow
def test_scale_in_during_a_redis_outage_loses_nothing_and_counts_nothing_twice(
    make_settings: Callable[..., Settings],
    card_stream: Callable[..., list[tuple[bytes, bytes]]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    wait_for: Callable[..., None],
    counting_problems: Callable[..., list[str]],
    committed_past_unscored: Callable[..., list[str]],
    group_members: Callable[[str, str], dict[str, int]],
    group_lag: Callable[..., int],
    own_redis: RedisServer,
) -> None:
    server = own_redis
    settings = make_settings(
        redis_url=server.url,
        role="scorer",
        topic_partitions=4,
        max_batch_size=20,
        session_timeout_ms=6000,
    )
    a = run_app(settings.model_copy(update={"client_id": "scorer-a"}))
    b = run_app(settings.model_copy(update={"client_id": "scorer-b"}))

    def members() -> dict[str, int]:
        return group_members(settings.bootstrap_servers, settings.consumer_group)

    wait_for(lambda: sorted(members().values()) == [2, 2], 120, "two scorers with two partitions")
    stream = card_stream("out", cards=16, per_card=4)
    produce(settings.bootstrap_servers, settings.topic_transactions, stream)
    wait_for(lambda: not counting_problems(settings, stream, server.url), 60, "part 1 scored")

    server.stop()
    during = card_stream("out", cards=16, per_card=4, first=4)
    produce(settings.bootstrap_servers, settings.topic_transactions, during)
    stream += during
    wait_for(
        lambda: (
            b.metrics.errors.labels("redis")._value.get() > 0
            and a.metrics.errors.labels("redis")._value.get() >= 3
        ),
        60,
        "both scorers to fail batches, scorer-a into back-offs of seconds",
    )
    b.stop()  # scale in: scorer-a is assigned scorer-b's partitions while backing off
    wait_for(lambda: members() == {"scorer-a-scorer": 4}, 60, "scorer-a to own all four")
    later = card_stream("out", cards=16, per_card=4, first=8)
    produce(settings.bootstrap_servers, settings.topic_transactions, later)
    stream += later
    time.sleep(8)  # scorer-a polls through its back-off with the new partitions

    server.start()
    back_at = time.monotonic()
    after = card_stream("out", cards=16, per_card=1, first=12)
    produce(settings.bootstrap_servers, settings.topic_transactions, after)
    stream += after
    wait_for(lambda: group_lag(settings) == 0, 90, "every partition committed to its end")
    print(f"redis back -> every partition committed: {time.monotonic() - back_at:.1f} s")
    assert committed_past_unscored(settings, server.url) == []
    assert counting_problems(settings, stream, server.url) == []
