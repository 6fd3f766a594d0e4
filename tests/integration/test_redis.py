"""The local Redis answers and runs Lua, which the feature store relies on."""

from __future__ import annotations

import redis


def test_redis_round_trip_and_lua(redis_client: redis.Redis, redis_prefix: str) -> None:
    key = f"{redis_prefix}:{{c:1}}"
    redis_client.hset(key, mapping={"count": 1, "sum": 12.5})
    assert redis_client.hgetall(key) == {b"count": b"1", b"sum": b"12.5"}
    incremented = redis_client.eval(
        "return redis.call('HINCRBY', KEYS[1], 'count', ARGV[1])", 1, key, 2
    )
    assert incremented == 3
    redis_client.pexpire(key, 60_000)
    assert 0 < redis_client.pttl(key) <= 60_000
